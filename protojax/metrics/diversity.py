"""Diversity of prototypes: KMEx's normalised entropy
(SrishtiGautam/KMEx, `utils/evaluation.py::diversity`)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from protojax.metrics.common import MetricResult
from protojax.prototypes.distances import l2_distances, log_similarity, squared_l2_distances

# KMEx's diversity uses log((d + 1) / (d + 1e-4)), the ProtoPNet similarity's ε.
_KMEX_EPS = 1e-4


@functools.partial(jax.jit, static_argnames=("squared",))
def _prototype_diversity_entropy(prototypes: jax.Array, *, squared: bool) -> MetricResult:
    num_prototypes = prototypes.shape[0]
    if num_prototypes == 1:
        # log(P) = 0 makes the entropy 0/0; KMEx sets that NaN to 1.
        return MetricResult(jnp.ones((1,), jnp.float32), jnp.float32(1.0))
    kernel = squared_l2_distances if squared else l2_distances
    distances = kernel(prototypes, prototypes)
    # A prototype's distance to itself is 0 by definition; the matmul form leaves rounding
    # residue there that would shift S_ii = log(1 / 1e-4), the largest entry of every row.
    distances = jnp.where(jnp.eye(num_prototypes, dtype=bool), 0.0, distances)
    similarities = log_similarity(distances, eps=_KMEX_EPS)
    log_p = jax.nn.log_softmax(similarities, axis=1)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=1) / jnp.log(num_prototypes)
    return MetricResult(entropy, jnp.mean(entropy))


def prototype_diversity_entropy(prototypes, *, squared: bool = False) -> MetricResult:
    """KMEx's diversity: the normalised entropy of each prototype's softmax similarity row.

    As in KMEx's `evaluation.py::diversity`:
      1. S_ij = log((d_ij + 1) / (d_ij + 1e-4)) with d the Euclidean distance between
         prototypes i and j (`squared=True` uses the squared distance, as KMEx does for
         ProtoPNet prototypes). The diagonal is included, with d_ii = 0 exactly, so
         S_ii = log(1e4) ≈ 9.21 dominates each row.
      2. σ_i = softmax_j(S_ij) over all P prototypes, diagonal included.
      3. e_i = −Σ_j σ_ij log σ_ij / log P, in [0, 1]; the mean over i is the aggregate.
    Values are small and grow as prototypes spread apart. All P prototypes are taken together
    (pass one class's `[M, D]` prototypes for a per-class value). With P = 1, log P = 0 and
    KMEx's rule of setting NaN to 1 gives 1; NaN from non-finite prototypes is kept.

    Args:
      prototypes: `[P, D]`.
      squared: use squared Euclidean distances.

    Returns:
      `MetricResult(per_example=[P] per-prototype entropy, aggregate=mean entropy)`.
    """
    prototypes = jnp.asarray(prototypes)
    if prototypes.ndim != 2 or prototypes.shape[0] < 1:
        raise ValueError(
            f"prototypes must be [P, D] with P ≥ 1, got shape {tuple(prototypes.shape)}; "
            "reshape class-grouped [K, M, D] prototypes to [K·M, D]."
        )
    return _prototype_diversity_entropy(prototypes, squared=squared)
