"""ResNet-18/34/50/101/152 with torchvision's structure and parameter names.

The modules follow torchvision's `resnet.py` (v1.5: a bottleneck block strides on its 3×3
conv), with explicit torch-style padding everywhere ("SAME" pads a stride-2 conv on an even
input differently from torch's `padding=1`), BatchNorm epsilon 1e-5 and momentum 0.9 (torch's
momentum 0.1), Kaiming-normal (fan-out) conv initialisation and no zero-initialised residual
BN, as torchvision's defaults. The backbone stops at `layer4`: no pooling and no classifier.

Inputs are images `[B, H, W, C]` normalised as the weights expect (for ImageNet weights, the
ImageNet mean and std); the normalisation is the data pipeline's job.

Variable names mirror torchvision's `state_dict` keys so that the conversion key map is one
rule: a numeric component joins the preceding one with an underscore, and the rest of the
path is unchanged. For example

    conv1.weight                    -> params/conv1/kernel               (OIHW -> HWIO)
    bn1.weight, bn1.bias            -> params/bn1/scale, params/bn1/bias
    bn1.running_mean, .running_var  -> batch_stats/bn1/mean, batch_stats/bn1/var
    layer1.0.conv1.weight           -> params/layer1_0/conv1/kernel
    layer2.0.downsample.0.weight    -> params/layer2_0/downsample_0/kernel
    layer2.0.downsample.1.bias      -> params/layer2_0/downsample_1/bias

`num_batches_tracked` and the classifier `fc.*` have no counterpart (see
`protojax.nn.weights.torch_state_dict_to_variables`).

BatchNorm in training mode follows Flax: the running variance is updated with the biased batch
variance, where torch uses the unbiased one. Evaluation-mode outputs are identical.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.errors import UsageError
from protojax.nn.layers import batch_norm, check_images, check_return_layers, conv2d, max_pool

STEMS = ("imagenet", "cifar")
LAYER_NAMES = ("stem", "layer1", "layer2", "layer3", "layer4")


def _conv(features: int, kernel: int, stride: int, name: str, dtype, param_dtype) -> nn.Conv:
    """A bias-free conv with torch's padding `kernel // 2` on every side."""
    return conv2d(features, kernel, stride=stride, name=name, dtype=dtype, param_dtype=param_dtype)


def _batch_norm(train: bool, name: str, dtype, param_dtype) -> nn.BatchNorm:
    return batch_norm(train, name=name, dtype=dtype, param_dtype=param_dtype)


class BasicBlock(nn.Module):
    """torchvision's BasicBlock: conv3×3(stride) → BN → ReLU → conv3×3 → BN, + shortcut, ReLU.

    `[B, H, W, C]` → `[B, H / stride, W / stride, width]`. The shortcut is a 1×1 conv (stride)
    and BN, named `downsample_0` and `downsample_1`, when the shape changes.
    """

    width: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dt, pdt = self.dtype, self.param_dtype
        y = _conv(self.width, 3, self.stride, "conv1", dt, pdt)(x)
        y = nn.relu(_batch_norm(train, "bn1", dt, pdt)(y))
        y = _conv(self.width, 3, 1, "conv2", dt, pdt)(y)
        y = _batch_norm(train, "bn2", dt, pdt)(y)
        return nn.relu(y + _shortcut(x, self.width, self.stride, train, dt, pdt))


class Bottleneck(nn.Module):
    """torchvision's Bottleneck (v1.5): 1×1 → 3×3(stride) → 1×1 (4·width), each with BN.

    `[B, H, W, C]` → `[B, H / stride, W / stride, 4 · width]`. The shortcut is a 1×1 conv
    (stride) and BN, named `downsample_0` and `downsample_1`, when the shape changes.
    """

    width: int
    stride: int = 1
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        dt, pdt = self.dtype, self.param_dtype
        y = _conv(self.width, 1, 1, "conv1", dt, pdt)(x)
        y = nn.relu(_batch_norm(train, "bn1", dt, pdt)(y))
        y = _conv(self.width, 3, self.stride, "conv2", dt, pdt)(y)
        y = nn.relu(_batch_norm(train, "bn2", dt, pdt)(y))
        y = _conv(self.width * self.expansion, 1, 1, "conv3", dt, pdt)(y)
        y = _batch_norm(train, "bn3", dt, pdt)(y)
        out = self.width * self.expansion
        return nn.relu(y + _shortcut(x, out, self.stride, train, dt, pdt))


