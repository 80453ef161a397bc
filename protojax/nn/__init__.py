"""Backbones: `backbone_by_name(name, ...)` returns a Flax module mapping images
`[B, H, W, C]` to a feature map `[B, h, w, c]` (and, with `return_layers`, a dict of named
intermediate maps)."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from protojax.errors import UsageError
from protojax.nn.small import SmallCNN

_BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda **kw: SmallCNN(widths=(32, 64), **kw),
    "small_cnn_wide": lambda **kw: SmallCNN(widths=(32, 64, 128), **kw),
}


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def backbone_by_name(
    name: str,
    *,
    stem: str = "imagenet",
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    return_layers: Sequence[str] = (),
) -> nn.Module:
    """Builds a backbone module by name.

    Args:
      name: one of `backbone_names()`.
      stem: `imagenet` or `cifar`, for backbones that have both stems; ignored otherwise.
      dtype: computation dtype (bfloat16 for mixed precision).
      param_dtype: parameter dtype.
      return_layers: names of intermediate maps to return beside the final map.

    Returns:
      A module called as `module(images [B,H,W,C], train=bool)`.
    """
    if name not in _BACKBONES:
        raise UsageError(f"Unknown backbone '{name}'; use one of {', '.join(backbone_names())}.")
    del stem  # the small backbones have a single stem
    return _BACKBONES[name](
        dtype=dtype, param_dtype=param_dtype, return_layers=tuple(return_layers)
    )


__all__ = ["SmallCNN", "backbone_by_name", "backbone_names"]
