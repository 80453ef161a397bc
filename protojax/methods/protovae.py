"""ProtoVAE (Gautam et al., NeurIPS 2022): a VAE whose latent space holds class prototypes.

The encoder maps an image to (μ, log σ²); z = μ is compared with M prototypes per class by
Euclidean (not squared) distance, turned into similarities log((d + 1) / (d + 1e-4)), and a
linear layer without bias classifies the similarities. The decoder reconstructs the image from
z and shows every prototype as an image. The loss is

    L = w_ce·CE + w_rec·MSE(decoder(z), x) + w_kl·KL-to-class-prototypes + w_orth·orthonormality

with all weights 1 (`settings.py` of SrishtiGautam/ProtoVAE). Encoders and decoders are built
layer for layer as in the official code (`model.arch`: mnist and fmnist, quickdraw, svhn,
cifar10), including the Conv → ReLU → BatchNorm order, the clamp of log σ² to ±18.42, the final
tanh and the initialisations. Two deliberate differences: tensors are NHWC, so the flatten
before the first encoder Dense layer and the reshape after the first decoder Dense layer order
features as (H, W, C) instead of PyTorch's (C, H, W) (a fixed permutation of those layers'
weights); and BatchNorm normalises with the biased variance in its running average too.
BatchNorm takes the batch variance in two passes, mean((x − mean)²), as PyTorch does: Flax's
default E[x²] − E[x]² loses digits in float32 after a ReLU, where the mean is large next to the
spread.

The orthonormality term follows the latest official `model.py` (since 3430af8, 2023-03-14), the
M×M form ‖P̃_k P̃_kᵀ − I_M‖_F; the code released with the paper (fa1d9e1, 2022-10-11) used the
d×d form ‖P̃_kᵀ P̃_k − I_d‖_F, which `model.orthonormality=dimensions` selects. It is logged at
weight 0 too, as the official Pantypes code logs it.

The official code never samples the latent (`if(~is_train): z = mu` is always true,
`model.py:297-299`), so z = μ here by default, which reproduces the published numbers;
`model.sample_latent=True` gives the intended reparameterisation z = μ + σ·ε during training.

Pantypes (`protojax.methods.pantypes`) is this method with the volumetric diversity term: the
module, the losses and the figures are shared; `model.loss_weights` chooses the terms.

Every departure from the official code is listed in docs/fidelity.md.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict, compute_dtype
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.methods.common import accuracy, class_logit, cross_entropy, masked_mean
from protojax.prototypes.distances import l2_distances, log_similarity, squared_l2_distances
from protojax.prototypes.diversity import (
    ORTHONORMALITY_FORMS,
    inverse_volume_loss,
    orthonormality_loss,
    prototype_log_volume,
)
from protojax.train import optim
from protojax.train.protocol import Method, Phase

HIGHEST = jax.lax.Precision.HIGHEST
# log σ² is clamped to [log 1e-8, −log 1e-8], as in the official code.
LOGVAR_BOUND = -math.log(1e-8)
# ProtoVAE's relevance seed ε in 1 / ((μ − p)² + ε) (the official `prp.py`).
PRP_EPS = 1e-4
# Logged even at weight 0, as the official Pantypes code logs orthonormality (its `model.py`);
# finite for any finite prototypes. The inverse volume can overflow float32 for nearly singular
# prototypes, which would stop a run over a diagnostic, so it is computed only when weighted.
LOGGED_AT_WEIGHT_0 = ("orthonormality",)

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


def _class_connections(prototypes_per_class: int, *, incorrect: float = -0.5):
    """Last-layer init `[P, K]`: 1 from a prototype to its class, `incorrect` elsewhere."""

    def init(key, shape, dtype=jnp.float32):
        del key
        num_prototypes, num_classes = shape
        owner = jnp.arange(num_prototypes) // prototypes_per_class
        own = owner[:, None] == jnp.arange(num_classes)[None, :]
        return jnp.where(own, 1.0, incorrect).astype(dtype)

    return init


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
        y = jax.lax.conv_general_dilated(
            x.astype(self.dtype),
            phased.astype(self.dtype),
            window_strides=(1, 1),
            padding=((reach, span - 1 - reach), (reach, span - 1 - reach)),
            dimension_numbers=("NHWC", "HWIO", "NHWC"),
        )
        y = y.reshape(b, h, w, s, s, self.features).transpose(0, 1, 3, 2, 4, 5)
        return y.reshape(b, h * s, w * s, self.features) + bias.astype(self.dtype)


def _batch_norm(train: bool, dtype) -> nn.BatchNorm:
    # torch's BatchNorm defaults: momentum 0.1 (0.9 here), eps 1e-5, γ = 1, β = 0.
    return nn.BatchNorm(
        use_running_average=not train,
        momentum=0.9,
        epsilon=1e-5,
        dtype=dtype,
        use_fast_variance=False,
    )


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
            )

        for channels, padding in spec.stages:
            x = _batch_norm(train, self.dtype)(nn.relu(conv(channels, padding)(x)))
            x = ConvTranspose2d(channels, dtype=self.dtype)(x)
            x = _batch_norm(train, self.dtype)(nn.relu(x))
        return jnp.tanh(conv(self.out_channels, 1)(x).astype(jnp.float32))


class Outputs(NamedTuple):
    """What one forward pass gives: μ, log σ², z `[B, d]`; similarities `[B, P]`; logits
    `[B, K]`; reconstruction `[B, H, W, C]` in (−1, 1)."""

    mu: jax.Array
    logvar: jax.Array
    z: jax.Array
    similarities: jax.Array
    logits: jax.Array
    reconstruction: jax.Array


class ProtoVAENet(nn.Module):
    """Encoder, prototypes `[P, d]` ~ N(0, 1) (prototype j belongs to class j // M), the
    similarity layer, the last layer `[P, K]` (no bias; 1 to the own class, −0.5 elsewhere)
    and the decoder. The `prototype_state` collection holds `prototype_class [P]` and
    `active [P]`; inactive prototypes contribute nothing to the logits."""

    arch: str
    latent_dim: int
    num_classes: int
    prototypes_per_class: int
    image_channels: int
    similarity_eps: float = 1e-4
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        num_prototypes = self.num_classes * self.prototypes_per_class
        self.encoder = Encoder(ENCODERS[self.arch], self.latent_dim, self.dtype)
        self.decoder = Decoder(DECODERS[self.arch], self.image_channels, self.dtype)
        self.prototypes = self.param(
            "prototypes", nn.initializers.normal(1.0), (num_prototypes, self.latent_dim)
        )
        self.last_layer = self.param(
            "last_layer",
            _class_connections(self.prototypes_per_class),
            (num_prototypes, self.num_classes),
        )
        self.prototype_class = self.variable(
            "prototype_state",
            "prototype_class",
            lambda: (jnp.arange(num_prototypes) // self.prototypes_per_class).astype(jnp.int32),
        )
        self.active = self.variable(
            "prototype_state", "active", lambda: jnp.ones((num_prototypes,), bool)
        )

    def __call__(
        self, images: jax.Array, *, train: bool, noise_rng: jax.Array | None = None
    ) -> Outputs:
        """`images [B, H, W, C]`; `noise_rng` samples z = μ + σ·ε, otherwise z = μ."""
        mu, logvar = self.encoder(images, train=train)
        z = mu
        if noise_rng is not None:
            z = mu + jnp.exp(0.5 * logvar) * jax.random.normal(noise_rng, mu.shape)
        similarities = self.similarities(z)
        return Outputs(
            mu,
            logvar,
            z,
            similarities,
            self.classify(similarities),
            self.decoder(z, train=train),
        )

    def similarities(self, z: jax.Array) -> jax.Array:
        """`[B, d]` → `[B, P]`: log((‖z − p‖ + 1) / (‖z − p‖ + eps))."""
        return log_similarity(l2_distances(z, self.prototypes), eps=self.similarity_eps)

    def classify(self, similarities: jax.Array) -> jax.Array:
        """`[B, P]` → logits `[B, K]`; inactive prototypes are left out."""
        kept = jnp.where(self.active.value[None, :], similarities, 0.0)
        return jnp.dot(kept, self.last_layer, precision=HIGHEST)

    def infer(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """Inference without the decoder: (μ `[B, d]`, similarities `[B, P]`, logits `[B, K]`)."""
        mu, _ = self.encoder(images, train=False)
        similarities = self.similarities(mu)
        return mu, similarities, self.classify(similarities)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) `[B, d]` in inference mode."""
        return self.encoder(images, train=False)

    def decode(self, z: jax.Array) -> jax.Array:
        """z `[B, d]` → images `[B, H, W, C]` in (−1, 1), in inference mode."""
        return self.decoder(z, train=False)


def kl_to_class_prototypes(
    mu: jax.Array,
    logvar: jax.Array,
    prototypes: jax.Array,
    similarities: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    *,
    active: jax.Array | None = None,
) -> jax.Array:
    """ProtoVAE's KL between each posterior and the prototypes of its true class.

    For sample b of class c and prototype j of class c,
    KL_bj = mean over the d dimensions of KL(N(μ_b, diag σ_b²) ‖ N(p_j, I))
          = ½·mean_d(σ² + (μ − p_j)² − 1 − log σ²)
    (a mean, not a sum, over dimensions), and the sample's loss is the similarity-weighted
    average Σ_j s_bj·KL_bj / Σ_j s_bj over the class's (active) prototypes. Gradients flow
    through the similarities too, as in the official code.

    Args:
      mu, logvar: `[B, d]` posterior mean and log-variance.
      prototypes: `[P, d]`.
      similarities: `[B, P]` positive similarities (the weights).
      labels: `[B]` int true classes.
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; inactive prototypes are left out.

    Returns:
      `[B]` float32 per-sample KL; average it over the valid rows.
    """
    if mu.ndim != 2 or logvar.shape != mu.shape:
        raise ValueError(
            f"mu and logvar must both be [B, d], got {mu.shape} and {logvar.shape}; flatten "
            "the latent first."
        )
    b, d = mu.shape
    p = prototypes.shape[0]
    if prototypes.shape != (p, d) or similarities.shape != (b, p):
        raise ValueError(
            f"prototypes must be [P, d] and similarities [B, P] with B={b}, d={d}; got "
            f"{prototypes.shape} and {similarities.shape}."
        )
    if labels.shape != (b,) or prototype_class.shape != (p,):
        raise ValueError(
            f"labels must be [B]={b} and prototype_class [P]={p}, got {labels.shape} and "
            f"{prototype_class.shape}."
        )
    logvar = logvar.astype(jnp.float32)
    # Σ_d (μ − p)² from one matmul; the σ terms do not depend on the prototype.
    spread = jnp.mean(jnp.exp(logvar) - 1.0 - logvar, axis=-1)  # [B]
    kl = 0.5 * (spread[:, None] + squared_l2_distances(mu, prototypes) / d)  # [B, P]
    mask = prototype_class[None, :] == labels[:, None]
    if active is not None:
        mask = mask & active[None, :]
    weights = jnp.where(mask, similarities.astype(jnp.float32), 0.0)
    # A class without active prototypes contributes 0 rather than 0 / 0.
    return jnp.sum(weights * kl, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1e-30)


def reconstruction_error(reconstruction: jax.Array, images: jax.Array) -> jax.Array:
    """Per-sample mean squared error over pixels and channels, `[B, H, W, C]` → `[B]`."""
    diff = reconstruction.astype(jnp.float32) - images.astype(jnp.float32)
    return jnp.mean(diff * diff, axis=(1, 2, 3))


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            # mnist (also fmnist and digits at 28 px), quickdraw (28 px), svhn or cifar10
            # (32 px): the official encoder/decoder pair.
            "arch": "mnist",
            "latent_dim": 256,
            "prototypes_per_class": 5,
            "similarity_eps": 1e-4,
            # False: z = μ, as the official code behaves; True: z = μ + σ·ε in training.
            "sample_latent": False,
            # A term of weight 0 leaves the loss; orthonormality is still logged.
            "loss_weights": {
                "cross_entropy": 1.0,
                "reconstruction": 1.0,
                "kl": 1.0,
                "orthonormality": 1.0,
                "inverse_volume": 0.0,
            },
            # Pantypes' c in 1/√det(c·P_k P_kᵀ).
            "volume_scale": 1.0,
            # prototypes: ‖P̃P̃ᵀ − I_M‖ as the latest official model.py; dimensions:
            # ‖P̃ᵀP̃ − I_d‖ as the code released with the paper (fa1d9e1).
            "orthonormality": "prototypes",
        }
    )


