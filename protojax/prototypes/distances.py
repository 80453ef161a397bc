"""Distances between latent vectors and prototypes, and the ProtoPNet similarity.

All kernels use `precision=Precision.HIGHEST` and accumulate in float32, so that TF32 or
bf16 matmul defaults on accelerators cannot break them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

HIGHEST = jax.lax.Precision.HIGHEST


def squared_l2_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Squared Euclidean distances, ‖z‖² − 2⟨z, p⟩ + ‖p‖², clamped at 0.

    One matmul at `Precision.HIGHEST`. Both sides are first shifted by the mean prototype
    (distances do not change), so that a large common offset, such as the 0.5 of sigmoid
    features, does not cost float32 digits to cancellation.

    Args:
      features: `[..., D]` latent vectors (for example a `[B, H, W, D]` feature map).
      prototypes: `[P, D]`.

    Returns:
      `[..., P]` float32 distances.
    """
    if prototypes.ndim != 2:
        raise ValueError(
            f"prototypes must be [P, D], got shape {prototypes.shape}; stack them into one matrix."
        )
    if features.shape[-1:] != prototypes.shape[-1:]:
        raise ValueError(
            f"features [..., D] and prototypes [P, D] must share D, got {features.shape} and "
            f"{prototypes.shape}; project the features to the prototype dimension first."
        )
    p = prototypes.astype(jnp.float32)
    shift = jnp.mean(p, axis=0)
    z = features.astype(jnp.float32) - shift
    p = p - shift
    z2 = jnp.sum(z * z, axis=-1, keepdims=True)  # [..., 1]
    p2 = jnp.sum(p * p, axis=-1)  # [P]
    zp = jnp.einsum("...d,pd->...p", z, p, precision=HIGHEST)
    return jnp.maximum(z2 - 2.0 * zp + p2, 0.0)


@jax.custom_jvp
def safe_sqrt(x: jax.Array) -> jax.Array:
    """√x for x ≥ 0 whose derivative at 0 is 0 instead of infinite."""
    return jnp.sqrt(x)


@safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    # d√x = dx / (2√x); at x = 0 the subgradient 0 keeps the gradient finite.
    return y, jnp.where(y > 0, dx / (2.0 * jnp.where(y > 0, y, 1.0)), 0.0)


def l2_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Euclidean distances `[..., P]` between `features [..., D]` and `prototypes [P, D]`.

    The square root of `squared_l2_distances`. The gradient is finite everywhere; at
    distance 0 it is 0.
    """
    return safe_sqrt(squared_l2_distances(features, prototypes))


def log_similarity(distances: jax.Array, *, eps: float = 1e-4) -> jax.Array:
    """ProtoPNet's similarity log((d + 1) / (d + eps)), elementwise; decreasing in d ≥ 0.

    Evaluated as log1p((1 − eps) / (d + eps)), the same function, which keeps its relative
    accuracy for large d where the ratio rounds to 1 in float32.

    Args:
      distances: any shape, non-negative.
      eps: the offset that bounds the similarity at d = 0 by log(1 / eps).

    Returns:
      Similarities with the shape of `distances`.
    """
    d = jnp.asarray(distances, jnp.float32)
    return jnp.log1p((1.0 - eps) / (d + eps))


def min_over_patches(
    distance_map: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Minimum distance over the spatial grid, and where it is attained.

    Args:
      distance_map: `[B, H, W, P]`.
      valid: optional `[B, H, W]` bool; invalid locations are never selected. Where a whole
        image is invalid, its minimum is +inf and its location (0, 0).

    Returns:
      `(min [B, P], loc [B, P, 2] int32)`, with `loc` the (h, w) of the first minimum in
      row-major order. The gradient of `min` flows to that location only.
    """
    if distance_map.ndim != 4:
        raise ValueError(
            f"distance_map must be [B, H, W, P], got shape {distance_map.shape}; add the "
            "missing axes (a single image needs a batch axis of 1)."
        )
    b, h, w, p = distance_map.shape
    if valid is not None:
        if valid.shape != (b, h, w):
            raise ValueError(
                f"valid must be [B, H, W] = {(b, h, w)}, got {valid.shape}; pass one flag per "
                "spatial location."
            )
        distance_map = jnp.where(valid[..., None], distance_map, jnp.inf)
    flat = distance_map.reshape(b, h * w, p)
    arg = jnp.argmin(flat, axis=1)  # [B, P]; argmin returns the first occurrence
    mins = jnp.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0, :]
    loc = jnp.stack([arg // w, arg % w], axis=-1).astype(jnp.int32)
    return mins, loc
