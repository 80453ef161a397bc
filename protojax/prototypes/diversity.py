"""Diversity terms and diagnostics of prototypes grouped by class.

Prototypes come as `[K, M, d]`: K classes with M prototypes each, in latent space. An
optional `active [K, M]` bool mask leaves out prototypes that were eliminated (shapes never
change mid-run); a class without any active prototype drops out of the
mean over classes.

- `orthonormality_loss`: ProtoVAE's, in the official code's two forms.
- `inverse_volume_loss` and `prototype_log_volume`: Pantypes' volume term
  (`model.py::volume_loss` of RuneDK93/pantypes, appendix eq. 1) and the diagnostic that
  run summaries report.
- `davies_bouldin`, `coverage`, `coverage_sample`, `prototype_usage`: Pantypes'
  diagnostics (`main.py` and the appendix; see docs/fidelity.md).
- `prototype_diversity_entropy`: KMEx's normalised entropy of all prototypes `[P, D]`
  (SrishtiGautam/KMEx, `utils/evaluation.py::diversity`), a metric (`protojax.metrics`
  re-exports it).

All but two are pure and jit-able; `coverage` and `prototype_usage` run eagerly and return
NumPy values, because a convex hull and a list of unused prototypes have data-dependent
sizes.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.distances import (
    HIGHEST,
    l2_distances,
    log_similarity,
    safe_sqrt,
    squared_l2_distances,
)


def _grouped(p: jax.Array, active: jax.Array | None) -> tuple[jax.Array, jax.Array]:
    """Checks `p [K, M, d]` and `active [K, M]`; returns float32 `p` and a float 0/1 mask."""
    if p.ndim != 3:
        raise ValueError(
            f"prototypes must be grouped by class as [K, M, d], got shape {p.shape}; reshape "
            "[P, d] prototypes with P = K * M to [K, M, d]."
        )
    if active is None:
        return p.astype(jnp.float32), jnp.ones(p.shape[:2], jnp.float32)
    if active.shape != p.shape[:2]:
        raise ValueError(
            f"active must be [K, M] = {p.shape[:2]}, got {active.shape}; give one flag per "
            "prototype."
        )
    return p.astype(jnp.float32), active.astype(jnp.float32)


def _mean_over_classes(per_class: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of `per_class [K]` over the classes with at least one active prototype."""
    present = jnp.any(mask > 0, axis=1)
    total = jnp.sum(jnp.where(present, per_class, 0.0))
    return total / jnp.maximum(jnp.sum(present), 1)


ORTHONORMALITY_FORMS = ("prototypes", "dimensions")


def orthonormality_loss(
    p: jax.Array, *, active: jax.Array | None = None, form: str = "prototypes"
) -> jax.Array:
    """ProtoVAE's orthonormality term: the mean over classes of ‖P̃_k P̃_kᵀ − I_M‖_F.

    P̃_k `[M, d]` is class k's prototypes minus their mean (class-centred); the norm is the
    plain, not squared, Frobenius norm. The gradient stays finite when a class has no active
    prototype left.

    `form` picks which Gram matrix is pulled to the identity:
    - `prototypes` (the default): the M×M P̃_k P̃_kᵀ − I_M, as the latest official
      `model.py::ortho_loss` of SrishtiGautam/ProtoVAE computes it;
    - `dimensions`: the d×d P̃_kᵀ P̃_k − I_d of the code released with the paper (commit
      fa1d9e1, October 2022). Its rank is at most M − 1 < d, so its norm never falls below
      √(d − M + 1) and its gradient is weaker.

    Args:
      p: `[K, M, d]` prototypes.
      active: optional `[K, M]` bool; inactive prototypes leave the centring and the Gram
        matrix (the M×M identity shrinks with them).
      form: `prototypes` or `dimensions`.

    Returns:
      `[]` float32.
    """
    if form not in ORTHONORMALITY_FORMS:
        raise ValueError(
            f"Unknown orthonormality form '{form}'; use one of {', '.join(ORTHONORMALITY_FORMS)}."
        )
    p, mask = _grouped(p, active)
    count = jnp.maximum(jnp.sum(mask, axis=1), 1.0)  # [K]
    mean = jnp.einsum("km,kmd->kd", mask, p, precision=HIGHEST) / count[:, None]
    centred = (p - mean[:, None, :]) * mask[..., None]
    if form == "prototypes":
        gram = jnp.einsum("kmd,knd->kmn", centred, centred, precision=HIGHEST)
        residual = gram - jax.vmap(jnp.diag)(mask)
    else:
        gram = jnp.einsum("kmd,kme->kde", centred, centred, precision=HIGHEST)
        residual = gram - jnp.eye(p.shape[2], dtype=gram.dtype)
    return _mean_over_classes(safe_sqrt(jnp.sum(residual**2, axis=(1, 2))), mask)


