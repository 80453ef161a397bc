"""VGG-11/13/16/19 and their batch-norm variants with torchvision's structure and names.

The trunk is torchvision's `features` sequential: 3×3 convs (padding 1, with bias), each
followed by BatchNorm in the `_bn` variants and by a ReLU, and a 2×2 max-pool (stride 2) after
each of the five stages. The backbone is the whole of `features`, including the last max-pool,
as ProtoPNet's `vgg_features.py` uses it: the final map is `[B, H/32, W/32, 512]` (7×7 at
224 px). The classifier (`classifier.*`) and torchvision's adaptive average pool are not part of
it.

Variable names are torchvision's `features.{i}` with `i` the index in that sequential, where
convs, norms, ReLUs and pools all count: `features.0.weight` → `params/features_0/kernel`; in
`vgg16_bn`, `features.1.running_mean` → `batch_stats/features_1/mean`.

Named maps for `return_layers`: `conv1` … `conv5`, the last ReLU output of each stage (before
its pool; `conv5` is the map Grad-CAM uses), and `pool1` … `pool5`, each stage's pooled output
(`pool5` is the final map).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.nn.layers import (
    KAIMING_FAN_OUT,
    batch_norm,
    check_images,
    check_return_layers,
    conv2d,
    max_pool,
)

POOL = 0  # a max-pool in a layer configuration; every other entry is a conv's width

# torchvision's configurations "A", "B", "D" and "E".
VGG_CONFIGS: dict[str, tuple[int, ...]] = {
    "vgg11": (64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg13": (64, 64, POOL, 128, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL),
    "vgg16": (
        *(64, 64, POOL, 128, 128, POOL),
        *(256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL),
    ),
    "vgg19": (
        *(64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL),
        *(512, 512, 512, 512, POOL, 512, 512, 512, 512, POOL),
    ),
}
VGG_ARCHS = tuple(VGG_CONFIGS) + tuple(f"{name}_bn" for name in VGG_CONFIGS)
LAYER_NAMES = tuple(f"conv{s}" for s in range(1, 6)) + tuple(f"pool{s}" for s in range(1, 6))


class VGG(nn.Module):
    """torchvision's VGG `features`: images `[B, H, W, C]` → `[B, H/32, W/32, widths[-1]]`.

    Attributes:
      layers: conv widths and `POOL` markers, as torchvision's `cfgs` (a smaller width tests
        the structure cheaply).
      batch_norm: BatchNorm after every conv (the `_bn` variants).
      return_layers: names among `conv1` … `conv5` and `pool1` … `pool5` (see the module doc);
        with any, the call returns `(final map, {name: map})`.
    """

    layers: Sequence[int]
    batch_norm: bool = False
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        check_return_layers("VGG", self.return_layers, LAYER_NAMES)
        check_images("VGG", x)
        dt, pdt = self.dtype, self.param_dtype
        x = x.astype(dt)
        maps, index, stage = {}, 0, 1
        for width in self.layers:
            if width == POOL:
                maps[f"conv{stage}"] = x
                x = max_pool(x, window=2, stride=2, padding=0)
                maps[f"pool{stage}"] = x
                index, stage = index + 1, stage + 1
                continue
            x = conv2d(
                width,
                3,
                bias=True,
                kernel_init=KAIMING_FAN_OUT,
                name=f"features_{index}",
                dtype=dt,
                param_dtype=pdt,
            )(x)
            index += 1
            if self.batch_norm:
                x = batch_norm(train, name=f"features_{index}", dtype=dt, param_dtype=pdt)(x)
                index += 1
            x = nn.relu(x)
            index += 1  # the ReLU
        if self.return_layers:
            return x, {name: maps[name] for name in self.return_layers}
        return x
