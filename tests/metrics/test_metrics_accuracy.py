"""Top-1 accuracy with padding rows, on a hand-computed batch."""

import numpy as np
import pytest

from protojax.metrics import accuracy


def test_accuracy_hand_case_with_ties_and_padding():
    logits = np.array(
        [
            [0.1, 0.9, 0.0],  # predicts 1, label 1: right
            [0.5, 0.5, 0.2],  # tie between 0 and 1: the first, 0; label 1: wrong
            [0.0, 0.0, 3.0],  # predicts 2, label 2: right, but a padding row
            [2.0, 1.0, 0.0],  # predicts 0, label 0: right
        ],
        np.float32,
    )
    labels = np.array([1, 1, 2, 0])
    result = accuracy(logits, labels, valid=np.array([True, True, False, True]))
    np.testing.assert_array_equal(result.per_example, [True, False, True, True])
    np.testing.assert_allclose(result.aggregate, 2 / 3, rtol=1e-6)
    np.testing.assert_allclose(accuracy(logits, labels).aggregate, 3 / 4, rtol=1e-6)
    assert np.isnan(accuracy(logits, labels, valid=np.zeros(4, bool)).aggregate)


def test_accuracy_rejects_bad_shapes():
    with pytest.raises(ValueError, match=r"logits must be \[B, K\]"):
        accuracy(np.zeros(3), np.zeros(3, np.int32))
    with pytest.raises(ValueError, match="labels"):
        accuracy(np.zeros((3, 2)), np.zeros(3, np.float32))
    with pytest.raises(ValueError, match="valid"):
        accuracy(np.zeros((3, 2)), np.zeros(3, np.int32), valid=np.ones(2, bool))


def test_top_k_accuracy_hand_case_with_ties():
    from protojax.metrics import top_k_accuracy

    logits = np.array(
        [
            [0.1, 0.9, 0.5, 0.0],  # top 2: 1, 2; label 2: hit
            [0.5, 0.5, 0.5, 0.9],  # top 2: 3, then the tie's first, 0; label 1: miss
            [3.0, 2.0, 1.0, 0.0],  # top 2: 0, 1; label 3: miss, but padding
            [0.0, 1.0, 2.0, 3.0],  # top 2: 3, 2; label 3: hit
        ],
        np.float32,
    )
    labels = np.array([2, 1, 3, 3])
    result = top_k_accuracy(logits, labels, k=2, valid=np.array([True, True, False, True]))
    np.testing.assert_array_equal(result.per_example, [True, False, False, True])
    np.testing.assert_allclose(result.aggregate, 2 / 3, rtol=1e-6)
    assert float(top_k_accuracy(logits, labels, k=4).aggregate) == 1.0
    np.testing.assert_allclose(
        top_k_accuracy(logits, labels, k=1).aggregate, accuracy(logits, labels).aggregate
    )
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(logits, labels, k=0)
