"""ProtoPNet's add-on layers (the official `model.py`), between a backbone and a part-prototype
layer: 1×1 convolutions that map the backbone's channels to the prototypes' dimension and
end in a sigmoid."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.errors import UsageError

ADD_ON_KINDS = ("regular", "bottleneck")

_ADD_ON_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def add_on_widths(kind: str, in_channels: int, dim: int) -> list[int]:
    """Output widths of the add-on blocks (each conv1×1 → ReLU → conv1×1 → ReLU/sigmoid).

    `regular` is one block of width `dim`; `bottleneck` halves the channels block by block
    until `dim` is reached, as the official `add_on_layers_type='bottleneck'`.
    """
    if kind == "regular":
        return [dim]
    if kind != "bottleneck":
        raise UsageError(
            f"Unknown model.add_on_layers '{kind}'; use one of {', '.join(ADD_ON_KINDS)}."
        )
    widths, current = [], in_channels
    while current > dim or not widths:
        widths.append(max(dim, current // 2))
        current //= 2
    return widths


class AddOnLayers(nn.Module):
    """`[B, h, w, c]` → `[B, h, w, D]` in (0, 1): blocks of conv1×1 → ReLU → conv1×1 → ReLU,
    the last block ending in a sigmoid. Kaiming-normal (fan-out, ReLU) kernels, zero biases."""

    widths: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array, *, pre_sigmoid: bool = False) -> jax.Array:
        """`pre_sigmoid`: the last conv's output, before the sigmoid (where PRP's relevance
        starts: `protojax.explain.protopnet_relevance(..., sigmoid=True)`)."""
        index = 0
        for block, width in enumerate(self.widths):
            for position in range(2):
                x = nn.Conv(
                    width, (1, 1), kernel_init=_ADD_ON_INIT, dtype=self.dtype, name=f"conv{index}"
                )(x)
                index += 1
                last = block == len(self.widths) - 1 and position == 1
                if last and pre_sigmoid:
                    return x.astype(jnp.float32)
                x = nn.sigmoid(x) if last else nn.relu(x)
        return x.astype(jnp.float32)
