"""Backbones: `backbone_by_name(name, ...)` returns a Flax module mapping images
`[B, H, W, C]` to a feature map `[B, h, w, c]` (and, with `return_layers`, a dict of named
intermediate maps). `feature_channels(name)` gives `c`, to size the layers that follow.

Converted weights are loaded with `protojax.nn.weights.load_variables`.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from protojax.errors import UsageError
from protojax.nn.resnet import RESNET_ARCHS, STEMS, ResNet, build_resnet, resnet_channels
from protojax.nn.small import SmallCNN
from protojax.nn.vae import ConvTranspose2d, Decoder, Encoder  # ProtoVAE's, by arch


class _Backbone(NamedTuple):
    build: Callable[..., nn.Module]  # (stem=, dtype=, param_dtype=, return_layers=) -> module
    channels: int  # channels of the final map


def _small_cnn(widths: tuple[int, ...], *, stem: str, **kw) -> SmallCNN:
    del stem  # the small backbones have a single stem
    return SmallCNN(widths=widths, **kw)


_BACKBONES: dict[str, _Backbone] = {
    "small_cnn": _Backbone(functools.partial(_small_cnn, (32, 64)), 64),
    "small_cnn_wide": _Backbone(functools.partial(_small_cnn, (32, 64, 128)), 128),
    **{
        name: _Backbone(functools.partial(build_resnet, name), resnet_channels(name))
        for name in RESNET_ARCHS
    },
}


def backbone_names() -> list[str]:
    return sorted(_BACKBONES)


def _entry(name: str) -> _Backbone:
    if name not in _BACKBONES:
        raise UsageError(f"Unknown backbone '{name}'; use one of {', '.join(backbone_names())}.")
    return _BACKBONES[name]


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
      stem: `imagenet` or `cifar`, for backbones that have both stems (the ResNets); ignored
        by the others.
      dtype: computation dtype (bfloat16 for mixed precision).
      param_dtype: parameter dtype.
      return_layers: names of intermediate maps to return beside the final map (for the
        ResNets: `stem`, `layer1` … `layer4`).

    Returns:
      A module called as `module(images [B,H,W,C], train=bool)`.
    """
    entry = _entry(name)
    if stem not in STEMS:
        raise UsageError(f"Unknown stem '{stem}'; use one of {', '.join(STEMS)}.")
    return entry.build(
        stem=stem, dtype=dtype, param_dtype=param_dtype, return_layers=tuple(return_layers)
    )


def feature_channels(name: str) -> int:
    """Channels `c` of the final map `[B, h, w, c]` of backbone `name`."""
    return _entry(name).channels


__all__ = [
    "ConvTranspose2d",
    "Decoder",
    "Encoder",
    "ResNet",
    "SmallCNN",
    "backbone_by_name",
    "backbone_names",
    "feature_channels",
    "build_resnet",
]
