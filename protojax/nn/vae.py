"""ProtoVAE's encoders and decoders (Gautam et al., NeurIPS 2022; the official `model.py`),
built layer for layer: mnist (also fmnist and digits at 28 px), quickdraw, svhn and cifar10.

They keep the official Conv → ReLU → BatchNorm order, the clamp of log σ² to ±18.42, the
final tanh and the initialisations. Two deliberate differences: tensors are NHWC, so the
flatten before the first encoder Dense layer and the reshape after the first decoder Dense
layer order features as (H, W, C) instead of PyTorch's (C, H, W) (a fixed permutation of those
layers' weights); and BatchNorm normalises with the biased variance in its running average too.
BatchNorm takes the batch variance in two passes, mean((x − mean)²), as PyTorch does: Flax's
default E[x²] − E[x]² loses digits in float32 after a ReLU, where the mean is large next to
the spread.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax.errors import UsageError
from protojax.nn.layers import batch_norm, conv_general_dilated

# log σ² is clamped to [log 1e-8, −log 1e-8], as in the official code.
LOGVAR_BOUND = -math.log(1e-8)

# Encoder layers: ("conv", channels, kernel, stride, padding) blocks, each Conv → ReLU → BN,
# and ("pool",) for a 2×2 average pool; then Dense(2d) → ReLU → Dense(2d).
POOL = ("pool",)
ENCODERS = {
    "mnist": (("conv", 32, 3, 1, 1), POOL, ("conv", 64, 3, 1, 1), POOL),
    "quickdraw": (
        ("conv", 32, 3, 1, 1),
        POOL,
        ("conv", 64, 3, 1, 1),
        POOL,
        ("conv", 128, 3, 1, 1),
        POOL,  # 7 → 3, the remainder dropped as AvgPool2d does
    ),
    "svhn": tuple(
        layer
        for channels in (32, 64, 128, 256)
        for layer in (("conv", channels, 3, 1, 1), ("conv", channels, 4, 2, 1))
    ),
    "cifar10": tuple(
        layer for channels in (32, 64, 128, 256) for layer in (("conv", channels, 3, 1, 1), POOL)
    ),
}


class DecoderSpec(NamedTuple):
    """Dense(d → channels·size²) → ReLU → BN1d → reshape, then one stage per
    `(channels, conv_padding)`: Conv3 → ReLU → BN → ConvTranspose4/s2/p1 → ReLU → BN."""

    channels: int
    size: int
    stages: tuple[tuple[int, int], ...]


DECODERS = {
    "mnist": DecoderSpec(64, 7, ((32, 1), (32, 1))),
    # The padding-2 conv takes 12 → 14 px, so the last ConvTranspose gives 28 px.
    "quickdraw": DecoderSpec(128, 3, ((64, 1), (32, 1), (32, 2))),
    "svhn": DecoderSpec(256, 2, ((128, 1), (64, 1), (32, 1), (32, 1))),
    "cifar10": DecoderSpec(256, 2, ((128, 1), (64, 1), (32, 1), (32, 1))),
}
IMAGE_SIZES = {"mnist": 28, "quickdraw": 28, "svhn": 32, "cifar10": 32}
ARCH_ALIASES = {"fmnist": "mnist"}


def _uniform(scale: float = 0.08):
    """U(−scale, scale), the official initialisation of most weights."""

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -scale, scale)

    return init


# torch.nn.init.kaiming_normal_(mode="fan_out", nonlinearity="relu"): N(0, 2 / fan_out).
_kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def vae_arch(name: str, image_shape: tuple[int, ...]) -> str:
    """The encoder/decoder pair of `name` (fmnist is mnist's), checked against the images."""
    arch = ARCH_ALIASES.get(name, name)
    if arch not in ENCODERS:
        raise UsageError(
            f"Unknown model.arch '{name}'; use mnist, fmnist, quickdraw, svhn or cifar10."
        )
    h, w = image_shape[:2]
    size = IMAGE_SIZES[arch]
    if (h, w) != (size, size):
        raise UsageError(
            f"model.arch={name} needs {size}×{size} images but the data gives "
            f"{h}×{w}; set data.image_size={size} or pick the arch of that size."
        )
    return arch


def _phase_taps(kernel_size: int, stride: int, padding: int) -> tuple[np.ndarray, int]:
    """For the sub-pixel form of a transposed convolution: `taps [U, stride]`, the kernel
    index applied at input offset `u − reach` for output phase r (−1 where none), and `reach`.

    Output pixel stride·m + r receives x[i]·w[k] for stride·i − padding + k = stride·m + r,
    that is k = stride·(m − i) + r + padding; with i = m + u − reach this is one tap per
    (u, r) pair.
    """
    offsets = [
        t
        for r in range(stride)
        for t in range(-kernel_size, kernel_size + 1)
        if 0 <= stride * t + r + padding < kernel_size
    ]
    reach = max(offsets)
    span = reach - min(offsets) + 1
    taps = np.full((span, stride), -1, np.int64)
    for u in range(span):
        for r in range(stride):
            k = stride * (reach - u) + r + padding
            if 0 <= k < kernel_size:
                taps[u, r] = k
    return taps, reach


class ConvTranspose2d(nn.Module):
    """PyTorch's `ConvTranspose2d(kernel, stride, padding)` for NHWC inputs, where
    kernel − 2·padding = stride (the output is exactly stride × the input, as with the
    official decoders' kernel 4, stride 2, padding 1).

    Every input pixel scatters `x[b, i, j, :] @ kernel[ki, kj]` to output position
    (i·stride − padding + ki, j·stride − padding + kj); positions outside the output are
    dropped. Computed in sub-pixel form: one stride-1 convolution of the undilated input
    produces the stride² output phases as channels, which are then interleaved. It gives the
    same values as a convolution of the stride-dilated input, whose kernel gradient is very
    slow on CPU.

    Attributes:
      features: output channels.
      kernel_size, stride, padding: as in PyTorch (square).
      dtype: compute dtype; the kernel `[k, k, C_in, C_out]` (PyTorch's weight
        `[C_in, C_out, k, k]` transposed) is stored in float32.
    """

    features: int
    kernel_size: int = 4
    stride: int = 2
    padding: int = 1
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k, s, p = self.kernel_size, self.stride, self.padding
        if k - 2 * p != s:
            raise ValueError(
                f"ConvTranspose2d supports kernel_size − 2·padding = stride, got kernel {k}, "
                f"stride {s}, padding {p}; use kernel 4, stride 2, padding 1."
            )
        b, h, w, c = x.shape
        kernel = self.param("kernel", _uniform(), (k, k, c, self.features))
        bias = self.param("bias", nn.initializers.zeros, (self.features,))
        taps, reach = _phase_taps(k, s, p)
        span = taps.shape[0]
        # [span, s, span, s, C_in, C_out]: the tap of offset (u, v) for phase (r, q).
        rows, cols = taps[:, :, None, None], taps[None, None, :, :]
        gathered = kernel[np.maximum(rows, 0), np.maximum(cols, 0)]
        gathered = jnp.where(((rows >= 0) & (cols >= 0))[..., None, None], gathered, 0.0)
        phased = gathered.transpose(0, 2, 4, 1, 3, 5).reshape(span, span, c, s * s * self.features)
        y = conv_general_dilated(
            x.astype(self.dtype),
            phased.astype(self.dtype),
            window_strides=(1, 1),
            padding=((reach, span - 1 - reach), (reach, span - 1 - reach)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y.reshape(b, h, w, s, s, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(b, h * s, w * s, self.features) + bias.astype(self.dtype)


# torch's BatchNorm defaults: momentum 0.1 (0.9 here), eps 1e-5, γ = 1, β = 0; the batch
# variance in two passes, as torch takes it.
def _batch_norm(train: bool, dtype) -> nn.BatchNorm:
    # Automatic names (BatchNorm_N), as saved runs have them; the variance as torch computes
    # it, about the mean.
    return batch_norm(train, name=None, dtype=dtype, fast_variance=False)


class Encoder(nn.Module):
    """`[B, H, W, C]` → (μ `[B, d]`, log σ² `[B, d]` clamped to ±18.42), both float32."""

    layers: tuple
    latent_dim: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool) -> tuple[jax.Array, jax.Array]:
        x = images.astype(self.dtype)
        for layer in self.layers:
            if layer == POOL:
                x = nn.avg_pool(x, (2, 2), strides=(2, 2))
                continue
            _, channels, kernel, stride, padding = layer
            x = nn.Conv(
                channels,
                (kernel, kernel),
                strides=(stride, stride),
                padding=((padding, padding), (padding, padding)),
                kernel_init=_uniform(),
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                conv_general_dilated=conv_general_dilated,
            )(x)
            x = _batch_norm(train, self.dtype)(nn.relu(x))
        x = x.reshape(x.shape[0], -1)
        dense = functools.partial(
            nn.Dense, 2 * self.latent_dim, kernel_init=_uniform(), dtype=self.dtype
        )
        hidden = nn.relu(dense()(x))
        x = dense()(hidden).astype(jnp.float32)
        mu, logvar = jnp.split(x, 2, axis=-1)
        return mu, jnp.clip(logvar, -LOGVAR_BOUND, LOGVAR_BOUND)


class Decoder(nn.Module):
    """z `[B, d]` → images `[B, H, W, out_channels]` in (−1, 1) (final tanh), float32."""

    spec: DecoderSpec
    out_channels: int
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, z: jax.Array, *, train: bool) -> jax.Array:
        spec = self.spec
        x = nn.Dense(spec.channels * spec.size**2, kernel_init=_uniform(), dtype=self.dtype)(z)
        x = _batch_norm(train, self.dtype)(nn.relu(x))
        x = x.reshape(x.shape[0], spec.size, spec.size, spec.channels)

        def conv(features: int, padding: int) -> nn.Conv:
            return nn.Conv(
                features,
                (3, 3),
                padding=((padding, padding), (padding, padding)),
                kernel_init=_kaiming_fan_out,
                bias_init=nn.initializers.zeros,
                dtype=self.dtype,
                conv_general_dilated=conv_general_dilated,
            )

        for channels, padding in spec.stages:
            x = _batch_norm(train, self.dtype)(nn.relu(conv(channels, padding)(x)))
            x = ConvTranspose2d(channels, dtype=self.dtype)(x)
            x = _batch_norm(train, self.dtype)(nn.relu(x))
        return jnp.tanh(conv(self.out_channels, 1)(x).astype(jnp.float32))