def _shortcut(x: jax.Array, out_channels: int, stride: int, train: bool, dt, pdt) -> jax.Array:
    """Identity, or conv1×1(stride) → BN when the stride or the channel count changes.

    Called inside a block's compact `__call__`, so the submodules belong to that block.
    """
    if stride == 1 and x.shape[-1] == out_channels:
        return x
    x = _conv(out_channels, 1, stride, "downsample_0", dt, pdt)(x)
    return _batch_norm(train, "downsample_1", dt, pdt)(x)


class ResNet(nn.Module):
    """A ResNet trunk up to `layer4`, as torchvision's, with an ImageNet or a CIFAR stem.

    The ImageNet stem is conv7×7/2 (padding 3) → BN → ReLU → max-pool 3×3/2 (padding 1, −inf);
    the CIFAR stem is conv3×3/1 (padding 1) → BN → ReLU with no max-pool. Stage `i` (1–4) has
    width 64·2^(i−1) and strides 2 in its first block for i > 1. The final map is
    `[B, H/32, W/32, 512·expansion]` with the ImageNet stem (7×7 at 224 px) and
    `[B, H/8, W/8, 512·expansion]` with the CIFAR stem.

    Named maps for `return_layers`: `stem` (the stem's output, the input of `layer1`) and
    `layer1` … `layer4` (each stage's output).
    """

    block: type[BasicBlock] | type[Bottleneck]
    stage_sizes: Sequence[int]
    stem: str = "imagenet"
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        """Maps images `[B, H, W, C]` to the layer4 map `[B, h, w, c]`.

        Returns `(layer4 map, {name: map})` when `return_layers` is non-empty.
        """
        _check_stem(self.stem)
        check_return_layers("ResNet", self.return_layers, LAYER_NAMES)
        check_images("ResNet", x)
        dt, pdt = self.dtype, self.param_dtype
        x = x.astype(dt)
        if self.stem == "imagenet":
            x = _conv(64, 7, 2, "conv1", dt, pdt)(x)
            x = nn.relu(_batch_norm(train, "bn1", dt, pdt)(x))
            x = max_pool(x, window=3, stride=2, padding=1)
        else:
            x = _conv(64, 3, 1, "conv1", dt, pdt)(x)
            x = nn.relu(_batch_norm(train, "bn1", dt, pdt)(x))
        maps = {"stem": x}
        for stage, num_blocks in enumerate(self.stage_sizes, start=1):
            width = 64 * 2 ** (stage - 1)
            for index in range(num_blocks):
                stride = 2 if stage > 1 and index == 0 else 1
                x = self.block(
                    width, stride, dtype=dt, param_dtype=pdt, name=f"layer{stage}_{index}"
                )(x, train=train)
            maps[f"layer{stage}"] = x
        if self.return_layers:
            return x, {name: maps[name] for name in self.return_layers}
        return x


# name -> (block, blocks per stage), as torchvision.
RESNET_ARCHS: dict[str, tuple[type[BasicBlock] | type[Bottleneck], tuple[int, ...]]] = {
    "resnet18": (BasicBlock, (2, 2, 2, 2)),
    "resnet34": (BasicBlock, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
    "resnet101": (Bottleneck, (3, 4, 23, 3)),
    "resnet152": (Bottleneck, (3, 8, 36, 3)),
}


def _check_stem(stem: str) -> None:
    if stem not in STEMS:
        raise UsageError(f"Unknown stem '{stem}'; use one of {', '.join(STEMS)}.")


def build_resnet(
    name: str,
    *,
    stem: str = "imagenet",
    dtype: jnp.dtype = jnp.float32,
    param_dtype: jnp.dtype = jnp.float32,
    return_layers: Sequence[str] = (),
) -> ResNet:
    """Builds `resnet18` … `resnet152` (see `ResNet`); `stem` is `imagenet` or `cifar`."""
    if name not in RESNET_ARCHS:
        raise UsageError(f"Unknown ResNet '{name}'; use one of {', '.join(RESNET_ARCHS)}.")
    _check_stem(stem)
    block, stage_sizes = RESNET_ARCHS[name]
    return ResNet(
        block=block,
        stage_sizes=stage_sizes,
        stem=stem,
        dtype=dtype,
        param_dtype=param_dtype,
        return_layers=tuple(return_layers),
    )


def resnet_channels(name: str) -> int:
    """Channels of the layer4 map of `name`: 512 for ResNet-18/34, 2048 for deeper ones."""
    block, _ = RESNET_ARCHS[name]
    return 512 * block.expansion