def _half_log_det(p: jax.Array, mask: jax.Array, jitter: float) -> jax.Array:
    """½·log det(P_k P_kᵀ + λ_k I) per class `[K]`, over the active prototypes.

    λ_k = jitter · mean of the active diagonal of P_k P_kᵀ. The determinant comes from the
    QR decomposition of the stacked `[d + M, M]` matrix [P_kᵀ; √λ_k I], whose R satisfies
    RᵀR = P_k P_kᵀ + λ_k I: the same value as slogdet of the jittered Gram matrix, without
    squaring the condition number, so that it stays accurate in float32 for nearly
    identical prototypes. Inactive prototypes become zero rows with a unit diagonal entry.
    """
    masked = p * mask[..., None]
    diagonal = jnp.sum(masked * masked, axis=2)  # [K, M], the Gram diagonal
    lam = jitter * jnp.sum(diagonal, axis=1) / jnp.maximum(jnp.sum(mask, axis=1), 1.0)
    lower = safe_sqrt(lam)[:, None] * mask + (1.0 - mask)  # [K, M]; finite gradient at λ = 0
    stacked = jnp.concatenate([jnp.swapaxes(masked, 1, 2), jax.vmap(jnp.diag)(lower)], axis=1)
    r = jnp.linalg.qr(stacked, mode="r")  # [K, M, M]
    return jnp.sum(jnp.log(jnp.abs(jnp.diagonal(r, axis1=1, axis2=2))), axis=1)


def _check_volume_shape(p: jax.Array) -> None:
    _, m, d = p.shape
    if m > d:
        raise ValueError(
            f"M = {m} prototypes per class span at most d = {d} dimensions, so their volume is "
            "0; use at most d prototypes per class or a wider latent space."
        )


def inverse_volume_loss(
    p: jax.Array,
    *,
    scale: float = 1.0,
    jitter: float = 1e-6,
    active: jax.Array | None = None,
) -> jax.Array:
    """Pantypes' volume term: the mean over classes of 1/√det(c · P_k P_kᵀ).

    On uncentred prototypes. Computed as exp(−½ · log det) with log det(c · G_k) =
    M_k · log c + log det(G_k + λ_k I), where λ_k = `jitter` × the mean of G_k's diagonal
    (relative, so that it scales with the prototypes). The value and gradient stay finite
    for nearly identical prototypes, and d^M-sized determinants (M = 20, d = 512) do not
    overflow. The value itself can still exceed float32 where the prototypes are tiny: it
    is at most (c · jitter · mean diagonal)^(−M/2).

    Args:
      p: `[K, M, d]` prototypes, M ≤ d.
      scale: c, Pantypes' `scale_factor`.
      jitter: relative jitter on the Gram diagonal.
      active: optional `[K, M]` bool; the determinant is over the active prototypes only.

    Returns:
      `[]` float32.

    Raises:
      ValueError: if M > d (the determinant is 0 for every input).
    """
    p, mask = _grouped(p, active)
    _check_volume_shape(p)
    if isinstance(scale, (int, float)) and scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}.")
    log_det = 2.0 * _half_log_det(p, mask, jitter) + jnp.sum(mask, axis=1) * jnp.log(scale)
    return _mean_over_classes(jnp.exp(-0.5 * log_det), mask)


