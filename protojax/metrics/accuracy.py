"""Classification accuracy, the figure every SEM is compared on against the black box."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from protojax.metrics.common import MetricResult


@jax.jit
def _accuracy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> MetricResult:
    correct = jnp.argmax(logits, axis=-1) == labels
    counted = jnp.sum(valid)
    hits = jnp.sum(correct & valid)
    return MetricResult(correct, jnp.where(counted > 0, hits / jnp.maximum(counted, 1), jnp.nan))


def _checked(logits, labels, valid) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`(logits [B, K], labels [B] int, valid [B] bool)` as arrays, checked."""
    logits, labels = jnp.asarray(logits), jnp.asarray(labels)
    if logits.ndim != 2:
        raise ValueError(f"logits must be [B, K], got shape {tuple(logits.shape)}.")
    if labels.shape != logits.shape[:1] or not jnp.issubdtype(labels.dtype, jnp.integer):
        raise ValueError(
            f"labels must be [B] integers with B = {logits.shape[0]}, "
            f"got {labels.dtype} {tuple(labels.shape)}."
        )
    if valid is None:
        valid = jnp.ones(labels.shape, bool)
    valid = jnp.asarray(valid)
    if valid.shape != labels.shape:
        raise ValueError(f"valid must be [B] bool like labels, got shape {tuple(valid.shape)}.")
    return logits, labels, valid.astype(bool)


def accuracy(logits, labels, *, valid=None) -> MetricResult:
    """Top-1 accuracy over the valid rows of a batch.

    The prediction is the arg-max logit (the first on ties).

    Args:
      logits: `[B, K]` class scores.
      labels: `[B]` integer labels.
      valid: optional `[B]` bool, false on padding rows, which are not counted.

    Returns:
      `MetricResult(per_example=correct [B] bool (computed for every row, padding included),
      aggregate=correct valid rows / valid rows)`, NaN when no row is valid.
    """
    return _accuracy(*_checked(logits, labels, valid))


def top_k_accuracy(logits, labels, *, k: int = 5, valid=None) -> MetricResult:
    """Top-k accuracy: the label is among the k highest logits.

    Ties are broken towards the lower class index (a stable descending sort), so exactly k
    classes count; k ≥ K makes every row correct.

    Args:
      logits: `[B, K]` class scores.
      labels: `[B]` integer labels.
      k: how many classes count, ≥ 1.
      valid: optional `[B]` bool, false on padding rows, which are not counted.

    Returns:
      `MetricResult(per_example=hit [B] bool, aggregate=hits / valid rows)`, NaN without valid
      rows.
    """
    if int(k) != k or k < 1:
        raise ValueError(f"k must be a positive integer, got {k}.")
    return _top_k_accuracy(*_checked(logits, labels, valid), k=int(k))


@functools.partial(jax.jit, static_argnames=("k",))
def _top_k_accuracy(logits, labels, valid, *, k: int) -> MetricResult:
    top = jnp.argsort(-logits, axis=-1, stable=True)[:, :k]
    hit = jnp.any(top == labels[:, None], axis=-1)
    counted = jnp.sum(valid)
    aggregate = jnp.where(counted > 0, jnp.sum(hit & valid) / jnp.maximum(counted, 1), jnp.nan)
    return MetricResult(hit, aggregate)
