"""Backbones: `backbone_by_name(name, ...)` returns a Flax module mapping images
`[B, H, W, C]` to a feature map `[B, h, w, c]`, the map before global pooling (and, with
`return_layers`, a dict of named intermediate maps). `feature_channels(name)` gives `c`, to
size the layers that follow; `normalization(name)` gives the mean and std the pretrained
weights expect.

The families are named as torchvision or timm name them, so that their weights map one to
one (`protojax.nn.weights`):
- `resnet18` … `resnet152` (torchvision; ImageNet or CIFAR stem), `protojax/nn/resnet.py`;
- `vgg11` … `vgg19` and their `_bn` variants (torchvision), `protojax/nn/vgg.py`;
- `densenet121`, `densenet161`, `densenet169`, `densenet201` (torchvision),
  `protojax/nn/densenet.py`;
- `convnext_tiny`, `convnext_small` (torchvision), `protojax/nn/convnext.py`;
- `vit_b_16` (torchvision), `vit_small_patch16_224` and `vit_base_patch16_224` (timm),
  `protojax/nn/vit.py`;
- `small_cnn`, `small_cnn_wide`: small CNNs for 28–64 px images, trained from scratch.

Each family's file documents its layer names for `return_layers` and its variable names.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import NamedTuple

import flax.linen as nn
import jax.numpy as jnp

from protojax.errors import UsageError
from protojax.nn.convnext import CONVNEXT_ARCHS, ConvNeXt
from protojax.nn.densenet import DENSENET_ARCHS, DenseNet, densenet_channels
from protojax.nn.resnet import RESNET_ARCHS, STEMS, ResNet, build_resnet, resnet_channels
from protojax.nn.small import SmallCNN
from protojax.nn.vae import ConvTranspose2d, Decoder, Encoder  # ProtoVAE's, by arch
from protojax.nn.vgg import VGG, VGG_ARCHS, VGG_CONFIGS
from protojax.nn.vit import VIT_ARCHS, VisionTransformer


class Normalization(NamedTuple):
    """Per-channel mean and std (RGB, images in [0, 1]) that pretrained weights expect:
    feed `(image − mean) / std`."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# torchvision's ImageNet weights (and `data.normalization=imagenet`).
IMAGENET = Normalization((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
# timm's `vit_*_patch16_224` (augreg) weights: IMAGENET_INCEPTION_MEAN/STD, which is
# `data.normalization=symmetric` (images in [−1, 1]).
INCEPTION = Normalization((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


class _Backbone(NamedTuple):
    build: Callable[..., nn.Module]  # (stem=, dtype=, param_dtype=, return_layers=) -> module
    channels: int  # channels of the final map
    family: str  # resnet | vgg | densenet | convnext | vit | small: selects the weight key map
    normalization: Normalization


def _single_stem(cls: type[nn.Module], arch: tuple, *, stem: str, **kw) -> nn.Module:
    """`cls(*arch, **kw)`, a backbone with one stem (only the ResNets have a CIFAR stem)."""
    del stem
    return cls(*arch, **kw)


def _entries() -> dict[str, _Backbone]:
    def single(cls: type[nn.Module], arch: tuple) -> Callable[..., nn.Module]:
        return functools.partial(_single_stem, cls, arch)

    entries = {
        "small_cnn": _Backbone(single(SmallCNN, ((32, 64),)), 64, "small", IMAGENET),
        "small_cnn_wide": _Backbone(single(SmallCNN, ((32, 64, 128),)), 128, "small", IMAGENET),
    }
    for name in RESNET_ARCHS:
        build = functools.partial(build_resnet, name)
        entries[name] = _Backbone(build, resnet_channels(name), "resnet", IMAGENET)
    for name in VGG_ARCHS:
        arch = (VGG_CONFIGS[name.removesuffix("_bn")], name.endswith("_bn"))
        entries[name] = _Backbone(single(VGG, arch), 512, "vgg", IMAGENET)
    for name, arch in DENSENET_ARCHS.items():
        channels = densenet_channels(*arch)
        entries[name] = _Backbone(single(DenseNet, arch), channels, "densenet", IMAGENET)
    for name, arch in CONVNEXT_ARCHS.items():
        entries[name] = _Backbone(single(ConvNeXt, arch), arch[1][-1], "convnext", IMAGENET)
    for name, arch in VIT_ARCHS.items():
        norm = IMAGENET if name == "vit_b_16" else INCEPTION
        entries[name] = _Backbone(single(VisionTransformer, arch), arch[1], "vit", norm)
    return entries


_BACKBONES: dict[str, _Backbone] = _entries()


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
      return_layers: names of intermediate maps to return beside the final map, as each
        family's file documents (ResNets: `stem`, `layer1` … `layer4`; VGG: `conv1` … `conv5`,
        `pool1` … `pool5`; DenseNet: `stem`, `denseblock1` … `denseblock4`, `transition1` …
        `transition3`; ConvNeXt: `stem`, `stage1` … `stage4`; ViT: `block1` … `block12`,
        `class_token`; small CNNs: `stage1`, …).

    Returns:
      A module called as `module(images [B,H,W,C], train=bool)`, returning the final map
      `[B, h, w, c]`, or `(final map, {name: map})` when `return_layers` is non-empty.
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


def backbone_family(name: str) -> str:
    """`resnet`, `vgg`, `densenet`, `convnext`, `vit` or `small`: how weights are named."""
    return _entry(name).family


def normalization(name: str) -> Normalization:
    """The input mean and std of backbone `name`'s published pretrained weights."""
    return _entry(name).normalization


__all__ = [
    "IMAGENET",
    "INCEPTION",
    "VGG",
    "ConvNeXt",
    "DenseNet",
    "Normalization",
    "ConvTranspose2d",
    "Decoder",
    "Encoder",
    "ResNet",
    "SmallCNN",
    "VisionTransformer",
    "backbone_by_name",
    "backbone_family",
    "backbone_names",
    "build_resnet",
    "feature_channels",
    "normalization",
]
