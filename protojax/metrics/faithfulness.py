"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Pixels are removed (deletion) or inserted (insertion) in order of decreasing saliency, and the
model's score is recorded after each step. A faithful map makes the deletion score fall fast
(low AUC) and the insertion score rise fast (high AUC).
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics.common import (
    MetricResult,
    as_partial,
    check_maps,
    check_same_grid,
    descending_ranks,
)


class CurveResult(NamedTuple):
    """Deletion or insertion curves and their areas.

    Attributes:
      fractions: `[steps + 1]` the fraction of pixels removed (deletion) or inserted
        (insertion) at each point, from 0 to 1.
      scores: `[B, steps + 1]` the score of each example at each point.
      auc: `MetricResult(per_example=[B] trapezoid AUC over fractions, aggregate=mean AUC)`.
    """

    fractions: jax.Array
    scores: jax.Array
    auc: MetricResult


@functools.partial(jax.jit, static_argnames=("steps", "chunk", "insertion"))
def _curve_scores(score_fn, images, saliency, fill, targets, *, steps, chunk, insertion):
    b, h, w, _ = images.shape
    ranks = descending_ranks(saliency.reshape(b, h * w)).reshape(b, h, w)
    # Pixels changed at step k: the first floor(k·N / steps) in saliency order.
    counts = jnp.asarray((np.arange(steps + 1) * (h * w)) // steps, jnp.int32)
    total = (steps + 1) * b
    num_chunks = -(-total // chunk)
    # Flat (step, example) pairs, step-major, evaluated `chunk` perturbed images per call.
    pairs = jnp.arange(num_chunks * chunk).reshape(num_chunks, chunk)

    def score_chunk(pair):
        pair = jnp.minimum(pair, total - 1)  # the padded tail repeats the last pair
        step, example = pair // b, pair % b
        changed = ranks[example] < counts[step][:, None, None]  # [chunk, H, W]
        show_original = changed if insertion else ~changed
        perturbed = jnp.where(show_original[..., None], images[example], fill[example])
        args = (perturbed,) if targets is None else (perturbed, targets[example])
        scores = score_fn(*args)
        if scores.shape != (chunk,):
            raise ValueError(
                f"score_fn must map [N, H, W, C] images to [N] scores, got shape {scores.shape} "
                f"for N = {chunk}."
            )
        return scores.astype(jnp.float32)

    scores = jax.lax.map(score_chunk, pairs).reshape(-1)[:total]
    scores = scores.reshape(steps + 1, b).T  # [B, steps + 1]
    fractions = counts.astype(jnp.float32) / (h * w)
    widths = jnp.diff(fractions)
    auc = jnp.sum(widths * (scores[:, 1:] + scores[:, :-1]) / 2.0, axis=1)
    return CurveResult(fractions, scores, MetricResult(auc, jnp.mean(auc)))


def perturbation_curve(
    score_fn: Callable[..., jax.Array],
    images,
    saliency,
    *,
    mode: str,
    steps: int = 20,
    fill=0.0,
    batch_size: int | None = None,
    targets=None,
) -> CurveResult:
    """Deletion or insertion curves, with the scores at every step.

    Pixels are ordered by decreasing saliency; ties are broken by row-major pixel index, the
    first one first, so the order is deterministic. At step k = 0..steps the first
    ⌊k · H·W / steps⌋ pixels (all channels) are changed:
      - `mode="deletion"`: they are replaced by `fill` (step 0 is the image, the last step is
        all fill);
      - `mode="insertion"`: the start is the `fill` image (the baseline) and they are copied
        from the image (the last step is the image).
    The AUC is the trapezoid rule over the fractions of changed pixels, which span [0, 1].

    Args:
      score_fn: `score_fn(images [N, H, W, C]) -> [N]`, or `score_fn(images, targets [N])`
        when `targets` is given. A `jax.tree_util.Partial` whose leaves are parameters is
        traced, so new parameters do not recompile.
      images: `[B, H, W, C]`.
      saliency: `[B, H, W]` (or `[B, H, W, 1]`).
      mode: "deletion" or "insertion".
      steps: the number of steps; the curve has `steps + 1` points.
      fill: the value of removed pixels (deletion) and of the start image (insertion):
        anything broadcastable to `[B, H, W, C]`. The default 0.0 is black for images in
        [0, 1], the dataset mean for standardised images; pass a blurred copy of `images` for
        the blurred baseline of the RISE paper's insertion metric.
      batch_size: perturbed images per `score_fn` call; None means B (one curve point of the
        whole batch per call). Memory grows with this, not with `steps`.
      targets: optional `[B]` per-example targets (class or prototype indices) passed to
        `score_fn` alongside the images.

    Returns:
      `CurveResult(fractions [steps + 1], scores [B, steps + 1], auc=MetricResult)`.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f'mode must be "deletion" or "insertion", got {mode!r}.')
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}.")
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}.")
    saliency = check_maps(saliency, "saliency", batch=images.shape[0])
    check_same_grid(saliency, "saliency", images[..., 0], "images")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
    try:
        fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), images.shape)
    except ValueError:
        raise ValueError(
            f"fill of shape {jnp.shape(fill)} cannot broadcast to images {images.shape}; pass a "
            "scalar, a per-channel [C] value or a [B, H, W, C] array."
        ) from None
    if targets is not None:
        targets = jnp.asarray(targets)
        if targets.shape[:1] != images.shape[:1]:
            raise ValueError(
                f"targets must have one entry per image ({images.shape[0]}), "
                f"got shape {targets.shape}."
            )
    return _curve_scores(
        as_partial(score_fn),
        images,
        saliency.astype(jnp.float32),
        fill,
        targets,
        steps=int(steps),
        chunk=int(batch_size or images.shape[0]),
        insertion=mode == "insertion",
    )


def deletion_curve(
    score_fn: Callable[..., jax.Array],
    images,
    saliency,
    *,
    steps: int = 20,
    fill=0.0,
    batch_size: int | None = None,
    targets=None,
) -> MetricResult:
    """Deletion AUC: remove the most salient pixels first, replacing them with `fill`.

    Removed pixels take the value `fill` (default 0.0). Lower is more faithful. This is
    `perturbation_curve(..., mode="deletion").auc`; call that for the curves themselves.

    Args:
      score_fn: `score_fn(images [N, H, W, C]) -> [N]`, or `score_fn(images, targets)`.
      images: `[B, H, W, C]`.
      saliency: `[B, H, W]`.
      steps: the curve has `steps + 1` points, from 0 to all pixels removed.
      fill: broadcastable to `[B, H, W, C]`; see `perturbation_curve`.
      batch_size: perturbed images per `score_fn` call (None: B).
      targets: optional `[B]` targets for `score_fn`.

    Returns:
      `MetricResult(per_example=AUC [B], aggregate=mean AUC)`.
    """
    return perturbation_curve(
        score_fn,
        images,
        saliency,
        mode="deletion",
        steps=steps,
        fill=fill,
        batch_size=batch_size,
        targets=targets,
    ).auc


def insertion_curve(
    score_fn: Callable[..., jax.Array],
    images,
    saliency,
    *,
    steps: int = 20,
    fill=0.0,
    batch_size: int | None = None,
    targets=None,
) -> MetricResult:
    """Insertion AUC: start from the `fill` image and insert the most salient pixels first.

    The start image is `fill` everywhere (default 0.0; a blurred copy of `images` gives the
    RISE paper's baseline). Higher is more faithful. This is
    `perturbation_curve(..., mode="insertion").auc`; call that for the curves themselves.

    Args:
      score_fn: `score_fn(images [N, H, W, C]) -> [N]`, or `score_fn(images, targets)`.
      images: `[B, H, W, C]`.
      saliency: `[B, H, W]`.
      steps: the curve has `steps + 1` points, from the baseline to the full image.
      fill: broadcastable to `[B, H, W, C]`; see `perturbation_curve`.
      batch_size: perturbed images per `score_fn` call (None: B).
      targets: optional `[B]` targets for `score_fn`.

    Returns:
      `MetricResult(per_example=AUC [B], aggregate=mean AUC)`.
    """
    return perturbation_curve(
        score_fn,
        images,
        saliency,
        mode="insertion",
        steps=steps,
        fill=fill,
        batch_size=batch_size,
        targets=targets,
    ).auc
