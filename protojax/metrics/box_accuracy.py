"""MaxBoxAcc v2 (Choe et al., CVPR 2020, "Evaluating Weakly Supervised Object Localization
Methods Right"; official code: github.com/clovaai/wsolevaluation, `evaluation.py`).

This metric runs on the host: connected components are labelled with `scipy.ndimage`, so it
takes and converts arrays but is not jit-able.

Box convention: `(y0, x0, y1, x1)` in pixels of the saliency grid, with `y1` and `x1`
exclusive, so a box covers rows `y0 .. y1 - 1` and columns `x0 .. x1 - 1` and its area is
`(y1 - y0) · (x1 - x0)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics.common import check_maps

# 8-connectivity, as the border following of OpenCV's findContours used by the official code.
_EIGHT_CONNECTED = np.ones((3, 3), dtype=bool)


class MaxBoxAccuracy(NamedTuple):
    """The result of `max_box_accuracy`. The first two fields are `MetricResult`'s, so it
    reads as every other metric's (`float(result.aggregate)`), and the curves come with them.

    Attributes:
      per_example: `[B]` float32, the fraction of IoU thresholds δ at which the image is
        correct at that δ's best τ; its mean over the batch is `aggregate`.
      aggregate: scalar, MaxBoxAcc v2: the mean of `max_box_acc` over δ.
      correct: `[B, D]` bool, whether each image is correct at the best τ of each δ.
      max_box_acc: `[D]` MaxBoxAcc(δ) = max over τ of BoxAcc(τ, δ), one per IoU threshold δ.
      best_cam_threshold: `[D]` the τ attaining each maximum (the smallest on ties).
      box_acc: `[T, D]` BoxAcc(τ, δ) for every CAM threshold τ and IoU threshold δ.
      cam_thresholds: `[T]` the CAM thresholds τ.
      iou_thresholds: `[D]` the IoU thresholds δ.
    """

    per_example: jax.Array
    aggregate: jax.Array
    correct: jax.Array
    max_box_acc: jax.Array
    best_cam_threshold: jax.Array
    box_acc: jax.Array
    cam_thresholds: jax.Array
    iou_thresholds: jax.Array


def _ground_truth_boxes(boxes, batch: int) -> list[np.ndarray]:
    """Returns one `[G_i, 4]` int64 array of non-empty boxes per image."""
    per_image = list(np.asarray(boxes)) if isinstance(boxes, np.ndarray | jax.Array) else boxes
    usage = f"boxes must be a [B, G, 4] array or a sequence of B [G_i, 4] arrays with B = {batch}"
    if len(per_image) != batch:
        raise ValueError(f"{usage}, got {len(per_image)} entries.")
    result = []
    for image_boxes in per_image:
        image_boxes = np.asarray(image_boxes)
        if image_boxes.size == 0:
            image_boxes = np.zeros((0, 4), np.int64)
        if image_boxes.ndim != 2 or image_boxes.shape[1] != 4:
            raise ValueError(f"{usage}, got an entry of shape {image_boxes.shape}.")
        if np.any(image_boxes != np.round(image_boxes)):
            raise ValueError("boxes must hold whole pixel coordinates (y0, x0, y1, x1).")
        image_boxes = image_boxes.astype(np.int64)
        # Rows with no area are padding, so a [B, G, 4] array can be padded with zeros.
        has_area = (image_boxes[:, 2] > image_boxes[:, 0]) & (image_boxes[:, 3] > image_boxes[:, 1])
        result.append(image_boxes[has_area])
    return result


def _best_iou(candidates: np.ndarray, ground_truth: np.ndarray) -> float:
    """The largest IoU between any of `candidates [C, 4]` and any of `ground_truth [G, 4]`."""
    if len(candidates) == 0 or len(ground_truth) == 0:
        return 0.0
    c, g = candidates[:, None, :], ground_truth[None, :, :]
    overlap_h = np.maximum(0, np.minimum(c[..., 2], g[..., 2]) - np.maximum(c[..., 0], g[..., 0]))
    overlap_w = np.maximum(0, np.minimum(c[..., 3], g[..., 3]) - np.maximum(c[..., 1], g[..., 1]))
    intersection = overlap_h * overlap_w
    area_c = (c[..., 2] - c[..., 0]) * (c[..., 3] - c[..., 1])
    area_g = (g[..., 2] - g[..., 0]) * (g[..., 3] - g[..., 1])
    return float(np.max(intersection / (area_c + area_g - intersection)))


def _component_boxes(foreground: np.ndarray) -> np.ndarray:
    """`[C, 4]` boxes (exclusive ends) around the 8-connected components of `foreground`."""
    from scipy import ndimage  # host-only; kept out of the import of protojax.train

    labels, _ = ndimage.label(foreground, structure=_EIGHT_CONNECTED)
    slices = ndimage.find_objects(labels)
    return np.array([(s[0].start, s[1].start, s[0].stop, s[1].stop) for s in slices], np.int64)


def _normalise(scoremap: np.ndarray) -> np.ndarray:
    """Min-max normalisation to [0, 1]; a constant map becomes zeros, as in the official code."""
    low, high = scoremap.min(), scoremap.max()
    if high == low:
        return np.zeros_like(scoremap)
    return (scoremap - low) / (high - low)


def max_box_accuracy(
    saliency,
    boxes: jax.Array | np.ndarray | Sequence[np.ndarray],
    *,
    iou_thresholds: Sequence[float] = (0.3, 0.5, 0.7),
    num_thresholds: int = 1000,
) -> MaxBoxAccuracy:
    """MaxBoxAcc v2: the best-threshold box accuracy over all connected components.

    For each image, the map is min-max normalised to [0, 1] (a constant map becomes all
    zeros). For each CAM threshold τ in `0, 1/T, ..., (T-1)/T` (T = `num_thresholds`),
    boxes are drawn around every 8-connected component of `{map ≥ τ}`. The image is correct
    at (τ, δ) if any of these boxes has IoU ≥ δ with any of its ground-truth boxes.
    BoxAcc(τ, δ) is the fraction of correct images, MaxBoxAcc(δ) = max_τ BoxAcc(τ, δ), and
    v2 averages over δ.

    The defaults are the official wsolevaluation settings of MaxBoxAccV2: T = 1000
    thresholds (`cam_curve_interval=0.001`), boxes around all the contours
    (`multi_contour_eval=True`) rather than the largest, and δ = 0.3, 0.5, 0.7 averaged.

    Differences from the official code: the map is thresholded in float64 rather than after
    8-bit quantisation, `≥ τ` is used where OpenCV's threshold is strict, boxes have exclusive
    ends without the official `+1` in IoU, and holes in components (which OpenCV's
    `RETR_TREE` also boxes) add no boxes.

    Runs on the host (`scipy.ndimage` labelling); not jit-able. The cost is one component
    labelling per distinct set `{map ≥ τ}`, at most T per image: about 0.5 s per smooth
    224 × 224 map at T = 1000 on one core of the development machine, ten times less at
    T = 100 (a coarser curve; the official code's 8-bit maps give at most 256 distinct
    sets).

    Args:
      saliency: `[B, H, W]` saliency maps (or `[B, H, W, 1]`), finite.
      boxes: ground-truth boxes `(y0, x0, y1, x1)`, exclusive `y1`/`x1`, in pixels of the
        saliency grid: a `[B, G, 4]` array, or a sequence of B `[G_i, 4]` arrays. Rows with
        no area (`y1 ≤ y0` or `x1 ≤ x0`) are padding and ignored; an image without a box is
        never correct.
      iou_thresholds: the IoU thresholds δ, each in (0, 1].
      num_thresholds: T, the number of CAM thresholds; 1000 as the official code.

    Maps without structure: a constant map (all zeros included) normalises to zeros, so
    τ = 0 boxes the whole image and every higher τ boxes nothing; an all-negative map is
    min-max normalised like any other (only the order of its values matters). An image
    without a ground-truth box is never correct.

    Returns:
      `MaxBoxAccuracy(per_example [B], aggregate [], correct [B, D], max_box_acc [D], ...)`,
      a `MetricResult` whose aggregate is MaxBoxAcc v2, with the curves behind it.
    """
    saliency = np.asarray(check_maps(saliency, "saliency"), dtype=np.float64)
    if not np.all(np.isfinite(saliency)):
        raise ValueError("saliency contains NaN or inf; max_box_accuracy needs finite maps.")
    iou = np.asarray(iou_thresholds, dtype=np.float64).reshape(-1)
    if iou.size == 0 or np.any(iou <= 0) or np.any(iou > 1):
        raise ValueError(f"iou_thresholds must be non-empty and in (0, 1], got {iou_thresholds}.")
    if int(num_thresholds) != num_thresholds or num_thresholds < 1:
        raise ValueError(f"num_thresholds must be a positive integer, got {num_thresholds}.")
    num_thresholds = int(num_thresholds)
    ground_truth = _ground_truth_boxes(boxes, saliency.shape[0])
    cam_thresholds = np.arange(num_thresholds, dtype=np.float64) / num_thresholds

    best_iou = np.zeros((saliency.shape[0], num_thresholds))
    for i, (scoremap, image_boxes) in enumerate(zip(saliency, ground_truth)):
        scoremap = _normalise(scoremap)
        # |{map ≥ τ}| for every τ. The sets shrink as τ grows, so an equal count means the
        # same set, whose components are labelled once.
        counts = scoremap.size - np.searchsorted(np.sort(scoremap, axis=None), cam_thresholds)
        starts = np.flatnonzero(np.diff(counts, prepend=-1))
        for start, stop in zip(starts, [*starts[1:], num_thresholds]):
            foreground = scoremap >= cam_thresholds[start]
            best_iou[i, start:stop] = _best_iou(_component_boxes(foreground), image_boxes)

    correct = best_iou[:, :, None] >= iou[None, None, :]  # [B, T, D]
    box_acc = correct.mean(axis=0)  # [T, D]
    best_t = np.argmax(box_acc, axis=0)  # the first (smallest τ) on ties
    correct_at_best = correct[:, best_t, np.arange(iou.size)]  # [B, D]
    max_box_acc = box_acc[best_t, np.arange(iou.size)]
    return MaxBoxAccuracy(
        per_example=jnp.asarray(correct_at_best.mean(axis=1), jnp.float32),
        aggregate=jnp.asarray(max_box_acc.mean(), jnp.float32),
        correct=jnp.asarray(correct_at_best),
        max_box_acc=jnp.asarray(max_box_acc, jnp.float32),
        best_cam_threshold=jnp.asarray(cam_thresholds[best_t], jnp.float32),
        box_acc=jnp.asarray(box_acc, jnp.float32),
        cam_thresholds=jnp.asarray(cam_thresholds, jnp.float32),
        iou_thresholds=jnp.asarray(iou, jnp.float32),
    )
