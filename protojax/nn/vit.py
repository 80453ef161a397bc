"""Vision Transformers: torchvision's `vit_b_16` and timm's `vit_small_patch16_224` and
`vit_base_patch16_224`, one module with timm's names.

Both implementations compute the same function: a patch embedding (conv p×p/p, with bias), a
class token prepended, learned position embeddings (one for the class token and one per patch
of the 224-px grid) added, pre-norm blocks x + proj(attention(norm1(x))), x + fc2(GELU(fc1(
norm2(x)))) with fused q/k/v projections, LayerNorm epsilon 1e-6 and exact GELU, and a final
LayerNorm. The backbone returns the patch tokens after the final norm as a map `[B, H/p, W/p,
D]` (14×14 at 224 px); the class token after the final norm is the `class_token` layer.

At another image size the patch position embeddings are resampled to the new grid as timm's
`resample_abs_pos_embed` does (bicubic with antialiasing, as `torch.nn.functional.interpolate(
..., mode="bicubic", antialias=True)`); the class token's embedding is kept. Height and width
must be multiples of the patch size.

Variable names are timm's with numeric components joined by '_': `cls_token` →
`params/cls_token`, `pos_embed` → `params/pos_embed`, `patch_embed.proj.weight` →
`params/patch_embed_proj/kernel`, `blocks.0.attn.qkv.weight` → `params/blocks_0/attn/qkv/kernel`
(`attn.proj`, `norm1`, `norm2`, `mlp.fc1`, `mlp.fc2` likewise), `norm.weight` →
`params/norm/scale`. torchvision's names map onto them (see `protojax.nn.weights`):
`class_token`, `conv_proj`, `encoder.pos_embedding`, `encoder.layers.encoder_layer_{i}.ln_1`,
`self_attention.in_proj_*` (q, k, v stacked as timm's qkv), `self_attention.out_proj`, `ln_2`,
`mlp.0`, `mlp.3` and `encoder.ln`.

Named maps for `return_layers`: `block1` … `blockN`, the patch tokens after each block (before
the final norm) as `[B, h, w, D]` maps, and `class_token`, the normed class token `[B, D]`.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax.nn.layers import (
    TRUNC_NORMAL_002,
    TypedModule,
    check_images,
    check_return_layers,
    layer_norm,
)

# name -> (patch size, width D, depth, heads, MLP width), as torchvision and timm.
VIT_ARCHS: dict[str, tuple[int, int, int, int, int]] = {
    "vit_b_16": (16, 768, 12, 12, 3072),
    "vit_small_patch16_224": (16, 384, 12, 6, 1536),
    "vit_base_patch16_224": (16, 768, 12, 12, 3072),
}


def _cubic(x: np.ndarray, a: float = -0.5) -> np.ndarray:
    """Keys' cubic kernel; torch's antialiased bicubic (as PIL) uses a = −0.5."""
    x = np.abs(x)
    near = ((a + 2) * x - (a + 3)) * x * x + 1
    far = (((x - 5) * x + 8) * x - 4) * a
    return np.where(x < 1, near, np.where(x < 2, far, 0.0))


@functools.cache
def resize_matrix(size_in: int, size_out: int) -> np.ndarray:
    """`[size_out, size_in]` weights of torch's `interpolate(mode="bicubic", antialias=True,
    align_corners=False)` along one axis: each output sample is a normalised cubic-weighted
    sum over the inputs within its support, widened by the scale when downsampling."""
    scale = size_in / size_out
    support = 2.0 * max(scale, 1.0)
    stretch = 1.0 / scale if scale >= 1 else 1.0
    weights = np.zeros((size_out, size_in))
    for i in range(size_out):
        center = scale * (i + 0.5)
        lo = max(int(center - support + 0.5), 0)
        hi = min(int(center + support + 0.5), size_in)
        taps = _cubic((np.arange(lo, hi) - center + 0.5) * stretch)
        weights[i, lo:hi] = taps / taps.sum()
    return weights


def resample_position_embedding(grid: jax.Array, size: tuple[int, int]) -> jax.Array:
    """`[g_h, g_w, D]` patch position embeddings → `[size[0], size[1], D]` (see the module doc)."""
    if tuple(grid.shape[:2]) == tuple(size):
        return grid
    rows = jnp.asarray(resize_matrix(grid.shape[0], size[0]), jnp.float32)
    cols = jnp.asarray(resize_matrix(grid.shape[1], size[1]), jnp.float32)
    out = jnp.einsum("oh,pw,hwd->opd", rows, cols, grid.astype(jnp.float32), precision="highest")
    return out.astype(grid.dtype)


class Attention(TypedModule):
    """Multi-head self-attention with a fused `qkv` projection: `[B, N, D]` → `[B, N, D]`."""

    num_heads: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        batch, tokens, width = x.shape
        head = width // self.num_heads
        kw = self.dtypes
        qkv = nn.Dense(3 * width, kernel_init=TRUNC_NORMAL_002, name="qkv", **kw)(x)
        q, k, v = qkv.reshape(batch, tokens, 3, self.num_heads, head).transpose(2, 0, 3, 1, 4)
        logits = jnp.einsum("bhqd,bhkd->bhqk", q, k) / math.sqrt(head)
        weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)
        out = jnp.einsum("bhqk,bhkd->bqhd", weights, v).reshape(batch, tokens, width)
        return nn.Dense(width, kernel_init=TRUNC_NORMAL_002, name="proj", **kw)(out)


class Mlp(TypedModule):
    hidden: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = self.dtypes
        y = nn.Dense(self.hidden, kernel_init=TRUNC_NORMAL_002, name="fc1", **kw)(x)
        y = nn.gelu(y, approximate=False)
        return nn.Dense(x.shape[-1], kernel_init=TRUNC_NORMAL_002, name="fc2", **kw)(y)


class Block(TypedModule):
    """A pre-norm transformer block: `[B, N, D]` → `[B, N, D]`."""

    num_heads: int
    mlp_dim: int

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        kw = self.dtypes
        x = x + Attention(self.num_heads, name="attn", **kw)(layer_norm(name="norm1", **kw)(x))
        return x + Mlp(self.mlp_dim, name="mlp", **kw)(layer_norm(name="norm2", **kw)(x))


class VisionTransformer(TypedModule):
    """A ViT trunk: `[B, H, W, C]` → patch tokens after the final norm `[B, H/p, W/p, D]`.

    Attributes:
      patch_size, width, depth, num_heads, mlp_dim: the architecture (see `VIT_ARCHS`).
      image_size: the side whose patch grid the position embeddings cover (224).
      return_layers: names among `block1` … `block{depth}` and `class_token`; with any, the
        call returns `(final map, {name: map or [B, D]})`.
    """

    patch_size: int
    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    image_size: int = 224
    return_layers: Sequence[str] = ()

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool = False):
        del train  # no batch statistics; dropout rates are 0 as in the pretrained models
        names = (*(f"block{i}" for i in range(1, self.depth + 1)), "class_token")
        check_return_layers("ViT", self.return_layers, names)
        check_images("ViT", x)
        p = self.patch_size
        if x.shape[1] % p or x.shape[2] % p:
            raise ValueError(
                f"ViT with patch size {p} needs image sides that are multiples of {p} but got "
                f"{x.shape[1]}×{x.shape[2]}; resize or crop the images."
            )
        kw = self.dtypes
        x = x.astype(self.dtype)
        x = nn.Conv(
            self.width,
            (p, p),
            strides=(p, p),
            padding="VALID",
            kernel_init=nn.initializers.lecun_normal(),
            name="patch_embed_proj",
            **kw,
        )(x)
        batch, h, w, _ = x.shape
        grid = self.image_size // p
        cls_token = self.param(
            "cls_token", nn.initializers.normal(1e-6), (1, 1, self.width), self.param_dtype
        )
        pos_embed = self.param(
            "pos_embed", TRUNC_NORMAL_002, (1, 1 + grid * grid, self.width), self.param_dtype
        )
        patches = resample_position_embedding(
            pos_embed[0, 1:].reshape(grid, grid, self.width), (h, w)
        )
        pos = jnp.concatenate([pos_embed[0, :1], patches.reshape(h * w, self.width)], axis=0)
        tokens = jnp.concatenate(
            [jnp.broadcast_to(cls_token, (batch, 1, self.width)), x.reshape(batch, h * w, -1)],
            axis=1,
        ).astype(self.dtype)
        tokens = tokens + pos[None].astype(self.dtype)
        maps = {}
        for index in range(self.depth):
            tokens = Block(self.num_heads, self.mlp_dim, name=f"blocks_{index}", **kw)(tokens)
            maps[f"block{index + 1}"] = tokens[:, 1:].reshape(batch, h, w, self.width)
        tokens = layer_norm(name="norm", **kw)(tokens)
        maps["class_token"] = tokens[:, 0]
        out = tokens[:, 1:].reshape(batch, h, w, self.width)
        if self.return_layers:
            return out, {name: maps[name] for name in self.return_layers}
        return out
