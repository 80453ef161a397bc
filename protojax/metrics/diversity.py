"""Diversity of prototypes, computed the same way for every method from arrays: ProtoPNet's
patch prototypes, ProtoVAE's and Pantypes' latent prototypes, KMEx's centroids, FLINT's
attribute vectors.

`prototype_diversity` gathers every figure; each comes from one function, defined once:
`prototypes.diversity.prototype_diversity_entropy` (KMEx's entropy), `class_log_volumes`
(below, from `prototypes.diversity.prototype_log_volume`), `mean_pairwise_distance` (below),
`prototypes.diversity.davies_bouldin` and `prototypes.diversity.coverage`.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.diversity import (
    coverage,
    coverage_sample,
    davies_bouldin,
    prototype_diversity_entropy,
    prototype_log_volume,
)

# One compiled program each, rather than one per operation.
_log_volume = jax.jit(prototype_log_volume)
_coverage_sample = jax.jit(coverage_sample)
_davies_bouldin = jax.jit(davies_bouldin)


class PairwiseDistance(NamedTuple):
    """`all`: the mean Euclidean distance over pairs of distinct active prototypes;
    `within_class`: the same over pairs of one class (NaN without such pairs)."""

    all: float
    within_class: float


def mean_pairwise_distance(prototypes, *, prototype_class=None, active=None) -> PairwiseDistance:
    """The mean Euclidean distance ‖p_i − p_j‖ over the unordered pairs i < j of active
    prototypes, over all of them and within each class (pairs of one class pooled). NaN
    with fewer than two prototypes.

    Args:
      prototypes: `[P, D]`.
      prototype_class: optional `[P]` int; without it `within_class` is NaN.
      active: optional `[P]` bool.
    """
    p = np.asarray(prototypes, np.float64)
    rows = np.ones(len(p), bool) if active is None else np.asarray(active, bool)
    gaps = np.sqrt(np.maximum(np.sum((p[:, None] - p[None]) ** 2, axis=-1), 0.0))
    pairs = np.triu(np.ones(gaps.shape, bool), k=1) & rows[:, None] & rows[None, :]
    everything = float(gaps[pairs].mean()) if pairs.any() else float("nan")
    if prototype_class is None:
        return PairwiseDistance(everything, float("nan"))
    classes = np.asarray(prototype_class)
    same = pairs & (classes[:, None] == classes[None, :])
    return PairwiseDistance(everything, float(gaps[same].mean()) if same.any() else float("nan"))


def class_log_volumes(prototypes, prototype_class, *, num_classes: int, active=None) -> np.ndarray:
    """`[K]` each class's ½ · log det(P_k P_kᵀ) over its active prototypes P_k `[M_k, D]`,
    uncentred (`prototypes.diversity.prototype_log_volume` of one class): the log of the
    M_k-dimensional volume they span. NaN for a class without active prototypes or with
    M_k > D (no volume); very negative for linearly dependent prototypes."""
    p = jnp.asarray(prototypes, jnp.float32)
    classes = np.asarray(prototype_class)
    rows = np.ones(len(classes), bool) if active is None else np.asarray(active, bool)
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mine = np.flatnonzero(rows & (classes == k))
        if 0 < mine.size <= p.shape[1]:
            out[k] = float(_log_volume(p[mine][None]))
    return out


def _pca_2d(points: np.ndarray) -> np.ndarray:
    centred = points - points.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:2].T


def class_coverage(latents, labels, prototypes, prototype_class, *, num_classes: int, active=None):
    """`[K]` Pantypes' coverage per class in a 2-D PCA of that class's latents: the hull area
    of the points its prototypes represent (`prototypes.diversity.coverage_sample`) over the
    hull area of the class (`prototypes.diversity.coverage`). Needs the same number M of
    prototypes in every class (prototype j of class j // M) and latents in the prototypes'
    space; NaN for a class whose points span no area."""
    latents, labels = np.asarray(latents, np.float32), np.asarray(labels)
    classes = np.asarray(prototype_class)
    p = np.asarray(prototypes, np.float32)
    m = len(classes) // num_classes
    if m * num_classes != len(classes) or np.any(classes != np.arange(len(classes)) // m):
        raise ValueError(
            "class_coverage needs M prototypes per class in class order (prototype j of class "
            "j // M)."
        )
    rows = np.ones(len(classes), bool) if active is None else np.asarray(active, bool)
    sample = np.asarray(
        _coverage_sample(
            jnp.asarray(latents),
            jnp.asarray(labels),
            jnp.asarray(p.reshape(num_classes, m, -1)),
            active=jnp.asarray(rows.reshape(num_classes, m)),
        )
    )
    out = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mine = labels == k
        if mine.sum() < 3:
            continue
        flat = _pca_2d(latents[mine].astype(np.float64))
        try:
            out[k] = coverage(flat, flat[sample[mine]])
        except ValueError:  # the class spans no area in 2-D
            continue
    return out


class Diversity(NamedTuple):
    """The result of `prototype_diversity`; NaN (or None) where an input was not given.

    Attributes:
      entropy: KMEx's mean normalised entropy (`prototype_diversity_entropy`), over all
        active prototypes.
      log_volume: `[K]` per-class log-volumes (`class_log_volumes`).
      mean_distance: the mean pairwise distance over all pairs (`mean_pairwise_distance`).
      mean_distance_within_class: the same within classes.
      davies_bouldin: DB with the prototypes as centres and the latents assigned to their
        most similar prototype (`prototypes.diversity.davies_bouldin`); lower is better.
      coverage: `[K]` per-class coverage (`class_coverage`), or None.
    """

    entropy: float
    log_volume: np.ndarray
    mean_distance: float
    mean_distance_within_class: float
    davies_bouldin: float
    coverage: np.ndarray | None


def prototype_diversity(
    prototypes,
    prototype_class,
    *,
    num_classes: int,
    active=None,
    latents=None,
    labels=None,
    similarities=None,
    squared: bool = False,
) -> Diversity:
    """Every diversity figure of one set of prototypes.

    Args:
      prototypes: `[P, D]` vectors (patch prototypes as `[P, D]`, centroids, attribute
        vectors).
      prototype_class: `[P]` int, or None for class-free vectors (FLINT's attributes): then
        the per-class figures are empty.
      num_classes: K.
      active: optional `[P]` bool.
      latents: optional `[N, D]` points in the prototypes' space (ProtoVAE's μ; for patch
        prototypes each image's patch nearest to its assigned prototype), for Davies–Bouldin
        and coverage.
      labels: `[N]` int, the points' classes (coverage).
      similarities: `[N, P]` the points' similarities, which assign each point to its most
        similar active prototype (Davies–Bouldin).
      squared: squared distances in the entropy, as KMEx uses for ProtoPNet.
    """
    p = np.asarray(prototypes, np.float32)
    rows = np.ones(len(p), bool) if active is None else np.asarray(active, bool)
    entropy = float(prototype_diversity_entropy(p[rows], squared=squared).aggregate)
    distances = mean_pairwise_distance(p, prototype_class=prototype_class, active=rows)
    log_volume = np.zeros(0)
    db, cover = float("nan"), None
    if prototype_class is not None:
        log_volume = class_log_volumes(p, prototype_class, num_classes=num_classes, active=rows)
    if latents is not None and similarities is not None:
        masked = np.where(rows[None, :], np.asarray(similarities, np.float32), -np.inf)
        assignment = np.argmax(masked, axis=1)
        db = float(
            _davies_bouldin(
                jnp.asarray(latents, jnp.float32),
                jnp.asarray(assignment),
                jnp.asarray(p),
                active=jnp.asarray(rows),
            )
        )
    if latents is not None and labels is not None and prototype_class is not None:
        try:
            cover = class_coverage(
                latents, labels, p, prototype_class, num_classes=num_classes, active=rows
            )
        except ValueError:
            cover = None
    return Diversity(entropy, log_volume, distances.all, distances.within_class, db, cover)
