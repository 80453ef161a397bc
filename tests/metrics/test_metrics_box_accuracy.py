"""MaxBoxAcc v2 on hand-made maps with known boxes, and against a brute-force reference."""

import numpy as np
import pytest

from protojax.metrics import max_box_accuracy


def _two_blob_map():
    """Blob A (value 1.0, 6 px, box (1, 1, 3, 4)) and the smaller blob B (0.5, 4 px, box
    (5, 6, 7, 8)) on a zero 8 × 10 background."""
    scoremap = np.zeros((8, 10), np.float32)
    scoremap[1:3, 1:4] = 1.0
    scoremap[5:7, 6:8] = 0.5
    return scoremap


def test_two_blobs_all_components_count():
    saliency = np.stack([_two_blob_map(), _two_blob_map()])
    # Image 0's box is B's, the smaller blob, so only an all-component (v2) evaluation finds it.
    # Image 1's box (1, 1, 3, 6) has area 10 and contains A's box (area 6): IoU 0.6.
    boxes = [np.array([[5, 6, 7, 8]]), np.array([[1, 1, 3, 6]])]
    result = agg = max_box_accuracy(saliency, boxes, num_thresholds=10)
    # τ = 0 keeps the whole image (box (0, 0, 8, 10), IoU 8/80 and 10/80): both wrong.
    # τ = 0.1 .. 0.5 keeps A and B: image 0 right at every δ, image 1 right for δ ≤ 0.6.
    # τ = 0.6 .. 0.9 keeps only A: image 0 wrong, image 1 right for δ ≤ 0.6.
    expected_box_acc = np.zeros((10, 3))
    expected_box_acc[1:6] = [1.0, 1.0, 0.5]
    expected_box_acc[6:] = [0.5, 0.5, 0.0]
    np.testing.assert_allclose(agg.box_acc, expected_box_acc)
    np.testing.assert_allclose(agg.max_box_acc, [1.0, 1.0, 0.5])
    np.testing.assert_allclose(agg.aggregate, 2.5 / 3, rtol=1e-6)
    assert float(result.aggregate) == pytest.approx(2.5 / 3)  # MetricResult's convention
    np.testing.assert_allclose(agg.best_cam_threshold, [0.1, 0.1, 0.1], rtol=1e-6)  # first τ
    np.testing.assert_array_equal(result.correct, [[True, True, True], [True, True, False]])
    np.testing.assert_allclose(result.per_example, [1.0, 2 / 3], rtol=1e-6)
    assert float(np.mean(result.per_example)) == pytest.approx(float(result.aggregate))
    np.testing.assert_allclose(agg.cam_thresholds, np.arange(10) / 10, rtol=1e-6)
    np.testing.assert_allclose(agg.iou_thresholds, [0.3, 0.5, 0.7], rtol=1e-6)


def test_default_thresholds_are_the_official_thousand():
    # wsolevaluation's MaxBoxAccV2: cam_curve_interval = 0.001, i.e. np.arange(0, 1, 0.001).
    # On the two blobs (B at 0.5, A at 1.0; the box is B's for image 0, A-like for image 1):
    # τ = 0.001 .. 0.5 boxes both blobs, τ > 0.5 only A.
    saliency = np.stack([_two_blob_map(), _two_blob_map()])
    boxes = [np.array([[5, 6, 7, 8]]), np.array([[1, 1, 3, 6]])]
    agg = max_box_accuracy(saliency, boxes)
    np.testing.assert_allclose(agg.cam_thresholds, np.arange(0, 1, 0.001), atol=1e-7)
    box_acc = np.asarray(agg.box_acc)
    np.testing.assert_allclose(box_acc[0], [0.0, 0.0, 0.0])
    np.testing.assert_allclose(box_acc[1:501], np.tile([1.0, 1.0, 0.5], (500, 1)))
    np.testing.assert_allclose(box_acc[501:], np.tile([0.5, 0.5, 0.0], (499, 1)))
    np.testing.assert_allclose(agg.best_cam_threshold, [0.001] * 3, rtol=1e-6)
    np.testing.assert_allclose(agg.aggregate, 2.5 / 3, rtol=1e-6)


def test_threshold_behaviour_on_nested_squares():
    # A 2 × 2 core at 1.0 inside a 4 × 4 ring at 0.5, on a 6 × 6 zero background; the
    # ground-truth box is the ring's, (1, 1, 5, 5), area 16.
    scoremap = np.zeros((6, 6), np.float32)
    scoremap[1:5, 1:5] = 0.5
    scoremap[2:4, 2:4] = 1.0
    boxes = np.array([[[1, 1, 5, 5]]])
    result = max_box_accuracy(scoremap[None], boxes, num_thresholds=10)
    box_acc = np.asarray(result.box_acc)
    # τ = 0: the full image, IoU 16/36 ≈ 0.44: right only at δ = 0.3.
    np.testing.assert_array_equal(box_acc[0], [1, 0, 0])
    # τ = 0.1 .. 0.5: the ring's box, IoU 1; τ = 0.5 keeps the 0.5 pixels (map ≥ τ).
    np.testing.assert_array_equal(box_acc[1:6], np.ones((5, 3)))
    # τ = 0.6 .. 0.9: the core's box, IoU 4/16 = 0.25: wrong everywhere.
    np.testing.assert_array_equal(box_acc[6:], np.zeros((4, 3)))
    np.testing.assert_allclose(result.best_cam_threshold, [0.0, 0.1, 0.1], rtol=1e-6)
    # Min-max normalisation makes the metric blind to scale and offset.
    shifted = max_box_accuracy(3.0 * scoremap[None] - 7.0, boxes, num_thresholds=10)
    np.testing.assert_array_equal(shifted.box_acc, box_acc)


