"""DenseNet-121/161/169/201 with torchvision's structure and names.

torchvision's `densenet.py`: a stem conv7×7/2 (padding 3) → BN → ReLU → max-pool 3×3/2
(padding 1); four dense blocks whose layers each compute BN → ReLU → conv1×1 (`bn_size` ·
growth) → BN → ReLU → conv3×3 (growth) on the concatenation of all earlier maps of the block;
between blocks a transition BN → ReLU → conv1×1 (halving the channels) → average-pool 2×2/2;
and a final BN (`norm5`). The final map is ReLU(norm5(·)), the map torchvision pools for its
classifier: `[B, H/32, W/32, c]` with c = 1024, 2208, 1664 and 1920 for DenseNet-121, -161, -169
and -201 (7×7 at 224 px). Memory-efficient checkpointing is a torch training option with no
effect on the values; it has no counterpart here.

Variable names are torchvision's without the `features.` prefix: `features.conv0.weight` →
`params/conv0/kernel`, `features.denseblock1.denselayer1.norm1.running_var` →
`batch_stats/denseblock1/denselayer1/norm1/var`, `features.transition1.conv.weight` →
`params/transition1/conv/kernel`. The old key style of torchvision's published files
(`denselayer1.norm.1.weight`) is mapped too (see `protojax.nn.weights`).

Named maps for `return_layers`: `stem` (after the max-pool), `denseblock1` … `denseblock4`
(each block's concatenated output), `transition1` … `transition3` (each transition's pooled
output).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.nn.layers import (
    KAIMING_FAN_IN,
    TypedModule,
    avg_pool,
    batch_norm,
    check_images,
    check_return_layers,
    conv2d,
    max_pool,
)

# name -> (growth rate, layers per block, stem width), as torchvision.
DENSENET_ARCHS: dict[str, tuple[int, tuple[int, ...], int]] = {
    "densenet121": (32, (6, 12, 24, 16), 64),
    "densenet161": (48, (6, 12, 36, 24), 96),
    "densenet169": (32, (6, 12, 32, 32), 64),
    "densenet201": (32, (6, 12, 48, 32), 64),
}
LAYER_NAMES = (
    ("stem",)
    + tuple(f"denseblock{b}" for b in range(1, 5))
    + tuple(f"transition{t}" for t in range(1, 4))
)


def densenet_channels(growth_rate: int, block_config: Sequence[int], stem_width: int) -> int:
    """Channels of the final map: each block adds `layers · growth`, each transition halves."""
    channels = stem_width
    for index, layers in enumerate(block_config):
        channels += layers * growth_rate
        if index < len(block_config) - 1:
            channels //= 2
    return channels


class DenseLayer(TypedModule):
    """`[B, H, W, C]` (the block's concatenation so far) → `[B, H, W, growth_rate]`."""

    growth_rate: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        y = nn.relu(batch_norm(train, name="norm1", **kw)(x))
        y = conv2d(
            self.bn_size * self.growth_rate, 1, kernel_init=KAIMING_FAN_IN, name="conv1", **kw
        )(y)
        y = nn.relu(batch_norm(train, name="norm2", **kw)(y))
        return conv2d(self.growth_rate, 3, kernel_init=KAIMING_FAN_IN, name="conv2", **kw)(y)


class DenseBlock(TypedModule):
    """`[B, H, W, C]` → `[B, H, W, C + num_layers · growth_rate]`; layers `denselayer1`, …"""

    num_layers: int
    growth_rate: int
    bn_size: int = 4

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        features = [x]
        for index in range(1, self.num_layers + 1):
            layer = DenseLayer(
                self.growth_rate, self.bn_size, name=f"denselayer{index}", **self.dtypes
            )
            features.append(layer(jnp.concatenate(features, axis=-1), train=train))
        return jnp.concatenate(features, axis=-1)


class Transition(TypedModule):
    """BN → ReLU → conv1×1 (`features`) → average-pool 2×2/2."""

    features: int

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False) -> jax.Array:
        kw = self.dtypes
        x = nn.relu(batch_norm(train, name="norm", **kw)(x))
        x = conv2d(self.features, 1, kernel_init=KAIMING_FAN_IN, name="conv", **kw)(x)
        return avg_pool(x, window=2, stride=2)


class DenseNet(TypedModule):
    """torchvision's DenseNet `features` + ReLU: `[B, H, W, C]` → `[B, H/32, W/32, c]`.

    Attributes:
      growth_rate, block_config, stem_width, bn_size: torchvision's `growth_rate`,
        `block_config`, `num_init_features` and `bn_size`.
      return_layers: names among `stem`, `denseblock1` … `denseblock4` and `transition1` …
        `transition3`; with any, the call returns `(final map, {name: map})`.
    """

    growth_rate: int
    block_config: Sequence[int]
    stem_width: int
    bn_size: int = 4
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        check_return_layers("DenseNet", self.return_layers, LAYER_NAMES)
        check_images("DenseNet", x)
        kw = self.dtypes
        x = x.astype(self.dtype)
        x = conv2d(self.stem_width, 7, stride=2, kernel_init=KAIMING_FAN_IN, name="conv0", **kw)(x)
        x = nn.relu(batch_norm(train, name="norm0", **kw)(x))
        x = max_pool(x, window=3, stride=2, padding=1)
        maps = {"stem": x}
        for index, num_layers in enumerate(self.block_config, start=1):
            block = DenseBlock(
                num_layers, self.growth_rate, self.bn_size, name=f"denseblock{index}", **kw
            )
            x = block(x, train=train)
            maps[f"denseblock{index}"] = x
            if index < len(self.block_config):
                x = Transition(x.shape[-1] // 2, name=f"transition{index}", **kw)(x, train=train)
                maps[f"transition{index}"] = x
        x = nn.relu(batch_norm(train, name="norm5", **kw)(x))
        if self.return_layers:
            return x, {name: maps[name] for name in self.return_layers}
        return x
