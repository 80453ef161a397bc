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