def test_constant_map_padding_and_eight_connectivity():
    # A constant map normalises to zeros: τ = 0 keeps the whole image, higher τ nothing.
    constant = np.full((4, 5), 2.0, np.float32)
    # Two diagonal pixels form one 8-connected component with box (0, 0, 2, 2).
    diagonal = np.zeros((4, 5), np.float32)
    diagonal[0, 0] = diagonal[1, 1] = 1.0
    # Zero rows are padding; the third image has no box and is never correct.
    boxes = np.array(
        [
            [[0, 0, 4, 5], [0, 0, 0, 0]],
            [[0, 0, 2, 2], [0, 0, 0, 0]],
            [[0, 0, 0, 0], [0, 0, 0, 0]],
        ]
    )
    result = max_box_accuracy(
        np.stack([constant, diagonal, diagonal]), boxes, iou_thresholds=(0.9,), num_thresholds=4
    )
    box_acc = np.asarray(result.box_acc)[:, 0]
    # Constant: right only at τ = 0. Diagonal: wrong at τ = 0 (whole image, IoU 4/20), right
    # at τ ≥ 0.25 (IoU 1; with 4-connectivity two 1-px boxes would reach only 0.25).
    np.testing.assert_allclose(box_acc, [1 / 3, 1 / 3, 1 / 3, 1 / 3])
    np.testing.assert_array_equal(result.correct[:, 0], [True, False, False])
    alone = max_box_accuracy(diagonal[None], boxes[1:2], iou_thresholds=(0.9,), num_thresholds=4)
    np.testing.assert_array_equal(np.asarray(alone.box_acc)[:, 0], [0, 1, 1, 1])


def _components(foreground):
    """Boxes around 8-connected components, by a plain flood fill."""
    h, w = foreground.shape
    seen = np.zeros_like(foreground)
    boxes = []
    for y in range(h):
        for x in range(w):
            if not foreground[y, x] or seen[y, x]:
                continue
            stack, ys, xs = [(y, x)], [], []
            seen[y, x] = True
            while stack:
                cy, cx = stack.pop()
                ys.append(cy)
                xs.append(cx)
                for ny in range(cy - 1, cy + 2):
                    for nx in range(cx - 1, cx + 2):
                        if 0 <= ny < h and 0 <= nx < w and foreground[ny, nx] and not seen[ny, nx]:
                            seen[ny, nx] = True
                            stack.append((ny, nx))
            boxes.append((min(ys), min(xs), max(ys) + 1, max(xs) + 1))
    return boxes


def _iou(a, b):
    inter = max(0, min(a[2], b[2]) - max(a[0], b[0])) * max(0, min(a[3], b[3]) - max(a[1], b[1]))
    area = lambda r: (r[2] - r[0]) * (r[3] - r[1])
    return inter / (area(a) + area(b) - inter)


def test_matches_brute_force_reference():
    rng = np.random.default_rng(0)
    saliency = rng.random((5, 7, 8))
    boxes = [
        np.array([[0, 0, 3, 3]]),
        np.array([[2, 1, 7, 8], [0, 0, 2, 2]]),
        np.array([[1, 2, 4, 6]]),
        np.array([[0, 0, 7, 8]]),
        np.array([[3, 3, 5, 5]]),
    ]
    iou_thresholds, num_thresholds = (0.2, 0.4, 0.6), 12
    correct = np.zeros((5, num_thresholds, 3), bool)
    for i, (s, gt) in enumerate(zip(saliency, boxes)):
        s = (s - s.min()) / (s.max() - s.min())
        for t in range(num_thresholds):
            found = _components(s >= t / num_thresholds)
            best = max((_iou(c, g) for c in found for g in gt), default=0.0)
            correct[i, t] = [best >= d for d in iou_thresholds]
    box_acc = correct.mean(0)
    result = max_box_accuracy(
        saliency, boxes, iou_thresholds=iou_thresholds, num_thresholds=num_thresholds
    )
    np.testing.assert_allclose(result.box_acc, box_acc, rtol=1e-6)
    np.testing.assert_allclose(result.max_box_acc, box_acc.max(0), rtol=1e-6)
    best_t = box_acc.argmax(0)
    np.testing.assert_array_equal(result.correct, correct[:, best_t, [0, 1, 2]])


def test_rejects_bad_inputs():
    saliency = np.zeros((2, 4, 4))
    with pytest.raises(ValueError, match="B = 2"):
        max_box_accuracy(saliency, [np.array([[0, 0, 1, 1]])])
    with pytest.raises(ValueError, match="shape"):
        max_box_accuracy(saliency, [np.array([0, 0, 1]), np.array([0, 0, 1])])
    with pytest.raises(ValueError, match="iou_thresholds"):
        max_box_accuracy(saliency, np.zeros((2, 1, 4)), iou_thresholds=(0.0,))
    with pytest.raises(ValueError, match="finite"):
        max_box_accuracy(np.full((2, 4, 4), np.nan), np.zeros((2, 1, 4)))