def default_optim_config() -> ConfigDict:
    # One Adam for encoder, prototypes, decoder and last layer; no decay, no schedule.
    return ConfigDict({"lr": 1e-3})


class ProtoVAE(Method):
    """ProtoVAE under the method protocol (see the module docstring)."""

    name = "protovae"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        model = config.model
        arch = ARCH_ALIASES.get(model.arch, model.arch)
        if arch not in ENCODERS:
            raise UsageError(
                f"Unknown model.arch '{model.arch}'; use mnist, fmnist, quickdraw, svhn or cifar10."
            )
        h, w, c = dataset.image_shape
        size = IMAGE_SIZES[arch]
        if (h, w) != (size, size):
            raise UsageError(
                f"model.arch={model.arch} needs {size}×{size} images but the data gives "
                f"{h}×{w}; set data.image_size={size} or pick the arch of that size."
            )
        unknown = set(model.loss_weights) - set(default_model_config().loss_weights)
        if unknown:
            raise UsageError(f"Unknown model.loss_weights {sorted(unknown)}.")
        if model.prototypes_per_class > model.latent_dim:
            raise UsageError(
                f"model.prototypes_per_class={model.prototypes_per_class} prototypes span at "
                f"most model.latent_dim={model.latent_dim} dimensions, so their volume is 0; "
                "use at most latent_dim prototypes per class."
            )
        self.num_classes = dataset.num_classes
        self.prototypes_per_class = model.prototypes_per_class
        self.loss_weights = {k: float(v) for k, v in model.loss_weights.items() if v}
        self.volume_scale = model.volume_scale
        if model.orthonormality not in ORTHONORMALITY_FORMS:
            raise UsageError(
                f"Unknown model.orthonormality '{model.orthonormality}'; use one of "
                f"{', '.join(ORTHONORMALITY_FORMS)}."
            )
        self.orthonormality = model.orthonormality
        self.sample_latent = model.sample_latent
        self.normalization = config.data.normalization
        self.net = ProtoVAENet(
            arch,
            model.latent_dim,
            dataset.num_classes,
            model.prototypes_per_class,
            c,
            model.similarity_eps,
            compute_dtype(config),
        )

    # --- the protocol ------------------------------------------------------------------
    def init(self, rng, batch):
        return dict(self.net.init({"params": rng}, jnp.asarray(batch["image"]), train=False))

    def grouped(self, variables) -> tuple[jax.Array, jax.Array]:
        """Prototypes `[K, M, d]` and their `active` flags `[K, M]`, grouped by class."""
        k, m = self.num_classes, self.prototypes_per_class
        prototypes = variables["params"]["prototypes"].reshape(k, m, -1)
        return prototypes, variables["prototype_state"]["active"].reshape(k, m)

    def loss_terms(self, params, state, batch, rng, phase):
        """(terms, outputs, new_state): every weighted loss term as a scalar, and the
        `LOGGED_AT_WEIGHT_0` terms whatever their weight."""
        variables = {"params": params, **state}
        outputs, updates = self.net.apply(
            variables,
            batch["image"],
            train=phase.update_batch_stats,
            noise_rng=rng if self.sample_latent else None,
            mutable=["batch_stats"],
        )
        labels, valid = batch["label"], batch["valid"]
        prototype_state = state["prototype_state"]
        terms = {
            "cross_entropy": cross_entropy(outputs.logits, labels, valid),
            "reconstruction": masked_mean(
                reconstruction_error(outputs.reconstruction, batch["image"]), valid
            ),
            "kl": masked_mean(
                kl_to_class_prototypes(
                    outputs.mu,
                    outputs.logvar,
                    params["prototypes"],
                    outputs.similarities,
                    labels,
                    prototype_state["prototype_class"],
                    active=prototype_state["active"],
                ),
                valid,
            ),
        }
        grouped, active = self.grouped(variables)
        terms["orthonormality"] = orthonormality_loss(
            grouped, active=active, form=self.orthonormality
        )
        if "inverse_volume" in self.loss_weights:
            terms["inverse_volume"] = inverse_volume_loss(
                grouped, active=active, scale=self.volume_scale
            )
        kept = {*self.loss_weights, *LOGGED_AT_WEIGHT_0}
        terms = {name: value for name, value in terms.items() if name in kept}
        return terms, outputs, {**state, **updates}

    def loss(self, params, state, batch, rng, phase):
        terms, outputs, new_state = self.loss_terms(params, state, batch, rng, phase)
        total = sum(weight * terms[name] for name, weight in self.loss_weights.items())
        metrics = {
            "loss": total,
            **terms,
            "accuracy": accuracy(outputs.logits, batch["label"], batch["valid"]),
        }
        return total, (metrics, new_state)

    def mask_updates(self, updates, state):
        """Freezes inactive prototypes and their last-layer rows (Adam's moments would
        otherwise keep moving them after elimination)."""
        active = state["prototype_state"]["active"]
        return {
            **updates,
            "prototypes": jnp.where(active[:, None], updates["prototypes"], 0.0),
            "last_layer": jnp.where(active[:, None], updates["last_layer"], 0.0),
        }

    def predict(self, variables, images):
        return self.net.apply(variables, images, method=ProtoVAENet.infer)[2]

    def embed(self, variables, images):
        """μ `[B, d]`, the latent that classifies (z = μ at inference)."""
        return self.net.apply(variables, images, method=ProtoVAENet.encode)[0]

    def phases(self, config):
        adam = optim.adam(config.optim.lr)
        return [Phase("train", config.train.epochs, "adam", ((".*", adam),))]

    def targets(self, variables):
        """Score functions `fn(images [B,H,W,C], targets [B]) -> [B]`:

        - `class_logit`: the logit of class `targets`;
        - `prototype_similarity`: the similarity log((d + 1)/(d + eps)) to prototype `targets`;
        - `latent_similarity`: Σ_d 1/((μ_d − p_d)² + 1e-4) for prototype `targets`, the
          per-dimension latent similarity that seeds ProtoVAE's PRP explanations.
        """
        return {
            "class_logit": jax.tree_util.Partial(self._class_logit, variables),
            "prototype_similarity": jax.tree_util.Partial(self._prototype_similarity, variables),
            "latent_similarity": jax.tree_util.Partial(self._latent_similarity, variables),
        }

    def _class_logit(self, variables, images, classes):
        return class_logit(self.predict, variables, images, classes)

    def _prototype_similarity(self, variables, images, prototypes):
        similarities = self.net.apply(variables, images, method=ProtoVAENet.infer)[1]
        picks = prototypes[:, None].astype(jnp.int32)
        return jnp.take_along_axis(similarities, picks, axis=1)[:, 0]

    def _latent_similarity(self, variables, images, prototypes):
        mu = self.embed(variables, images)
        chosen = variables["params"]["prototypes"][prototypes.astype(jnp.int32)]  # [B, d]
        return jnp.sum(1.0 / ((mu - chosen) ** 2 + PRP_EPS), axis=-1)

    # --- summary and figures --------------------------------------------------------------
    def log_volume(self, variables) -> float:
        """`prototype_log_volume` of the active prototypes: mean over classes of
        ½·logdet(P_k P_kᵀ), uncentred."""
        grouped, active = self.grouped(variables)
        return float(prototype_log_volume(grouped, active=active))

    def summarize(self, variables, ctx):
        return {"prototype_log_volume": self.log_volume(variables)}

    @functools.cached_property
    def _decode(self):
        return jax.jit(lambda variables, z: self.net.apply(variables, z, method=ProtoVAENet.decode))

    @functools.cached_property
    def _reconstruct(self):
        return jax.jit(
            lambda variables, images: self.net.apply(variables, images, train=False).reconstruction
        )

    @functools.cached_property
    def _embed(self):
        return jax.jit(self.embed)

    def _display(self, images: np.ndarray) -> np.ndarray:
        from protojax.data.pipeline import denormalize

        return np.clip(denormalize(np.asarray(images, np.float32), self.normalization), 0, 1)

    def figures(self, variables, ctx):
        return [
            self.prototype_figure(variables, ctx),
            self.reconstruction_figure(variables, ctx),
            self.latent_figure(variables, ctx),
        ]

    def prototype_figure(self, variables, ctx):
        """Decoded prototypes, one row per class; eliminated ones are crossed out."""
        plt = _pyplot()
        decoded = self._display(self._decode(variables, variables["params"]["prototypes"]))
        active = np.asarray(variables["prototype_state"]["active"])
        k, m = self.num_classes, self.prototypes_per_class
        fig, axes = plt.subplots(k, m, figsize=(1.1 * m + 1.2, 1.1 * k), squeeze=False)
        for j, ax in enumerate(axes.ravel()):
            _show(ax, decoded[j])
            if not active[j]:
                ax.plot([0, 1], [0, 1], "r-", [0, 1], [1, 0], "r-", transform=ax.transAxes, lw=1)
            if j % m == 0:
                ax.set_ylabel(ctx.dataset.class_names[j // m], rotation=0, ha="right", va="center")
        fig.suptitle(f"{self.name}: decoded prototypes (rows: classes)")
        fig.tight_layout()
        return ctx.save_figure(fig, "prototypes.png")

    def reconstruction_figure(self, variables, ctx, *, per_class: int = 2):
        """`per_class` test images of each of the first ten classes (top) above their
        reconstructions."""
        plt = _pyplot()
        labels = ctx.dataset.split("test").labels
        chosen = np.concatenate(
            [np.flatnonzero(labels == c)[:per_class] for c in range(min(self.num_classes, 10))]
        )
        batch = next(
            iter(ctx.ordered_batches("test", batch_size=_padded(len(chosen), ctx), indices=chosen))
        )
        images = ctx.host(batch["image"])[: len(chosen)]
        rebuilt = ctx.host(self._reconstruct(variables, batch["image"]))[: len(chosen)]
        fig, axes = plt.subplots(2, len(chosen), figsize=(0.9 * len(chosen), 2.2), squeeze=False)
        for i in range(len(chosen)):
            _show(axes[0, i], self._display(images[i]))
            _show(axes[1, i], self._display(rebuilt[i]))
        axes[0, 0].set_ylabel("input", rotation=0, ha="right", va="center")
        axes[1, 0].set_ylabel("decoded", rotation=0, ha="right", va="center")
        fig.suptitle("Test images and their reconstructions")
        fig.tight_layout()
        return ctx.save_figure(fig, "reconstructions.png")

    def latent_figure(self, variables, ctx, *, max_points: int = 5000):
        """2-D PCA of test latents μ (at most `max_points`), prototypes as stars."""
        plt = _pyplot()
        test = ctx.dataset.split("test")
        indices = np.arange(min(len(test), max_points))
        latents, labels = [], []
        for batch in ctx.ordered_batches("test", indices=indices):
            valid = ctx.host(batch["valid"])
            latents.append(ctx.host(self._embed(variables, batch["image"]))[valid])
            labels.append(ctx.host(batch["label"])[valid])
        latents, labels = np.concatenate(latents), np.concatenate(labels)
        prototypes = np.asarray(variables["params"]["prototypes"])
        active = np.asarray(variables["prototype_state"]["active"])
        owner = np.asarray(variables["prototype_state"]["prototype_class"])
        mean = latents.mean(axis=0)
        _, _, vt = np.linalg.svd(latents - mean, full_matrices=False)
        to_2d = vt[:2].T
        points, corners = (latents - mean) @ to_2d, (prototypes - mean) @ to_2d
        colours = plt.get_cmap("tab10" if self.num_classes <= 10 else "tab20")
        fig, ax = plt.subplots(figsize=(6.4, 5.2))
        for c in range(self.num_classes):
            colour = colours(c % colours.N)
            here = labels == c
            ax.scatter(
                *points[here].T, s=6, alpha=0.35, color=colour, label=ctx.dataset.class_names[c]
            )
            mine = (owner == c) & active
            ax.scatter(
                *corners[mine].T,
                s=150,
                marker="*",
                color=colour,
                edgecolors="black",
                linewidths=0.8,
                zorder=3,
            )
        if (~active).any():
            ax.scatter(
                *corners[~active].T, s=60, marker="x", color="0.4", zorder=3, label="eliminated"
            )
        ax.set(
            xlabel="PC 1",
            ylabel="PC 2",
            title=f"{self.name}: test latents μ (dots) and prototypes (stars), PCA",
        )
        ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
        fig.tight_layout()
        return ctx.save_figure(fig, "latent_pca.png")


def _pyplot():
    """matplotlib.pyplot with the file-only Agg backend (imported lazily: the model code
    runs without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _padded(n: int, ctx) -> int:
    """The smallest batch ≥ n that divides by the mesh's devices."""
    devices = ctx.mesh.devices.size
    return -(-n // devices) * devices


def _show(ax, image: np.ndarray) -> None:
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def build(config: ConfigDict, dataset: Dataset) -> ProtoVAE:
    return ProtoVAE(config, dataset)


__all__ = [
    "ConvTranspose2d",
    "Decoder",
    "Encoder",
    "ProtoVAE",
    "ProtoVAENet",
    "build",
    "kl_to_class_prototypes",
    "orthonormality_loss",
    "reconstruction_error",
]
