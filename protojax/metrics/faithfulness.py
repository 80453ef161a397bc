"""Faithfulness of saliency maps: deletion and insertion curves (Petsiuk et al. 2018, RISE).

Pixels are removed (deletion) or inserted (insertion) in order of decreasing saliency, and the
model's score is recorded after each step. A faithful map makes the deletion score fall fast
(low AUC) and the insertion score rise fast (high AUC). Both return a `CurveResult`: the AUC
as `MetricResult`'s `per_example` and `aggregate`, and the curves themselves.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics.common import as_partial, check_pixel_removal, descending_ranks


class CurveResult(NamedTuple):
    """Deletion or insertion curves and their areas.

    The first two fields are `MetricResult`'s, so the result reads as every other metric's
    (`result.per_example`, `result.aggregate`), and the curves come with them.

    Attributes:
      per_example: `[B]` the area under each example's curve, by the trapezoid rule over
        `fractions`.
      aggregate: `[]` the mean area over the batch.
      scores: `[B, steps + 1]` the curves: the score of each example at each point.
      fractions: `[steps + 1]` the fraction of pixels removed (deletion) or inserted
        (insertion) at each point, from 0 to 1.
    """

    per_example: jax.Array
    aggregate: jax.Array
    scores: jax.Array
    fractions: jax.Array


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
    return CurveResult(auc, jnp.mean(auc), scores, fractions)


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
    first one first, so the order is deterministic. Only the order matters: an all-negative
    map is used like any other, and a constant map (all zeros included) changes pixels in
    row-major order, the baseline that an uninformative map should not beat. At step
    k = 0..steps the first ⌊k · H·W / steps⌋ pixels (all channels) are changed:
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
      `CurveResult(per_example=AUC [B], aggregate=mean AUC [], scores [B, steps + 1],
      fractions [steps + 1])`.
    """
    if mode not in ("deletion", "insertion"):
        raise ValueError(f'mode must be "deletion" or "insertion", got {mode!r}.')
    if int(steps) != steps or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps}.")
    if batch_size is not None and (int(batch_size) != batch_size or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or None, got {batch_size}.")
    images, saliency, fill, targets = check_pixel_removal(
        images, saliency, "saliency", fill, targets
    )
    return _curve_scores(
        as_partial(score_fn),
        images,
        saliency,
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
) -> CurveResult:
    """Deletion curve and AUC: remove the most salient pixels first, replacing them with `fill`.

    At step k = 0..steps the first ⌊k · H·W / steps⌋ pixels in decreasing saliency (ties by
    row-major index) take the value `fill` in every channel: the curve starts at the image
    and ends at the all-`fill` image. The fill defaults to 0.0 (black for images in [0, 1],
    the dataset mean for standardised ones). Lower AUC is more faithful. The same as
    `perturbation_curve(..., mode="deletion")`.

    Args:
      score_fn: `score_fn(images [N, H, W, C]) -> [N]`, or `score_fn(images, targets)`.
      images: `[B, H, W, C]`.
      saliency: `[B, H, W]`.
      steps: the curve has `steps + 1` points, from 0 to all pixels removed.
      fill: the value of removed pixels, broadcastable to `[B, H, W, C]`: a scalar, a
        per-channel `[C]` value or a `[B, H, W, C]` image (e.g. a blurred copy).
      batch_size: perturbed images per `score_fn` call (None: B).
      targets: optional `[B]` targets for `score_fn`.

    Returns:
      `CurveResult(per_example=AUC [B], aggregate=mean AUC [], scores [B, steps + 1],
      fractions [steps + 1])`.
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
    )


def insertion_curve(
    score_fn: Callable[..., jax.Array],
    images,
    saliency,
    *,
    steps: int = 20,
    fill=0.0,
    batch_size: int | None = None,
    targets=None,
) -> CurveResult:
    """Insertion curve and AUC: start from the `fill` image, insert the most salient first.

    The start image is `fill` everywhere (default 0.0; a blurred copy of `images` gives the
    RISE paper's baseline). At step k = 0..steps the first ⌊k · H·W / steps⌋ pixels in
    decreasing saliency (ties by row-major index) are copied from the image in every
    channel: the curve ends at the image. Higher AUC is more faithful. The same as
    `perturbation_curve(..., mode="insertion")`.

    Args:
      score_fn: `score_fn(images [N, H, W, C]) -> [N]`, or `score_fn(images, targets)`.
      images: `[B, H, W, C]`.
      saliency: `[B, H, W]`.
      steps: the curve has `steps + 1` points, from the baseline to the full image.
      fill: the start (baseline) image, broadcastable to `[B, H, W, C]`: a scalar, a
        per-channel `[C]` value or a `[B, H, W, C]` image.
      batch_size: perturbed images per `score_fn` call (None: B).
      targets: optional `[B]` targets for `score_fn`.

    Returns:
      `CurveResult(per_example=AUC [B], aggregate=mean AUC [], scores [B, steps + 1],
      fractions [steps + 1])`.
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
    )
