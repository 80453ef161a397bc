"""ConvNeXt-Tiny and -Small with torchvision's structure and names.

torchvision's `convnext.py`: a stem conv4×4/4 (with bias) → LayerNorm; four stages of CNBlocks,
each x + layer_scale · Linear(GELU(Linear(LayerNorm(dwconv7×7(x))))) (depthwise conv padding 3,
LayerNorm epsilon 1e-6, exact GELU, hidden width 4·C); and between stages a LayerNorm →
conv2×2/2 downsampling. Stochastic depth is identity at evaluation and is not applied here
(fine-tuning with it is a training option this module does not offer). The final map is the
last stage's output `[B, H/32, W/32, 768]` (7×7 at 224 px), the map torchvision pools; its
classifier (`classifier.*`: LayerNorm, flatten, Linear) is not part of the backbone.

Variable names follow torchvision's `features.{i}.{j}` with numeric components joined by '_':
`features.0.0.weight` → `params/features_0_0/kernel` (stem conv), `features.0.1.weight` →
`params/features_0_1/scale` (stem norm), `features.1.0.block.0.weight` →
`params/features_1_0/block_0/kernel` (depthwise conv), `block.2` (LayerNorm), `block.3` and
`block.5` (the Linears), `features.1.0.layer_scale` (`[C, 1, 1]` in torch) →
`params/features_1_0/layer_scale` (`[C]`), and downsampling `features.2.0` (LayerNorm) and
`features.2.1` (conv). timm's ConvNeXt names (`stages.0.blocks.0.conv_dw`, …) are not mapped.

Named maps for `return_layers`: `stem`, and `stage1` … `stage4` (each stage's output).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax

from protojax.nn.layers import (
    TRUNC_NORMAL_002,
    TypedModule,
    check_images,
    check_return_layers,
    conv2d,
    layer_norm,
)

# name -> (blocks per stage, widths per stage), as torchvision.
CONVNEXT_ARCHS: dict[str, tuple[tuple[int, ...], tuple[int, ...]]] = {
    "convnext_tiny": ((3, 3, 9, 3), (96, 192, 384, 768)),
    "convnext_small": ((3, 3, 27, 3), (96, 192, 384, 768)),
}
LAYER_NAMES = ("stem", "stage1", "stage2", "stage3", "stage4")


class CNBlock(TypedModule):
    """`[B, H, W, C]` → `[B, H, W, C]`: torchvision's CNBlock (see the module doc)."""

    layer_scale_init: float = 1e-6

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        channels = x.shape[-1]
        kw = self.dtypes
        y = conv2d(
            channels,
            7,
            groups=channels,
            bias=True,
            kernel_init=TRUNC_NORMAL_002,
            name="block_0",
            **kw,
        )(x)
        y = layer_norm(name="block_2", **kw)(y)
        y = nn.Dense(4 * channels, kernel_init=TRUNC_NORMAL_002, name="block_3", **kw)(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(channels, kernel_init=TRUNC_NORMAL_002, name="block_5", **kw)(y)
        scale = self.param(
            "layer_scale",
            nn.initializers.constant(self.layer_scale_init),
            (channels,),
            self.param_dtype,
        )
        return x + scale.astype(self.dtype) * y


class ConvNeXt(TypedModule):
    """torchvision's ConvNeXt `features`: `[B, H, W, C]` → `[B, H/32, W/32, widths[-1]]`.

    Attributes:
      depths: CNBlocks per stage.
      widths: channels per stage.
      return_layers: names among `stem` and `stage1` … `stage4`; with any, the call returns
        `(final map, {name: map})`.
    """

    depths: Sequence[int]
    widths: Sequence[int]
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        del train  # no batch statistics; stochastic depth is not applied
        check_return_layers("ConvNeXt", self.return_layers, LAYER_NAMES)
        check_images("ConvNeXt", x)
        kw = self.dtypes
        x = x.astype(self.dtype)
        x = conv2d(
            self.widths[0],
            4,
            stride=4,
            padding=0,
            bias=True,
            kernel_init=TRUNC_NORMAL_002,
            name="features_0_0",
            **kw,
        )(x)
        x = layer_norm(name="features_0_1", **kw)(x)
        maps = {"stem": x}
        for stage, (depth, width) in enumerate(zip(self.depths, self.widths)):
            index = 2 * stage + 1  # torchvision's position of the stage in `features`
            if stage > 0:
                x = layer_norm(name=f"features_{index - 1}_0", **kw)(x)
                x = conv2d(
                    width,
                    2,
                    stride=2,
                    padding=0,
                    bias=True,
                    kernel_init=TRUNC_NORMAL_002,
                    name=f"features_{index - 1}_1",
                    **kw,
                )(x)
            for block in range(depth):
                x = CNBlock(name=f"features_{index}_{block}", **kw)(x)
            maps[f"stage{stage + 1}"] = x
        if self.return_layers:
            return x, {name: maps[name] for name in self.return_layers}
        return x
