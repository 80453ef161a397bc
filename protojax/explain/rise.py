"""RISE (Petsiuk et al. 2018): randomized input sampling for explanation."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp

from protojax.explain.common import (
    as_pytree_callable,
    batched_scores,
    check_batch_size,
    check_images,
    check_mask_options,
    check_masks,
    check_targets,
    chunked_sum,
    crop_upsampled,
    image_size_pair,
    linear_interpolation_matrix,
    random_grids,
    weighted_mask_sum,
)


def rise_masks(
    rng: jax.Array,
    num_masks: int,
    image_size: int | tuple[int, int],
    *,
    grid: int = 7,
    p_keep: float = 0.5,
) -> jax.Array:
    """Smooth random masks as the RISE paper and its code build them.

    For each mask: a binary `grid × grid` array with P(1) = `p_keep` (1 keeps the pixel) is
    upsampled bilinearly to `(grid + 1) · cell` pixels per side, with cell = ⌈H / grid⌉ (and
    ⌈W / grid⌉), using half-pixel centres and mirror-reflected edges (scikit-image's
    `resize(order=1, mode='reflect')`); the `H × W` crop then starts at a random shift of
    0 … cell − 1 pixels per axis. Values lie in [0, 1] and E[M] = `p_keep` at every pixel.

    Args:
      rng: a PRNG key.
      num_masks: N.
      image_size: `H` or `(H, W)`.
      grid: the number of coarse cells per side.
      p_keep: the probability that a coarse cell is kept.

    Returns:
      `[N, H, W]` float32 masks.
    """
    size = image_size_pair(image_size)
    check_mask_options(num_masks, grid, p_keep)
    return _rise_masks(rng, p_keep, num_masks=int(num_masks), image_size=size, grid=int(grid))


@partial(jax.jit, static_argnames=("num_masks", "image_size", "grid"))
def _rise_masks(rng, p_keep, *, num_masks, image_size, grid):
    cell_h, cell_w = (-(-s // grid) for s in image_size)  # ⌈s / grid⌉
    cells, shift_y, shift_x = random_grids(rng, num_masks, grid, p_keep, (cell_h, cell_w))
    return rise_masks_from_grid(cells, shift_y, shift_x, image_size)


def rise_masks_from_grid(
    cells: jax.Array, shift_y: jax.Array, shift_x: jax.Array, image_size: tuple[int, int]
) -> jax.Array:
    """RISE's deterministic part: upsample `[N, g, g]` grids and crop at `[N]` shifts."""
    grid = cells.shape[-1]
    h, w = image_size
    cell_h, cell_w = -(-h // grid), -(-w // grid)
    rows = linear_interpolation_matrix(grid, (grid + 1) * cell_h, edge="mirror")
    cols = linear_interpolation_matrix(grid, (grid + 1) * cell_w, edge="mirror")
    return crop_upsampled(cells, rows, cols, shift_y, shift_x, (h, w))


def rise(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    masks: jax.Array,
    *,
    p_keep: float | None = None,
    batch_size: int | None = None,
    targets: jax.Array | None = None,
) -> jax.Array:
    """RISE saliency, Σ_n s_n M_n / (N · p_keep), with s_n the score of the image ⊙ M_n.

    The same masks are applied to every image of the batch (broadcast over channels).

    Args:
      score_fn: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)` when
        `targets` is given; ideally a `jax.tree_util.Partial` whose leaves are the parameters.
      images: `[B, H, W, C]`.
      masks: `[N, H, W]` or `[N, H, W, 1]`, for example from `rise_masks`.
      p_keep: the keep probability the masks were drawn with; `masks.mean()` by default.
      batch_size: masks evaluated at once (each on the whole batch), or None for all.
      targets: optional `[B]` indices passed to `score_fn`.

    Returns:
      `[B, H, W]` saliency maps.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    masks = check_masks(masks, images.shape[1:3])
    return _rise(score_fn, images, masks, p_keep, targets, batch_size=check_batch_size(batch_size))


@partial(jax.jit, static_argnames=("batch_size",))
def _rise(score_fn, images, masks, p_keep, targets, *, batch_size):
    if p_keep is None:
        p_keep = jnp.mean(masks)

    def weighted_sum(chunk_masks, fresh):
        masked = images[None] * chunk_masks[:, None, :, :, None]  # [k, B, H, W, C]
        scores = batched_scores(score_fn, masked, targets)  # [k, B]
        return weighted_mask_sum(fresh[:, None] * scores, chunk_masks)

    total = chunked_sum(weighted_sum, masks, batch_size=batch_size)
    return total / (masks.shape[0] * p_keep)