def prototype_log_volume(p: jax.Array, *, active: jax.Array | None = None) -> jax.Array:
    """The mean over classes of ½ · log det(P_k P_kᵀ), on uncentred prototypes, no jitter.

    The diagnostic that run summaries report as `prototype_log_volume`: the log of the
    M-dimensional volume that each class's prototypes span; very negative (−inf in exact
    arithmetic) for a class whose prototypes are linearly dependent.

    Args:
      p: `[K, M, d]` prototypes, M ≤ d.
      active: optional `[K, M]` bool.

    Returns:
      `[]` float32.
    """
    p, mask = _grouped(p, active)
    _check_volume_shape(p)
    return _mean_over_classes(_half_log_det(p, mask, 0.0), mask)


def davies_bouldin(
    latents: jax.Array,
    assignment: jax.Array,
    prototypes: jax.Array,
    *,
    active: jax.Array | None = None,
) -> jax.Array:
    """Davies–Bouldin index with the prototypes as cluster centres; lower is better.

    Over the prototypes with at least one assigned latent (and active): s_i is the mean
    Euclidean distance from prototype i to its assigned latents, d_ij = ‖p_i − p_j‖,
    R_ij = (s_i + s_j) / d_ij, and DB = mean_i max_{j≠i} R_ij. Coincident used prototypes
    give +inf; fewer than two used prototypes give NaN. The class grouping plays no part,
    so flat prototypes are accepted too.

    Args:
      latents: `[N, d]`.
      assignment: `[N]` int, each latent's prototype as a flat index (k · M + m when
        grouped), as Pantypes assigns: the most similar prototype over all classes.
      prototypes: `[K, M, d]`, or flat `[P, d]`.
      active: optional `[K, M]` (or `[P]`) bool.

    Returns:
      `[]` float32.
    """
    if prototypes.ndim == 2:
        prototypes = prototypes[None]
        active = None if active is None else active[None]
    prototypes, mask = _grouped(prototypes, active)
    k, m, d = prototypes.shape
    if latents.ndim != 2 or latents.shape[1] != d:
        raise ValueError(
            f"latents must be [N, d] with d = {d} like the prototypes, got {latents.shape}."
        )
    if assignment.shape != latents.shape[:1]:
        raise ValueError(
            f"assignment must be [N] = {latents.shape[:1]}, got {assignment.shape}; give one "
            "prototype index per latent."
        )
    flat = prototypes.reshape(k * m, d)
    gap = latents.astype(jnp.float32) - flat[assignment]
    spread_sum = jax.ops.segment_sum(safe_sqrt(jnp.sum(gap * gap, axis=1)), assignment, k * m)
    count = jax.ops.segment_sum(jnp.ones(assignment.shape, jnp.float32), assignment, k * m)
    spread = spread_sum / jnp.maximum(count, 1.0)
    used = (count > 0) & (mask.reshape(-1) > 0)
    pair = used[:, None] & used[None, :] & ~jnp.eye(k * m, dtype=bool)
    ratio = (spread[:, None] + spread[None, :]) / l2_distances(flat, flat)
    worst = jnp.max(jnp.where(pair, ratio, -jnp.inf), axis=1)
    n_used = jnp.sum(used)
    mean = jnp.sum(jnp.where(used, worst, 0.0)) / jnp.maximum(n_used, 1)
    return jnp.where(n_used >= 2, mean, jnp.nan)


