"""Distances between latent vectors and prototypes, and the ProtoPNet similarity.

All kernels use `precision=Precision.HIGHEST` and accumulate in float32, so that TF32 or
bf16 matmul defaults on accelerators cannot break them.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_HIGHEST = jax.lax.Precision.HIGHEST


def squared_l2_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Squared Euclidean distances, ‖z‖² − 2⟨z, p⟩ + ‖p‖², clamped at 0.

    Args:
      features: `[..., D]` latent vectors (for example a `[B, H, W, D]` feature map).
      prototypes: `[P, D]`.

    Returns:
      `[..., P]` float32 distances.
    """
    z = features.astype(jnp.float32)
    p = prototypes.astype(jnp.float32)
    z2 = jnp.sum(z * z, axis=-1, keepdims=True)  # [..., 1]
    p2 = jnp.sum(p * p, axis=-1)  # [P]
    zp = jnp.einsum("...d,pd->...p", z, p, precision=_HIGHEST)
    return jnp.maximum(z2 - 2.0 * zp + p2, 0.0)


@jax.custom_jvp
def _safe_sqrt(x: jax.Array) -> jax.Array:
    return jnp.sqrt(x)


@_safe_sqrt.defjvp
def _safe_sqrt_jvp(primals, tangents):
    (x,), (dx,) = primals, tangents
    y = jnp.sqrt(x)
    # d√x = dx / (2√x); at x = 0 the subgradient 0 keeps the gradient finite.
    return y, jnp.where(y > 0, dx / (2.0 * jnp.where(y > 0, y, 1.0)), 0.0)


def l2_distances(features: jax.Array, prototypes: jax.Array) -> jax.Array:
    """Euclidean distances `[..., P]` between `features [..., D]` and `prototypes [P, D]`.

    The gradient is finite everywhere; at distance 0 it is 0.
    """
    return _safe_sqrt(squared_l2_distances(features, prototypes))


def log_similarity(distances: jax.Array, eps: float = 1e-4) -> jax.Array:
    """ProtoPNet's similarity log((d + 1) / (d + eps)), elementwise; decreasing in d ≥ 0."""
    return jnp.log((distances + 1.0) / (distances + eps))


def min_over_patches(
    distance_map: jax.Array, valid: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """Minimum distance over the spatial grid, and where it is attained.

    Args:
      distance_map: `[B, H, W, P]`.
      valid: optional `[B, H, W]` bool; invalid locations are never selected.

    Returns:
      `(min [B, P], loc [B, P, 2] int32)`, with `loc` the (h, w) of the first minimum in
      row-major order.
    """
    b, h, w, p = distance_map.shape
    if valid is not None:
        distance_map = jnp.where(valid[..., None], distance_map, jnp.inf)
    flat = distance_map.reshape(b, h * w, p)
    arg = jnp.argmin(flat, axis=1)  # [B, P]; argmin returns the first occurrence
    mins = jnp.take_along_axis(flat, arg[:, None, :], axis=1)[:, 0, :]
    loc = jnp.stack([arg // w, arg % w], axis=-1).astype(jnp.int32)
    return mins, loc
