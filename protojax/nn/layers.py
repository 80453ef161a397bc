"""Torch-style layers shared by the backbones: convolutions with explicit padding, norms with
torch's epsilons, and pools padded as torch pads them.

Flax's "SAME" pads a stride-2 conv on an even input differently from torch's `padding=k // 2`,
so every conv here takes its padding explicitly. BatchNorm momentum 0.9 is torch's 0.1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# Kaiming normal with fan-out, as torchvision's `kaiming_normal_(mode="fan_out", "relu")`.
KAIMING_FAN_OUT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# Kaiming normal with fan-in, as torch's `kaiming_normal_` defaults.
KAIMING_FAN_IN = nn.initializers.variance_scaling(2.0, "fan_in", "normal")
# Truncated normal of std 0.02 (ConvNeXt, ViT).
TRUNC_NORMAL_002 = nn.initializers.truncated_normal(0.02)


class TypedModule(nn.Module):
    """A module that computes in `dtype` and keeps its parameters in `param_dtype`: two
    keyword-only fields after the subclass's own, passed on to each layer as `**self.dtypes`."""

    dtype: jnp.dtype = dataclasses.field(default=jnp.float32, kw_only=True)
    param_dtype: jnp.dtype = dataclasses.field(default=jnp.float32, kw_only=True)

    @property
    def dtypes(self) -> dict[str, jnp.dtype]:
        return {"dtype": self.dtype, "param_dtype": self.param_dtype}


_NHWC = ("NHWC", "HWIO", "NHWC")


def conv_general_dilated(
    lhs: jax.Array,
    rhs: jax.Array,
    window_strides,
    padding,
    *,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count: int = 1,
    precision=None,
    **kwargs,
) -> jax.Array:
    """`lax.conv_general_dilated` (and `nn.Conv`'s `conv_general_dilated`), computed as one
    matrix product of the input's patches when the map is smaller than the kernel.

    XLA:CPU's kernel gradient of such a convolution (a 3×3 kernel on a 2×2 map, as in the
    ProtoVAE decoders and the last stage of a backbone on small images) is 10–40× slower
    than the same product as a matmul. Only stride 1, undilated, ungrouped NHWC/HWIO
    convolutions with explicit padding take that path; the values are the same up to float
    summation order. Every other convolution goes to `lax.conv_general_dilated` unchanged.
    """
    kh, kw = rhs.shape[:2]
    plain = (
        lhs.ndim == 4
        and not isinstance(padding, str)
        and all(s == 1 for s in window_strides)
        and all(d == 1 for d in (lhs_dilation or (1, 1)))
        and all(d == 1 for d in (rhs_dilation or (1, 1)))
        and feature_group_count == 1
        and not kwargs
        and (
            dimension_numbers is None
            or jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, _NHWC) == dimension_numbers
            or tuple(dimension_numbers) == _NHWC
        )
    )
    if not plain or (lhs.shape[1] >= kh and lhs.shape[2] >= kw):
        return jax.lax.conv_general_dilated(
            lhs,
            rhs,
            window_strides,
            padding,
            lhs_dilation=lhs_dilation,
            rhs_dilation=rhs_dilation,
            dimension_numbers=dimension_numbers,
            feature_group_count=feature_group_count,
            precision=precision,
            **kwargs,
        )
    b, _, _, c = lhs.shape
    padded = jnp.pad(lhs, ((0, 0), *padding, (0, 0)))
    out_h, out_w = padded.shape[1] - kh + 1, padded.shape[2] - kw + 1
    # [B, out_h, out_w, kh · kw · C], ordered as the kernel's (kh, kw, C) flattening.
    patches = jnp.concatenate(
        [padded[:, i : i + out_h, j : j + out_w, :] for i in range(kh) for j in range(kw)],
        axis=-1,
    )
    y = jnp.dot(patches.reshape(-1, kh * kw * c), rhs.reshape(kh * kw * c, -1), precision=precision)
    return y.reshape(b, out_h, out_w, -1)


def conv2d(
    features: int,
    kernel: int,
    *,
    stride: int = 1,
    padding: int | None = None,
    bias: bool = False,
    groups: int = 1,
    kernel_init: Callable = KAIMING_FAN_OUT,
    name: str,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
) -> nn.Conv:
    """`torch.nn.Conv2d(..., kernel, stride, padding, groups, bias)`; padding defaults to
    `kernel // 2` on every side."""
    pad = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((pad, pad), (pad, pad)),
        feature_group_count=groups,
        use_bias=bias,
        kernel_init=kernel_init,
        dtype=dtype,
        param_dtype=param_dtype,
        conv_general_dilated=conv_general_dilated,
        name=name,
    )


def batch_norm(
    train: bool,
    *,
    name: str | None,
    dtype=jnp.float32,
    param_dtype=jnp.float32,
    fast_variance: bool = True,
):
    """`torch.nn.BatchNorm2d` (epsilon 1e-5, momentum 0.1 in torch's convention).

    `name=None` takes Flax's automatic name (`BatchNorm_N`). `fast_variance=False` computes
    the batch variance as mean((x − mean)²), as torch does, instead of E[x²] − E[x]², which
    loses precision in float32 when |mean| ≫ std."""
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        param_dtype=param_dtype,
        use_fast_variance=fast_variance,
        name=name,
    )


def layer_norm(*, name: str, epsilon: float = 1e-6, dtype=jnp.float32, param_dtype=jnp.float32):
    """`torch.nn.LayerNorm` over the last (channel) axis."""
    return nn.LayerNorm(epsilon=epsilon, dtype=dtype, param_dtype=param_dtype, name=name)


def max_pool(x: jax.Array, *, window: int = 3, stride: int = 2, padding: int = 1) -> jax.Array:
    """Max-pool padded with −inf, as `torch.nn.MaxPool2d(window, stride, padding)`.

    Args:
      x: `[B, H, W, C]`.
      window: square window size.
      stride: stride in both spatial dimensions.
      padding: rows and columns of −inf added on every side (floor mode, as torch's default).

    Returns:
      `[B, (H + 2p − window) // stride + 1, (W + 2p − window) // stride + 1, C]`.
    """
    pad = ((padding, padding), (padding, padding))
    # Flax's max_pool pads through reduce_window with its −inf initial value.
    return nn.max_pool(x, (window, window), strides=(stride, stride), padding=pad)


def avg_pool(x: jax.Array, *, window: int = 2, stride: int = 2) -> jax.Array:
    """`torch.nn.AvgPool2d(window, stride)` without padding: `[B, H, W, C]` →
    `[B, (H − window) // stride + 1, (W − window) // stride + 1, C]`."""
    return nn.avg_pool(x, (window, window), strides=(stride, stride), padding="VALID")


def check_return_layers(family: str, requested, known) -> None:
    """Stops with one sentence on a `return_layers` name the family does not have."""
    from protojax.errors import UsageError

    unknown = [name for name in requested if name not in known]
    if unknown:
        raise UsageError(
            f"Unknown {family} layer '{unknown[0]}' in return_layers; "
            f"use names among {', '.join(known)}."
        )


def check_images(family: str, x: jax.Array) -> None:
    if x.ndim != 4:
        raise ValueError(
            f"{family} expects images [B, H, W, C] but got shape {x.shape}; "
            "add a batch axis or move channels last."
        )