def _hull_area(points: np.ndarray) -> float:
    """Area of the convex hull of `points [N, 2]` (Andrew's monotone chain, float64).

    0 for fewer than three points or collinear points.
    """
    pts = np.unique(np.asarray(points, np.float64), axis=0)  # sorted by x, then y
    if len(pts) < 3:
        return 0.0

    def cross(o, a, b):
        return (a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0])

    def half(sequence):
        chain = []
        for point in sequence:
            while len(chain) >= 2 and cross(chain[-2], chain[-1], point) <= 0:
                chain.pop()
            chain.append(point)
        return chain[:-1]

    hull = np.array(half(pts) + half(pts[::-1]))
    x, y = hull[:, 0], hull[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def coverage(class_points_2d: np.ndarray, sample_points_2d: np.ndarray) -> float:
    """Pantypes' coverage: area(hull(sample)) / area(hull(class)) in a 2-D embedding.

    The convex hulls are computed on the host in float64 by our own monotone-chain
    routine (no SciPy). Embed one class's latents in 2-D (UMAP or PCA, as the paper does),
    select the "sample" with `coverage_sample`, and pass both point sets. A sample with
    fewer than three points, or collinear ones, covers 0.

    Args:
      class_points_2d: `[N, 2]`, every point of the class.
      sample_points_2d: `[S, 2]`, the points the prototypes represent; normally a subset.

    Returns:
      The ratio as a Python float, in [0, 1] when the sample is a subset of the class.

    Raises:
      ValueError: if the points are not 2-D or the class hull has zero area.
    """
    class_points = np.asarray(class_points_2d, np.float64)
    sample_points = np.asarray(sample_points_2d, np.float64)
    for name, points in (("class_points_2d", class_points), ("sample_points_2d", sample_points)):
        if points.ndim != 2 or points.shape[1] != 2:
            raise ValueError(f"{name} must be [N, 2], got {points.shape}; embed in 2-D first.")
    class_area = _hull_area(class_points)
    if class_area <= 0:
        raise ValueError(
            "the class points span no area (fewer than three, or collinear), so coverage is "
            "undefined; embed more points of the class."
        )
    return _hull_area(sample_points) / class_area


def coverage_sample(
    latents: jax.Array,
    labels: jax.Array,
    prototypes: jax.Array,
    *,
    active: jax.Array | None = None,
) -> jax.Array:
    """Selects the "sample" whose hull `coverage` compares with the class's.

    The rule that generated the Pantypes paper's sample is not public (docs/fidelity.md).
    We take, per class, the points whose distance to their nearest prototype
    of their own class, in latent space, is at most the class's median of that distance:
    the half of the class that its prototypes represent best. Diverse prototypes spread
    that half over the class; collapsed ones keep it in one corner.

    Args:
      latents: `[N, d]`.
      labels: `[N]` int, each point's class in [0, K).
      prototypes: `[K, M, d]`.
      active: optional `[K, M]` bool; inactive prototypes are not candidates.

    Returns:
      `[N]` bool, true for the sample points.
    """
    prototypes, mask = _grouped(prototypes, active)
    k, m, d = prototypes.shape
    if latents.ndim != 2 or latents.shape[1] != d or labels.shape != latents.shape[:1]:
        raise ValueError(
            f"latents must be [N, d] with d = {d} and labels [N], got {latents.shape} and "
            f"{labels.shape}."
        )
    labels = jnp.asarray(labels)
    distances = l2_distances(latents, prototypes.reshape(k * m, d)).reshape(-1, k, m)
    nearest = jnp.min(jnp.where(mask[None] > 0, distances, jnp.inf), axis=2)  # [N, K]
    own = jnp.take_along_axis(nearest, labels[:, None], axis=1)[:, 0]  # [N]
    in_class = labels[None, :] == jnp.arange(k)[:, None]  # [K, N]
    median = jnp.nanmedian(jnp.where(in_class, own[None, :], jnp.nan), axis=1)  # [K]
    return own <= median[labels]


class PrototypeUsage(NamedTuple):
    """Which prototypes the data use (Pantypes' "out-of-distribution" prototypes).

    Attributes:
      fraction_used: share of the active prototypes that are the most similar prototype of
        at least one sample.
      counts: `[P]` int, the samples for which each prototype is the most similar.
      unused: `[U]` int, the flat indices of the active prototypes with count 0.
      unused_per_class: `[K]` int, the unused active prototypes of each class.
    """

    fraction_used: float
    counts: np.ndarray
    unused: np.ndarray
    unused_per_class: np.ndarray


@jax.jit
def _winner_counts(similarities: jax.Array, active: jax.Array) -> jax.Array:
    masked = jnp.where(active[None, :], similarities.astype(jnp.float32), -jnp.inf)
    winners = jnp.argmax(masked, axis=1)  # the first of equal similarities
    return jax.ops.segment_sum(jnp.ones_like(winners), winners, similarities.shape[1])


def prototype_usage(
    similarities: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
) -> PrototypeUsage:
    """Counts, per prototype, the samples whose most similar (active) prototype it is.

    Runs eagerly (the list of unused prototypes has a data-dependent length); call it on
    similarities gathered over a pass, outside jit.

    Args:
      similarities: `[N, P]` similarity of every sample to every prototype.
      prototype_class: `[P]` int, each prototype's class.
      active: optional `[P]` bool; inactive prototypes are never the most similar and are
        neither used nor unused.

    Returns:
      `PrototypeUsage(fraction_used, counts [P], unused [U], unused_per_class [K])`, NumPy.
    """
    if similarities.ndim != 2:
        raise ValueError(f"similarities must be [N, P], got shape {similarities.shape}.")
    p = similarities.shape[1]
    if prototype_class.shape != (p,):
        raise ValueError(
            f"prototype_class must be [P] = ({p},), got {prototype_class.shape}; give each "
            "prototype's class."
        )
    if active is None:
        active = jnp.ones((p,), bool)
    elif active.shape != (p,):
        raise ValueError(f"active must be [P] = ({p},), got {active.shape}.")
    counts = np.asarray(_winner_counts(jnp.asarray(similarities), jnp.asarray(active, bool)))
    active_np = np.asarray(active, bool)
    classes = np.asarray(prototype_class).astype(np.int64)
    unused_mask = active_np & (counts == 0)
    num_active = int(active_np.sum())
    return PrototypeUsage(
        fraction_used=float((active_np & (counts > 0)).sum() / max(num_active, 1)),
        counts=counts,
        unused=np.flatnonzero(unused_mask),
        unused_per_class=np.bincount(classes[unused_mask], minlength=int(classes.max()) + 1),
    )


class DiversityEntropy(NamedTuple):
    """`prototype_diversity_entropy`'s result, in the metrics' form (`MetricResult`'s fields).

    Attributes:
      per_example: `[P]` each prototype's normalised entropy.
      aggregate: their mean.
    """

    per_example: jax.Array
    aggregate: jax.Array


# KMEx's diversity uses log((d + 1) / (d + 1e-4)), the ProtoPNet similarity's ε.
_KMEX_EPS = 1e-4


@functools.partial(jax.jit, static_argnames=("squared",))
def _prototype_diversity_entropy(prototypes: jax.Array, *, squared: bool) -> DiversityEntropy:
    num_prototypes = prototypes.shape[0]
    if num_prototypes == 1:
        # log(P) = 0 makes the entropy 0/0; KMEx sets that NaN to 1.
        return DiversityEntropy(jnp.ones((1,), jnp.float32), jnp.float32(1.0))
    kernel = squared_l2_distances if squared else l2_distances
    distances = kernel(prototypes, prototypes)
    # A prototype's distance to itself is 0 by definition; the matmul form leaves rounding
    # residue there that would shift S_ii = log(1 / 1e-4), the largest entry of every row.
    distances = jnp.where(jnp.eye(num_prototypes, dtype=bool), 0.0, distances)
    similarities = log_similarity(distances, eps=_KMEX_EPS)
    log_p = jax.nn.log_softmax(similarities, axis=1)
    entropy = -jnp.sum(jnp.exp(log_p) * log_p, axis=1) / jnp.log(num_prototypes)
    return DiversityEntropy(entropy, jnp.mean(entropy))


def prototype_diversity_entropy(prototypes, *, squared: bool = False) -> DiversityEntropy:
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
      `DiversityEntropy(per_example=[P] per-prototype entropy, aggregate=mean entropy)`.
    """
    prototypes = jnp.asarray(prototypes)
    if prototypes.ndim != 2 or prototypes.shape[0] < 1:
        raise ValueError(
            f"prototypes must be [P, D] with P ≥ 1, got shape {tuple(prototypes.shape)}; "
            "reshape class-grouped [K, M, D] prototypes to [K·M, D]."
        )
    return _prototype_diversity_entropy(prototypes, squared=squared)
