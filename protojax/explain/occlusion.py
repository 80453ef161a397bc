"""Occlusion (Zeiler & Fergus 2014): the score drop when a sliding patch is filled."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.common import (
    as_pytree_callable,
    batched_scores,
    call_score,
    check_batch_size,
    check_images,
    check_targets,
    chunked_sum,
    image_size_pair,
    weighted_mask_sum,
)


def occlusion(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    patch: int | tuple[int, int],
    stride: int | tuple[int, int],
    fill: jax.Array | float = 0.0,
    batch_size: int | None = None,
    targets: jax.Array | None = None,
) -> jax.Array:
    """Occlusion maps: score(x) − score(x with a patch filled), averaged per pixel.

    Windows of `patch` pixels (all channels) start at rows 0, s_h, 2 s_h, … ≤ H − p_h and
    columns 0, s_w, … ≤ W − p_w. A pixel's value is the mean score drop over the windows that
    cover it, as Captum's `Occlusion` computes it; a pixel no window covers (when the stride does
    not reach the last rows or columns) gets 0. Positive values mark evidence for the score.

    Args:
      score_fn: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)` when
        `targets` is given; ideally a `jax.tree_util.Partial` whose leaves are the parameters.
      images: `[B, H, W, C]`.
      patch: the window size, an int or `(p_h, p_w)`.
      stride: the step between windows, an int or `(s_h, s_w)`.
      fill: the value of occluded pixels, broadcastable to `[B, H, W, C]` (a scalar, a `[C]`
        per-channel mean, a `[B, H, W, C]` blurred copy, ...).
      batch_size: windows evaluated at once (each on the whole batch), or None for all.
      targets: optional `[B]` indices passed to `score_fn`.

    Returns:
      `[B, H, W]` mean score drops.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    patch = image_size_pair(patch, "patch")
    stride = image_size_pair(stride, "stride")
    if patch[0] > images.shape[1] or patch[1] > images.shape[2]:
        raise ValueError(
            f"patch {patch} is larger than the {images.shape[1]}x{images.shape[2]} images."
        )
    fill = jnp.asarray(fill, images.dtype)
    try:
        fill = jnp.broadcast_to(fill, images.shape)
    except ValueError:
        raise ValueError(
            f"fill of shape {fill.shape} does not broadcast to the images' shape {images.shape}."
        ) from None
    return _occlusion(
        score_fn,
        images,
        fill,
        targets,
        patch=patch,
        stride=stride,
        batch_size=check_batch_size(batch_size),
    )


def _window_corners(size: tuple[int, int], patch: tuple[int, int], stride: tuple[int, int]):
    """Top-left corners `[num_windows, 2]` and per-pixel window counts `[H, W]`."""
    tops = np.arange(0, size[0] - patch[0] + 1, stride[0])
    lefts = np.arange(0, size[1] - patch[1] + 1, stride[1])
    corners = np.stack(np.meshgrid(tops, lefts, indexing="ij"), axis=-1).reshape(-1, 2)
    counts = np.zeros(size, np.float32)
    for top, left in corners:
        counts[top : top + patch[0], left : left + patch[1]] += 1.0
    return corners.astype(np.int32), counts


@partial(jax.jit, static_argnames=("patch", "stride", "batch_size"))
def _occlusion(score_fn, images, fill, targets, *, patch, stride, batch_size):
    _, h, w, _ = images.shape
    corners, counts = _window_corners((h, w), patch, stride)
    reference = call_score(score_fn, images, targets)  # [B]
    rows, cols = jnp.arange(h), jnp.arange(w)

    def drop_sum(chunk_corners, fresh):
        top, left = chunk_corners[:, 0, None], chunk_corners[:, 1, None]
        in_rows = (rows >= top) & (rows < top + patch[0])  # [k, H]
        in_cols = (cols >= left) & (cols < left + patch[1])  # [k, W]
        windows = in_rows[:, :, None] & in_cols[:, None, :]  # [k, H, W]
        occluded = jnp.where(windows[:, None, :, :, None], fill, images)  # [k, B, H, W, C]
        drops = reference - batched_scores(score_fn, occluded, targets)  # [k, B]
        return weighted_mask_sum(fresh[:, None] * drops, windows.astype(images.dtype))

    total = chunked_sum(drop_sum, jnp.asarray(corners), batch_size=batch_size)
    return total / jnp.maximum(jnp.asarray(counts), 1.0)
