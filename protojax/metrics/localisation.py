"""Localisation of saliency maps against ground-truth masks: pointing game, relevance rank and
relevance mass accuracy (Zhang et al., "Top-down neural attention by excitation backprop",
IJCV 2018; Arras et al., "CLEVR-XAI", Information Fusion 2022).

Saliency maps are `[B, H, W]` (a trailing channel axis of size 1 is accepted; reduce
multi-channel attributions with `protojax.explain.reduce_channels` first). Masks are `[B, H, W]`
on the same grid; any non-zero entry counts as inside the object.

Maps without structure have defined values: a constant map (all zeros included) ranks its
pixels in row-major order, and only the order of values matters to the pointing game and
relevance rank, so an all-negative map is judged like any other. Relevance mass counts only
positive relevance: a map with none puts none of it in the object and scores 0. An empty mask
leaves relevance rank and mass undefined (NaN, left out of the aggregate) and makes the
pointing game miss.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from protojax.metrics.common import MetricResult, check_maps, check_same_grid, descending_ranks


def _maps_and_masks(saliency, masks) -> tuple[jax.Array, jax.Array]:
    saliency = check_maps(saliency, "saliency")
    masks = check_maps(masks, "masks", batch=saliency.shape[0])
    check_same_grid(saliency, "saliency", masks, "masks")
    return saliency.astype(jnp.float32), masks != 0


@jax.jit
def _pointing_game(saliency: jax.Array, masks: jax.Array, tolerance: jax.Array) -> MetricResult:
    b, h, w = saliency.shape
    flat_arg = jnp.argmax(saliency.reshape(b, h * w), axis=1)  # the first maximum, row-major
    peak_y, peak_x = flat_arg // w, flat_arg % w
    dy = jnp.arange(h)[None, :, None] - peak_y[:, None, None]
    dx = jnp.arange(w)[None, None, :] - peak_x[:, None, None]
    near_peak = (dy * dy + dx * dx).astype(jnp.float32) <= tolerance * tolerance
    hits = jnp.any(masks & near_peak, axis=(1, 2))
    return MetricResult(hits, jnp.mean(hits.astype(jnp.float32)))


def pointing_game(saliency, masks, *, tolerance: float = 0) -> MetricResult:
    """Pointing game (Zhang et al. 2018): does the saliency peak land on the object?

    The peak is the arg-max pixel; on ties it is the first in row-major order (smallest h,
    then smallest w). An example is a hit if some mask pixel lies within Euclidean distance
    `tolerance` of the peak (a disc of that radius in pixels; 0 means the peak pixel itself
    must be in the mask; the original paper uses 15 px at full resolution). An empty mask is
    always a miss. A constant map (all zeros included) peaks at pixel (0, 0); an all-negative
    map peaks at its largest (least negative) value.

    Args:
      saliency: `[B, H, W]` saliency maps.
      masks: `[B, H, W]` ground-truth masks.
      tolerance: disc radius in pixels, ≥ 0.

    Returns:
      `MetricResult(per_example=hits [B] bool, aggregate=hits / B)`.
    """
    if isinstance(tolerance, int | float) and tolerance < 0:
        raise ValueError(f"tolerance must be a radius in pixels ≥ 0, got {tolerance}.")
    saliency, masks = _maps_and_masks(saliency, masks)
    return _pointing_game(saliency, masks, jnp.float32(tolerance))


@jax.jit
def _relevance_rank_accuracy(saliency: jax.Array, masks: jax.Array) -> MetricResult:
    b = saliency.shape[0]
    inside = masks.reshape(b, -1)
    ranks = descending_ranks(saliency.reshape(b, -1))
    k = jnp.sum(inside, axis=1)
    top_k_inside = jnp.sum(inside & (ranks < k[:, None]), axis=1)
    per_example = jnp.where(k > 0, top_k_inside / jnp.maximum(k, 1), jnp.nan)
    return MetricResult(per_example.astype(jnp.float32), jnp.nanmean(per_example))


def relevance_rank_accuracy(saliency, masks) -> MetricResult:
    """Relevance rank accuracy (Arras et al. 2022): the share of the top-K pixels in the mask.

    K is the number of mask pixels of each image. Pixels are ranked by decreasing saliency;
    ties are broken by the pixel's row-major index, the first one ranked higher, so exactly K
    pixels are taken even when values repeat: a constant map (all zeros included) takes the
    first K pixels in row-major order, and an all-negative map is ranked like any other.
    Images with an empty mask have no K: their `per_example` entry is NaN and the aggregate
    is the mean over the other images (NaN if every mask is empty).

    Args:
      saliency: `[B, H, W]` saliency maps.
      masks: `[B, H, W]` ground-truth masks.

    Returns:
      `MetricResult(per_example=[B] float32 in [0, 1] or NaN, aggregate=nan-mean scalar)`.
    """
    return _relevance_rank_accuracy(*_maps_and_masks(saliency, masks))


@jax.jit
def _relevance_mass_accuracy(saliency: jax.Array, masks: jax.Array) -> MetricResult:
    positive = jnp.maximum(saliency, 0.0)
    inside = jnp.sum(jnp.where(masks, positive, 0.0), axis=(1, 2))
    total = jnp.sum(positive, axis=(1, 2))
    # No positive relevance: none of it is inside the mask (0, not 0 / 0).
    share = jnp.where(total > 0, inside / jnp.where(total > 0, total, 1.0), 0.0)
    per_example = jnp.where(jnp.any(masks, axis=(1, 2)), share, jnp.nan)
    return MetricResult(per_example, jnp.nanmean(per_example))


def relevance_mass_accuracy(saliency, masks) -> MetricResult:
    """Relevance mass accuracy (Arras et al. 2022): positive relevance inside the mask / total.

    Negative saliency is ignored (R⁺ = max(R, 0)). A map with no positive relevance (all
    zeros, or all negative, as RISE gives for a negative logit) puts none inside the mask
    and scores 0. A constant positive map scores the mask's share of the pixels. An image
    whose mask is empty has no defined value: its `per_example` entry is NaN and the
    aggregate is the mean over the other images (NaN if there are none).

    Args:
      saliency: `[B, H, W]` saliency maps.
      masks: `[B, H, W]` ground-truth masks.

    Returns:
      `MetricResult(per_example=[B] float32 in [0, 1], NaN for an empty mask,
      aggregate=nan-mean scalar)`.
    """
    return _relevance_mass_accuracy(*_maps_and_masks(saliency, masks))
