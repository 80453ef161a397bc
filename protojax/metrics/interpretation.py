"""How well an interpreter explains a predictor: FLINT's fidelity, conciseness and global
relevance (Parekh et al., NeurIPS 2021; jayneelparekh/FLINT `flint.py`: `analyze`,
`sparse_sense`, `extract_attr_class_max`).

Model-agnostic: the inputs are arrays (logits of the predictor and of the interpreter, and
relevances r_j = Φ_j(x)·W_{ĉ,j} from `protojax.explain.attributes.local_relevance`).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

from protojax.metrics.common import MetricResult

# The official `sparse_sense` thresholds: attribute j counts when r_j > max_j r_j / τ.
CONCISENESS_THRESHOLDS = (1.5, 2.0, 2.5, 3.0, 4.0, 5.0)


def _rows(name: str, x, ndim: int) -> jax.Array:
    x = jnp.asarray(x)
    if x.ndim != ndim:
        shape = "[B, K]" if ndim == 2 else "[B]"
        raise ValueError(f"{name} must be {shape}, got shape {tuple(x.shape)}.")
    return x


def _mean(values: jax.Array, valid) -> jax.Array:
    if valid is None:
        return jnp.mean(values, axis=0)
    w = jnp.asarray(valid, jnp.float32).reshape((-1,) + (1,) * (values.ndim - 1))
    return jnp.sum(values * w, axis=0) / jnp.maximum(jnp.sum(w), 1.0)


def _check_pair(interpreter_logits, predictor_logits) -> tuple[jax.Array, jax.Array]:
    h = _rows("interpreter_logits", interpreter_logits, 2)
    f = _rows("predictor_logits", predictor_logits, 2)
    if h.shape != f.shape:
        raise ValueError(
            f"interpreter_logits {tuple(h.shape)} and predictor_logits {tuple(f.shape)} must "
            "have the same [B, K] shape."
        )
    return h, f


def fidelity(interpreter_logits, predictor_logits, *, valid=None) -> MetricResult:
    """The fraction of examples where the interpreter's class equals the predictor's:
    argmax h(Φ(x)) = argmax f(x) (the official `exp_overlap`).

    Args:
      interpreter_logits, predictor_logits: `[B, K]` scores (logits or probabilities).
      valid: optional `[B]` bool; rows that are false (padding) are left out of the mean.

    Returns:
      `MetricResult(per_example=[B] 1.0 where they agree, aggregate=the agreeing fraction)`.
    """
    h, f = _check_pair(interpreter_logits, predictor_logits)
    agree = (jnp.argmax(h, -1) == jnp.argmax(f, -1)).astype(jnp.float32)
    return MetricResult(agree, _mean(agree, valid))


def fidelity_top_k(interpreter_logits, predictor_logits, *, k: int = 5, valid=None) -> MetricResult:
    """The fraction of examples where the predictor's class is among the interpreter's `k`
    highest scores (the official "top 5 fidelity" of `analyze`, k = 5).

    Ties are broken towards the lower class index, as a stable descending sort does.

    Returns:
      `MetricResult(per_example=[B] 1.0 where f's class is in h's top k, aggregate=fraction)`.
    """
    h, f = _check_pair(interpreter_logits, predictor_logits)
    if not 1 <= k <= h.shape[1]:
        raise ValueError(f"k must be in 1..{h.shape[1]} (the number of classes), got {k}.")
    top = jnp.argsort(-h, axis=-1, stable=True)[:, :k]
    hit = jnp.any(top == jnp.argmax(f, -1)[:, None], axis=-1).astype(jnp.float32)
    return MetricResult(hit, _mean(hit, valid))


def conciseness(relevance, *, thresholds=CONCISENESS_THRESHOLDS, valid=None) -> MetricResult:
    """The number of attributes needed to explain a prediction: for each threshold τ, the
    mean over examples of #{j : r_j > max_j r_j / τ} (the official `sparse_sense`).

    Args:
      relevance: `[B, J]` local relevances r_j = Φ_j(x)·W_{ĉ,j} for the interpreter's class
        ĉ, raw or divided by their maximum (the count is the same when the maximum is
        positive; with raw relevances it follows the official code in every case).
      thresholds: the τ values (official: 1.5, 2, 2.5, 3, 4, 5).
      valid: optional `[B]` bool mask of the rows to average.

    Returns:
      `MetricResult(per_example=[B, T] counts, aggregate=[T] mean counts, one per τ)`.
    """
    r = jnp.asarray(relevance, jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"relevance must be [B, J], got shape {tuple(r.shape)}.")
    tau = jnp.asarray(thresholds, jnp.float32)
    cut = jnp.max(r, axis=1, keepdims=True) / tau[None, :]  # [B, T]
    counts = jnp.sum(r[:, None, :] > cut[:, :, None], axis=-1).astype(jnp.float32)
    return MetricResult(counts, _mean(counts, valid))


class GlobalRelevance(NamedTuple):
    """`relevance [K, J]`: the mean normalised local relevance of attribute j over the
    examples the interpreter assigns to class c (NaN for a class it never predicts);
    `counts [K]`: how many examples each mean is over."""

    relevance: jax.Array
    counts: jax.Array


def global_relevance(
    normalized_relevance, predicted, *, num_classes: int, valid=None
) -> GlobalRelevance:
    """FLINT's global relevance r_{c,j} (`extract_attr_class_max`): for each class c, the mean
    of the local relevances r_j(x) / max_j r_j(x) over the examples x with h's class c.
    The official code keeps the class–attribute pairs above 0.1 (MNIST) or 0.2 (QuickDraw,
    CIFAR-10).

    Args:
      normalized_relevance: `[N, J]` local relevances divided by their row maximum.
      predicted: `[N]` int, the interpreter's class of each example.
      num_classes: K.
      valid: optional `[N]` bool mask.

    Returns:
      `GlobalRelevance(relevance [K, J], counts [K])`.
    """
    r = jnp.asarray(normalized_relevance, jnp.float32)
    if r.ndim != 2:
        raise ValueError(f"normalized_relevance must be [N, J], got shape {tuple(r.shape)}.")
    predicted = _rows("predicted", predicted, 1)
    one_hot = jax.nn.one_hot(predicted, num_classes, dtype=jnp.float32)  # [N, K]
    if valid is not None:
        one_hot = one_hot * jnp.asarray(valid, jnp.float32)[:, None]
    counts = jnp.sum(one_hot, axis=0)
    sums = jnp.einsum("nk,nj->kj", one_hot, r, precision=jax.lax.Precision.HIGHEST)
    relevance = jnp.where(counts[:, None] > 0, sums / jnp.maximum(counts, 1.0)[:, None], jnp.nan)
    return GlobalRelevance(relevance, counts)


__all__ = [
    "CONCISENESS_THRESHOLDS",
    "GlobalRelevance",
    "conciseness",
    "fidelity",
    "fidelity_top_k",
    "global_relevance",
]
