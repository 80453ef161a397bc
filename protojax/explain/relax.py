"""RELAX (Wickstrøm et al. 2023): label-free explanations of representations, with uncertainty.

Formulas and choices follow the official code, Wickstrom/RELAX
(`src/relax_xai/relax.py`, `masking_functions.py`).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.common import (
    as_pytree_callable,
    check_batch_size,
    check_images,
    check_mask_options,
    check_masks,
    crop_upsampled,
    fold_chunks,
    image_size_pair,
    linear_interpolation_matrix,
    random_grids,
    weighted_mask_sum,
)

# The official code starts its running sum of weights at 1e-10 to avoid division by zero.
_WEIGHT_EPS = 1e-10
# torch.nn.CosineSimilarity's default eps.
_COSINE_EPS = 1e-8


class RelaxResult(NamedTuple):
    """RELAX importance R̄ `[B, H, W]` and its uncertainty U `[B, H, W]`."""

    importance: jax.Array
    uncertainty: jax.Array


def relax_masks(
    rng: jax.Array,
    num_masks: int,
    image_size: int | tuple[int, int],
    *,
    grid: int = 7,
    p_keep: float = 0.5,
) -> jax.Array:
    """Smooth random masks as the official RELAX code (`mask_generator`) builds them.

    For each mask: a binary `grid × grid` array with P(1) = `p_keep` (1 keeps the pixel) is
    upsampled bilinearly to `H × W` (PyTorch's `align_corners=False`: half-pixel centres,
    edge values held), reflect-padded by `grid // 2` pixels on every side (numpy's and
    PyTorch's 'reflect'), and cropped back to `H × W` at a random shift of 0 … grid − 1 pixels
    per axis. Unlike RISE, the shift is in pixels, not cells.

    Args:
      rng: a PRNG key.
      num_masks: N.
      image_size: `H` or `(H, W)`; each side must exceed `grid // 2`.
      grid: the number of coarse cells per side.
      p_keep: the probability that a coarse cell is kept (the official `probablity_of_drop`).

    Returns:
      `[N, H, W]` float32 masks in [0, 1].
    """
    size = image_size_pair(image_size)
    check_mask_options(num_masks, grid, p_keep)
    if min(size) <= grid // 2:
        raise ValueError(
            f"image_size {size} must exceed grid // 2 = {grid // 2} on each side for the "
            "reflect padding; use a smaller grid."
        )
    return _relax_masks(rng, p_keep, num_masks=int(num_masks), image_size=size, grid=int(grid))


def _reflect_padded_matrix(grid: int, size: int) -> np.ndarray:
    """Rows of the `size`-pixel upsampling matrix, reflect-padded by grid // 2: `[size + 2p, g]`."""
    pad = grid // 2
    upsample = linear_interpolation_matrix(grid, size, edge="clamp")
    # numpy's 'reflect' padding: row -1 repeats row 1, row `size` repeats row size - 2.
    padded_index = np.abs(np.arange(-pad, size + pad))
    padded_index = np.where(padded_index >= size, 2 * (size - 1) - padded_index, padded_index)
    return upsample[padded_index]


@partial(jax.jit, static_argnames=("num_masks", "image_size", "grid"))
def _relax_masks(rng, p_keep, *, num_masks, image_size, grid):
    cells, shift_y, shift_x = random_grids(rng, num_masks, grid, p_keep, (grid, grid))
    return relax_masks_from_grid(cells, shift_y, shift_x, image_size)


def relax_masks_from_grid(
    cells: jax.Array, shift_y: jax.Array, shift_x: jax.Array, image_size: tuple[int, int]
) -> jax.Array:
    """RELAX's deterministic part: upsample `[N, g, g]` grids, pad and crop at `[N]` shifts."""
    grid = cells.shape[-1]
    h, w = image_size
    rows = _reflect_padded_matrix(grid, h)
    cols = _reflect_padded_matrix(grid, w)
    return crop_upsampled(cells, rows, cols, shift_y, shift_x, (h, w))


def relax(
    embed_fn: Callable[[jax.Array], jax.Array],
    images: jax.Array,
    masks: jax.Array,
    *,
    batch_size: int | None = None,
    normalize_uncertainty: bool = False,
) -> RelaxResult:
    """RELAX importance and uncertainty of each pixel for an embedding.

    With s_n the cosine similarity between the embedding of x and that of x ⊙ M_n
    (x·y / max(‖x‖‖y‖, 1e-8), as `torch.nn.CosineSimilarity`):
    - importance R̄ = Σ_n s_n M_n / (1e-10 + Σ_n M_n);
    - uncertainty U = Σ_n M_n (s_n − R̄)², un-normalised as in the `relax-xai` package.
      With `normalize_uncertainty=True` it is divided by (Σ_n M_n − 1), as the notebook
      released with the paper in 2021 did; this changes which pixels `u_relax` keeps.

    Both come in closed form from running sums over mask chunks: S0 = Σ M, and the first and
    second moments of the similarities about a per-image reference c (the mean similarity of
    the first chunk), Σ (s − c) M and Σ (s − c)² M. Centring keeps U free of float32
    cancellation when the similarities are close to each other. Memory does not grow with N.
    The same masks are applied to every image of the batch (broadcast over channels); the
    official code applies them to the normalised image.

    Args:
      embed_fn: `embed_fn(images [B, H, W, C]) -> [B, ...]`, flattened to `[B, D]`; ideally a
        `jax.tree_util.Partial` whose leaves are the parameters.
      images: `[B, H, W, C]`.
      masks: `[N, H, W]` or `[N, H, W, 1]`, for example from `relax_masks`.
      batch_size: masks evaluated at once (each on the whole batch), or None for all; the
        official code uses 100.
      normalize_uncertainty: divide U by (Σ_n M_n − 1).

    Returns:
      `RelaxResult(importance [B, H, W], uncertainty [B, H, W])`.
    """
    embed_fn = as_pytree_callable(embed_fn, "embed_fn")
    images = check_images(images)
    masks = check_masks(masks, images.shape[1:3])
    return _relax(
        embed_fn,
        images,
        masks,
        batch_size=check_batch_size(batch_size),
        normalize_uncertainty=bool(normalize_uncertainty),
    )


def _embed(embed_fn, images):
    embeddings = jnp.asarray(embed_fn(images))
    if embeddings.ndim < 2 or embeddings.shape[0] != images.shape[0]:
        raise ValueError(
            f"embed_fn must return one embedding per image, shape [{images.shape[0]}, D]; got "
            f"shape {embeddings.shape}."
        )
    return embeddings.reshape(images.shape[0], -1)


@partial(jax.jit, static_argnames=("batch_size", "normalize_uncertainty"))
def _relax(embed_fn, images, masks, *, batch_size, normalize_uncertainty):
    b, h, w, _ = images.shape
    reference = _embed(embed_fn, images)  # [B, D]
    reference_norm = jnp.linalg.norm(reference, axis=-1)  # [B]

    def similarities(chunk_masks):  # [k, H, W] -> [k, B]
        masked = images[None] * chunk_masks[:, None, :, :, None]  # [k, B, H, W, C]
        embeddings = jax.vmap(lambda x: _embed(embed_fn, x))(masked)  # [k, B, D]
        dots = jnp.sum(embeddings * reference, axis=-1)
        norms = jnp.linalg.norm(embeddings, axis=-1) * reference_norm
        return (dots / jnp.maximum(norms, _COSINE_EPS)).astype(jnp.float32)

    def accumulate(carry, chunk_masks, fresh):
        center, started, weight_sum, first_moment, second_moment = carry
        scores = similarities(chunk_masks)
        # The first chunk has no overlap with an earlier one: all its samples are fresh.
        center = jnp.where(started, center, jnp.mean(scores, axis=0))
        centred = scores - center
        weights = chunk_masks * fresh[:, None, None]
        return (
            center,
            jnp.ones_like(started),
            weight_sum + jnp.sum(weights, axis=0),
            first_moment + weighted_mask_sum(centred, weights),
            second_moment + weighted_mask_sum(centred * centred, weights),
        )

    zeros = jnp.zeros((b, h, w), jnp.float32)
    init = (jnp.zeros((b,), jnp.float32), jnp.asarray(False), zeros[0], zeros, zeros)
    center, _, weight_sum, first_moment, second_moment = fold_chunks(
        accumulate, init, masks, batch_size=batch_size
    )
    center = center[:, None, None]
    # R̄ − c = (Σ s M − c (1e-10 + Σ M)) / (1e-10 + Σ M), written with the centred sum.
    offset = (first_moment - center * _WEIGHT_EPS) / (_WEIGHT_EPS + weight_sum)
    importance = center + offset
    # Σ M (s − R̄)² = Σ M (t − offset)² with t = s − c.
    uncertainty = second_moment - 2.0 * offset * first_moment + offset**2 * weight_sum
    uncertainty = jnp.maximum(uncertainty, 0.0)  # a sum of squares; rounding may dip below 0
    if normalize_uncertainty:
        uncertainty = uncertainty / (weight_sum - 1.0)
    return RelaxResult(importance, uncertainty)


def u_relax(importance: jax.Array, uncertainty: jax.Array) -> jax.Array:
    """U-RELAX: the importance where the uncertainty is at or below its per-image median.

    R̄ ⊙ 1[U ≤ median(U)], the median taken over each image's pixels (`torch.median`'s lower
    median selects the same pixels).

    Args:
      importance: `[B, H, W]`.
      uncertainty: `[B, H, W]`.

    Returns:
      `[B, H, W]`.
    """
    importance, uncertainty = jnp.asarray(importance), jnp.asarray(uncertainty)
    if importance.ndim != 3 or importance.shape != uncertainty.shape:
        raise ValueError(
            "importance and uncertainty must both have shape [B, H, W]; got "
            f"{importance.shape} and {uncertainty.shape}."
        )
    return _u_relax(importance, uncertainty)


@jax.jit
def _u_relax(importance, uncertainty):
    median = jnp.median(uncertainty, axis=(1, 2), keepdims=True)
    return jnp.where(uncertainty <= median, importance, 0.0)
