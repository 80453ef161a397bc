"""Average drop and average increase of a prototype's similarity when the pixels an
explanation marks as most relevant are replaced (KMEx, Gautam et al., TMLR 2024; official
`utils/evaluation.py::AI_AD`)."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from protojax.metrics.common import as_partial, check_pixel_removal, descending_ranks


class DropIncrease(NamedTuple):
    """The result of `average_drop_increase`.

    Attributes:
      per_example: `[B]` the relative drop max(0, s − s̃)/(s + 1e-8) of each example.
      aggregate: AD, the mean drop (higher: the map found what the score needs).
      increase: `[B]` bool, s̃ > s.
      average_increase: AI, the share of examples whose score rose (lower is more faithful).
      scores: `[B]` s, the score of the images.
      masked_scores: `[B]` s̃, the score after the replacement.
    """

    per_example: jax.Array
    aggregate: jax.Array
    increase: jax.Array
    average_increase: jax.Array
    scores: jax.Array
    masked_scores: jax.Array


@functools.partial(jax.jit, static_argnames=("replaced",))
def _drop_increase(score_fn, images, relevance, fill, targets, *, replaced):
    b, h, w, _ = images.shape
    ranks = descending_ranks(jnp.abs(relevance).reshape(b, h * w)).reshape(b, h, w)
    masked = jnp.where((ranks < replaced)[..., None], fill, images)
    s = score_fn(images, targets).astype(jnp.float32)
    s_masked = score_fn(masked, targets).astype(jnp.float32)
    drop = jnp.maximum(0.0, s - s_masked) / (s + 1e-8)
    increase = s < s_masked
    return DropIncrease(
        drop, jnp.mean(drop), increase, jnp.mean(increase.astype(jnp.float32)), s, s_masked
    )


def average_drop_increase(
    score_fn: Callable[..., jax.Array],
    images,
    relevance,
    fill,
    *,
    targets,
    fraction: float = 0.5,
) -> DropIncrease:
    """KMEx's AD/AI: replace the most relevant pixels with a fixed image and re-score.

    For each example, the ⌈fraction · H·W⌉ pixels of largest |R| (ties: the earlier pixel in
    row-major order counts as more relevant) take the value of `fill` in every channel; the
    others keep the image (KMEx keeps the 50% least relevant). With s the score (a
    prototype's similarity) of the image and s̃ that of the masked image:
      AD = mean max(0, s − s̃) / (s + 1e-8),   AI = mean 1[s < s̃].
    The most relevant pixels are removed, so a faithful map gives high AD and low AI (the
    opposite of the Grad-CAM++ "average drop" convention, where the relevant pixels are kept).
    Only |R| matters: an all-negative map is ranked by magnitude, like any other, and a
    constant one replaces the first pixels in row-major order.

    KMEx's official loop reads the class-0 prototypes' similarities while masking for the
    true class's; give `targets` the prototype each row explains (the launcher pairs each
    image with every prototype of its true class).

    Args:
      score_fn: `score_fn(images [B, H, W, C], targets [B]) -> [B]`, a similarity (> 0).
      images: `[B, H, W, C]`.
      relevance: `[B, H, W]` maps, for example PRP summed over channels.
      fill: the fixed replacement image, broadcastable to `[B, H, W, C]` (KMEx: one U[0, 1]
        noise image drawn once, in the model's input space).
      targets: `[B]` the prototype each row's score and map are for.
      fraction: the share of pixels replaced, in (0, 1].

    Returns:
      `DropIncrease(per_example [B], aggregate AD, increase [B], average_increase AI,
      scores [B], masked_scores [B])`.
    """
    if not 0 < fraction <= 1:
        raise ValueError(f"fraction must be in (0, 1], got {fraction}.")
    if targets is None:
        raise ValueError("targets must give the prototype each row explains, [B].")
    images, relevance, fill, targets = check_pixel_removal(
        images, relevance, "relevance", fill, targets
    )
    num_pixels = images.shape[1] * images.shape[2]
    replaced = num_pixels - int((1.0 - fraction) * num_pixels)
    return _drop_increase(as_partial(score_fn), images, relevance, fill, targets, replaced=replaced)
