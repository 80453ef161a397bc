"""InfoDisent's kernels: an orthogonal channel unmixing and the signed max pooling.

Struski et al., arXiv 2409.10329: the frozen backbone's feature map is rotated pixelwise by
U = expm(A − Aᵀ), an element of SO(D), and each channel is then read out by its strongest
positive and its strongest negative response.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def orthogonal_unmixing(a: jax.Array) -> jax.Array:
    """U = expm(A − Aᵀ): orthogonal with determinant +1, for any square A.

    The exponential of a skew-symmetric matrix is a rotation; A = 0 gives U = I. The
    matrix products inside `jax.scipy.linalg.expm` run at float32 precision, so that TF32
    defaults on accelerators do not cost orthogonality.

    Args:
      a: `[..., D, D]` float.

    Returns:
      `[..., D, D]` float32 U.
    """
    if a.ndim < 2 or a.shape[-1] != a.shape[-2]:
        raise ValueError(
            f"a must be square, [..., D, D], got shape {a.shape}; InfoDisent's A is D × D "
            "for D backbone channels."
        )
    a = a.astype(jnp.float32)
    with jax.default_matmul_precision("highest"):
        return jax.scipy.linalg.expm(a - jnp.swapaxes(a, -1, -2))


class MxPoolResult(NamedTuple):
    """`mx_pool` with locations.

    Attributes:
      values: `[B, C]`, max ReLU(x) − max ReLU(−x) over (H, W).
      positive_locations: `[B, C, 2]` int32, the (h, w) of each channel's maximum.
      negative_locations: `[B, C, 2]` int32, the (h, w) of each channel's minimum.
    """

    values: jax.Array
    positive_locations: jax.Array
    negative_locations: jax.Array


def mx_pool(x: jax.Array, *, return_locations: bool = False) -> jax.Array | MxPoolResult:
    """InfoDisent's pooling: max over (H, W) of ReLU(x) minus max over (H, W) of ReLU(−x).

    Each channel is read out through its strongest positive and its strongest negative
    response, its two "prototypical parts". The gradient flows to those two locations.

    Args:
      x: `[B, H, W, C]`.
      return_locations: also return where each channel's maximum and minimum are.

    Returns:
      `[B, C]` values, or with `return_locations` an `MxPoolResult` whose locations are the
      (h, w) of the maximum and of the minimum of x, the first in row-major order on ties.
      A channel without a positive (negative) value still reports where its maximum
      (minimum) is; its positive (negative) part is then 0.
    """
    if x.ndim != 4:
        raise ValueError(
            f"x must be [B, H, W, C], got shape {x.shape}; add the missing axes (a single "
            "image needs a batch axis of 1)."
        )
    b, h, w, c = x.shape
    flat = x.reshape(b, h * w, c)
    top = jnp.argmax(flat, axis=1)  # [B, C]; the first occurrence
    bottom = jnp.argmin(flat, axis=1)
    highest = jnp.take_along_axis(flat, top[:, None, :], axis=1)[:, 0]
    lowest = jnp.take_along_axis(flat, bottom[:, None, :], axis=1)[:, 0]
    values = jax.nn.relu(highest) - jax.nn.relu(-lowest)
    if not return_locations:
        return values

    def to_hw(index):
        return jnp.stack([index // w, index % w], axis=-1).astype(jnp.int32)

    return MxPoolResult(values, to_hw(top), to_hw(bottom))
