"""InfoDisent's network (Struski, Rymarczyk and Tabor, arXiv 2409.10329): a frozen backbone
whose final feature map is unmixed by an orthogonal matrix U = expm(A − Aᵀ), read channel by
channel by `mx_pool` and classified by a non-negative, bias-free linear head. The method
(`protojax.methods.infodisent`) trains A and W and keeps W ≥ 0."""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.nn import BackboneNet
from protojax.prototypes.channels import MxPoolResult, mx_pool, orthogonal_unmixing


class ChannelUnmixing(nn.Module):
    """`[B, h, w, D]` → the same map with every pixel's channel vector rotated by
    U = expm(A − Aᵀ); A (`a`, `[D, D]`) starts at 0.

    A U given in the `unmixing` collection (`u`, `[D, D]`, see `with_fixed_unmixing`) is used
    as it is: calls that hold A fixed (explanations) then compute no matrix exponential."""

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        d = feature_map.shape[-1]
        a = self.param("a", nn.initializers.zeros, (d, d), jnp.float32)
        if self.has_variable("unmixing", "u"):
            u = self.get_variable("unmixing", "u")
        else:
            u = orthogonal_unmixing(a)
        # U once per call, applied per pixel: Z_hw = U F_hw.
        return jnp.einsum(
            "bhwd,jd->bhwj", feature_map, u, precision=jax.lax.Precision.HIGHEST
        ).astype(jnp.float32)


_unmixing = jax.jit(orthogonal_unmixing)


def with_fixed_unmixing(variables: dict) -> dict:
    """`InfoDisentNet` variables with U = expm(A − Aᵀ) computed once, in the `unmixing`
    collection, for calls that do not differentiate with respect to A."""
    u = _unmixing(variables["params"]["unmix"]["a"])
    return {**variables, "unmixing": {"unmix": {"u": u}}}


class NonNegativeLinear(nn.Module):
    """`[B, D]` → `[B, K]` = v W with W (`kernel`, `[D, K]`, starting at 0) and no bias; the
    optimizer keeps W ≥ 0 (`protojax.train.optim.NonNegativeOptimizer`)."""

    features: int

    @nn.compact
    def __call__(self, values: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.zeros, (values.shape[-1], self.features), jnp.float32
        )
        return jnp.dot(values, kernel, precision=jax.lax.Precision.HIGHEST)


class Readout(NamedTuple):
    """What InfoDisent reads from a feature map.

    Attributes:
      logits: `[B, K]`.
      pooled: `mx_pool` of the unmixed map: `values [B, D]` and the (h, w) of each channel's
        maximum and minimum, `[B, D, 2]` each.
    """

    logits: jax.Array
    pooled: MxPoolResult


class InfoDisentNet(BackboneNet):
    """Frozen backbone → channel unmixing → `mx_pool` → non-negative linear head."""

    def setup(self):
        super().setup()
        self.unmix = ChannelUnmixing()
        self.head = NonNegativeLinear(self.num_classes)

    def __call__(self, images: jax.Array) -> Readout:
        return self.read(self.feature_map(images))

    def feature_map(self, images: jax.Array) -> jax.Array:
        """The frozen backbone's final map `[B, h, w, D]`, float32, in inference mode."""
        return self.backbone(images, train=False).astype(jnp.float32)

    def unmixed_of_images(self, images: jax.Array) -> jax.Array:
        """The unmixed map Z `[B, h, w, D]` of images `[B, H, W, C]`."""
        return self.unmix(self.feature_map(images))

    def read(self, feature_map: jax.Array) -> Readout:
        pooled = mx_pool(self.unmix(feature_map), return_locations=True)
        return Readout(self.head(pooled.values), pooled)
