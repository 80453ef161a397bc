"""ProtoPNet's network (Chen et al., NeurIPS 2019; the official `model.py`): backbone → add-on
1×1 convs ending in a sigmoid → latent map z `[B, h, w, D]` → squared L2 distance from every
latent patch to each of P = K·M class-owned prototypes → minimum over patches → similarity
log((d + 1) / (d + ε)) → the shared bias-free last layer (`protojax.prototypes.layer`).

The losses, the stages and push live with the method (`protojax.methods.protopnet`).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.nn import backbone_by_name, feature_channels
from protojax.nn.add_on import AddOnLayers, add_on_widths
from protojax.prototypes import layer
from protojax.prototypes.distances import log_similarity, min_over_patches, squared_l2_distances


class Activations(NamedTuple):
    """What the model sees in images `[B, H, W, C]`.

    Attributes:
      logits: `[B, K]`.
      similarities: `[B, P]` similarity of each prototype's nearest patch.
      similarity_maps: `[B, h, w, P]` similarity of each prototype at every latent location.
    """

    logits: jax.Array
    similarities: jax.Array
    similarity_maps: jax.Array


class ProtoPNetModule(nn.Module):
    """Images `[B, H, W, C]` → (logits `[B, K]`, min distances `[B, P]`). Every method that
    classifies takes the prototypes' `active [P]` flags; inactive prototypes contribute 0."""

    arch: str
    stem: str
    num_classes: int
    prototypes_per_class: int
    prototype_dim: int
    add_on_kind: str = "regular"
    epsilon: float = 1e-4
    incorrect_class_connection: float = -0.5
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        num_prototypes = self.num_classes * self.prototypes_per_class
        widths = add_on_widths(self.add_on_kind, feature_channels(self.arch), self.prototype_dim)
        self.backbone = backbone_by_name(self.arch, stem=self.stem, dtype=self.dtype)
        self.add_on = AddOnLayers(tuple(widths), dtype=self.dtype)
        self.prototypes = self.param(
            "prototypes", nn.initializers.uniform(1.0), (num_prototypes, self.prototype_dim)
        )
        self.last_layer = layer.LastLayer(
            self.num_classes, self.prototypes_per_class, self.incorrect_class_connection
        )

    def features(self, images: jax.Array) -> jax.Array:
        """The backbone's map `[B, h, w, c]` in inference mode (for Grad-CAM)."""
        return self.backbone(images)

    def latent(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """The add-on output z `[B, h, w, D]` float32."""
        return self.add_on(self.backbone(images, train=train))

    def latent_logits(self, images: jax.Array) -> jax.Array:
        """The add-on output before its sigmoid `[B, h, w, D]`, in inference mode."""
        return self.add_on(self.backbone(images, train=False), logits=True)

    def distance_map(self, images: jax.Array, *, train: bool = False):
        """(z `[B, h, w, D]`, squared distances `[B, h, w, P]`)."""
        latent = self.latent(images, train=train)
        return latent, squared_l2_distances(latent, self.prototypes)

    def similarity_maps(self, images: jax.Array) -> jax.Array:
        """`[B, h, w, P]` similarity of each prototype at every latent location."""
        return log_similarity(self.distance_map(images)[1], eps=self.epsilon)

    def classify(self, min_distances: jax.Array, active: jax.Array) -> jax.Array:
        """Logits `[B, K]` from min distances `[B, P]`."""
        return self.last_layer(log_similarity(min_distances, eps=self.epsilon), active)

    def head(self, feature_map: jax.Array, active: jax.Array) -> jax.Array:
        """Logits `[B, K]` from the backbone's map `[B, h, w, c]` (for Grad-CAM)."""
        latent = self.add_on(feature_map)
        distances = squared_l2_distances(latent, self.prototypes)
        return self.classify(min_over_patches(distances)[0], active)

    def activations(self, images: jax.Array, active: jax.Array) -> Activations:
        """Logits, similarities and similarity maps, in inference mode."""
        _, distances = self.distance_map(images)
        min_distances, _ = min_over_patches(distances)
        return Activations(
            self.classify(min_distances, active),
            log_similarity(min_distances, eps=self.epsilon),
            log_similarity(distances, eps=self.epsilon),
        )

    def __call__(self, images: jax.Array, active: jax.Array, *, train: bool = False):
        _, distances = self.distance_map(images, train=train)
        min_distances, _ = min_over_patches(distances)
        return self.classify(min_distances, active), min_distances
