"""ProtoVAE's network (Gautam et al., NeurIPS 2022; the official `model.py`): the encoder
(`protojax.nn.vae`), prototypes in its latent space compared by Euclidean distance, the shared
last layer (`protojax.prototypes.layer`) and the decoder. The losses and the training live with
the method (`protojax.methods.protovae`)."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.nn.vae import DECODERS, ENCODERS, Decoder, Encoder
from protojax.prototypes import layer
from protojax.prototypes.distances import l2_distances, log_similarity


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
    similarity layer, the shared last layer and the decoder. Every method takes the
    prototypes' `active [P]` flags; inactive prototypes contribute nothing to the logits."""

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
        self.last_layer = layer.LastLayer(self.num_classes, self.prototypes_per_class)

    def __call__(
        self,
        images: jax.Array,
        active: jax.Array,
        *,
        train: bool,
        noise_rng: jax.Array | None = None,
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
            self.last_layer(similarities, active),
            self.decoder(z, train=train),
        )

    def similarities(self, z: jax.Array) -> jax.Array:
        """`[B, d]` → `[B, P]`: log((‖z − p‖ + 1) / (‖z − p‖ + eps))."""
        return log_similarity(l2_distances(z, self.prototypes), eps=self.similarity_eps)

    def infer(self, images: jax.Array, active: jax.Array) -> tuple[jax.Array, ...]:
        """Inference without the decoder: (μ `[B, d]`, similarities `[B, P]`, logits `[B, K]`)."""
        mu, _ = self.encoder(images, train=False)
        similarities = self.similarities(mu)
        return mu, similarities, self.last_layer(similarities, active)

    def encode(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
        """(μ, log σ²) `[B, d]` in inference mode."""
        return self.encoder(images, train=False)

    def decode(self, z: jax.Array) -> jax.Array:
        """z `[B, d]` → images `[B, H, W, C]` in (−1, 1), in inference mode."""
        return self.decoder(z, train=False)
