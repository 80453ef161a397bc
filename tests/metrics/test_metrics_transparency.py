"""Transparency metrics against hand-computed cases."""

import numpy as np

from protojax.metrics import (
    class_usage,
    last_layer_structure,
    mask_boxes,
    near_duplicates,
    nearest_labels,
    source_purity,
)


def test_class_usage_hand_case():
    # 4 prototypes, 2 per class; prototype 3 inactive. Image winners: 0, 0, 2, 2 (row 3's
    # best, prototype 3, is inactive, so 2 wins; all-negative row 1 still picks its largest).
    similarities = np.array(
        [[5.0, 1.0, 0.0, 0.0], [-1.0, -3.0, -2.0, -9.0], [0.0, 1.0, 4.0, 0.0], [0.0, 0.0, 1.0, 7.0]]
    )
    usage = class_usage(
        similarities, np.array([0, 0, 1, 1]), num_classes=2, active=np.array([1, 1, 1, 0], bool)
    )
    np.testing.assert_array_equal(usage.counts, [2, 0, 2, 0])
    np.testing.assert_array_equal(usage.unused, [1])
    np.testing.assert_allclose(usage.per_class, [0.5, 1.0])
    np.testing.assert_allclose(usage.fraction_used, 2 / 3)


def test_near_duplicates_groups_transitively():
    p = np.array(
        [[1.0, 0.0], [1.0, 0.0], [1.0005, 0.0], [0.0, 1.0], [0.0, 2.0], [1.0, 0.0]], np.float32
    )
    result = near_duplicates(p, rtol=1e-3)
    # {0, 1, 2, 5} is one group (3 redundant); 3 and 4 are far apart.
    assert result.count == 3
    assert result.identical == 2  # 1 and 5 equal 0; 2 is only near
    pairs = {tuple(pair) for pair in result.pairs}
    assert pairs == {(0, 1), (0, 2), (0, 5), (1, 2), (1, 5), (2, 5)}
    # Leaving out prototype 0 and 1: 2 and 5 remain near duplicates, in original indices.
    active = np.array([0, 0, 1, 1, 1, 1], bool)
    kept = near_duplicates(p, active=active, rtol=1e-3)
    assert kept.count == 1 and kept.identical == 0
    np.testing.assert_array_equal(kept.pairs, [[2, 5]])


def test_last_layer_structure_hand_case():
    weights = np.array([[1.0, -0.5], [0.8, 0.0], [0.0, 1.0], [-0.2, 0.5]])
    classes = np.array([0, 0, 1, 1])
    s = last_layer_structure(weights, classes)
    assert s.sparsity == 2 / 8
    assert s.own_positive == 1.0  # 1.0, 0.8, 1.0, 0.5
    assert s.other_negative == 2 / 4  # -0.5, 0.0, 0.0, -0.2
    assert s.other_zero == 2 / 4
    np.testing.assert_allclose(s.own_mean, (1.0 + 0.8 + 1.0 + 0.5) / 4)
    np.testing.assert_allclose(s.other_mean, (-0.5 + 0.0 + 0.0 - 0.2) / 4)
    inactive = last_layer_structure(weights, classes, active=np.array([1, 1, 1, 0], bool))
    assert inactive.other_negative == 1 / 3
    free = last_layer_structure(weights)
    assert free.sparsity == 2 / 8 and np.isnan(free.own_positive)


def test_source_purity_and_nearest_labels():
    classes = np.array([0, 0, 1])
    assert source_purity(np.array([0, 1, 1]), classes) == 2 / 3
    assert source_purity(np.array([0, -1, 1]), classes) == 1.0  # unpushed left out
    similarities = np.array([[3.0, 0.0, 1.0], [2.0, 5.0, 0.0], [1.0, 4.0, 9.0], [0.0, 4.0, 2.0]])
    labels = np.array([0, 1, 1, 0])
    near = nearest_labels(similarities, labels, k=2)
    # prototype 0: images 0, 1; prototype 1: image 1, then the tie 2 before 3; prototype 2: 2, 3
    np.testing.assert_array_equal(near, [[0, 1], [1, 1], [1, 0]])
    np.testing.assert_allclose(source_purity(near, classes), (0.5 + 0.0 + 0.5) / 3)


def test_mask_boxes():
    masks = np.zeros((2, 5, 6), bool)
    masks[0, 1:3, 2:5] = True
    masks[0, 4, 0] = True
    boxes = mask_boxes(masks)
    np.testing.assert_array_equal(boxes[:, 0], [[1, 0, 5, 5], [0, 0, 0, 0]])
