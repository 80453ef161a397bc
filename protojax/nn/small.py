"""A small convolutional backbone for 28–64 px images (digits, MNIST, shapes)."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp


class SmallCNN(nn.Module):
    """Stages of [conv3×3 → BN → ReLU] × 2 followed by a 2×2 max-pool.

    `[B, H, W, C]` → `[B, H / 2^S, W / 2^S, widths[-1]]` for S = len(widths) stages.
    Named intermediate maps are `stage1`, `stage2`, ... (after each pool).
    """

    widths: Sequence[int] = (32, 64)
    dtype: jnp.dtype = jnp.float32
    param_dtype: jnp.dtype = jnp.float32
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        layers = {}
        x = x.astype(self.dtype)
        for stage, width in enumerate(self.widths, start=1):
            for _ in range(2):
                x = nn.Conv(
                    width,
                    (3, 3),
                    padding=((1, 1), (1, 1)),
                    use_bias=False,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(x)
                x = nn.BatchNorm(
                    use_running_average=not train,
                    momentum=0.9,
                    dtype=self.dtype,
                    param_dtype=self.param_dtype,
                )(x)
                x = nn.relu(x)
            x = nn.max_pool(x, (2, 2), strides=(2, 2))
            layers[f"stage{stage}"] = x
        if self.return_layers:
            return x, {name: layers[name] for name in self.return_layers}
        return x
