"""KMEx's prototype diversity entropy against hand-computed values and a float64 formula."""

import math

import numpy as np
import pytest
from scipy.special import softmax
from scipy.stats import entropy

from protojax.metrics import prototype_diversity_entropy


def test_two_prototypes_at_distance_two_by_hand():
    # d = 2 off the diagonal: S_12 = log(3 / 2.0001); on it S_11 = log(1 / 1e-4) = log(1e4).
    # Row softmax: σ_12 = (3 / 2.0001) / (1e4 + 3 / 2.0001) ≈ 1.49966e-4, σ_11 = 1 − σ_12.
    # Entropy / log 2 ≈ 0.0021214, the same for both rows by symmetry.
    ratio = 3 / 2.0001
    off = ratio / (1e4 + ratio)
    expected = -(off * math.log(off) + (1 - off) * math.log(1 - off)) / math.log(2)
    assert abs(expected - 0.0021214) < 1e-6
    prototypes = np.array([[0.0, 0.0], [2.0, 0.0]], np.float32)
    result = prototype_diversity_entropy(prototypes)
    np.testing.assert_allclose(result.per_example, [expected, expected], rtol=1e-4)
    np.testing.assert_allclose(result.aggregate, expected, rtol=1e-4)
    # Squared: d = 4, so S_12 = log(5 / 4.0001).
    ratio = 5 / 4.0001
    off = ratio / (1e4 + ratio)
    squared = -(off * math.log(off) + (1 - off) * math.log(1 - off)) / math.log(2)
    np.testing.assert_allclose(
        prototype_diversity_entropy(prototypes, squared=True).aggregate, squared, rtol=1e-4
    )


def _reference(prototypes, squared):
    p = prototypes.astype(np.float64)
    d = np.sqrt(((p[:, None, :] - p[None, :, :]) ** 2).sum(-1))
    d = d**2 if squared else d
    s = np.log((d + 1) / (d + 1e-4))
    return entropy(softmax(s, axis=1), axis=1, base=len(p))


@pytest.mark.parametrize("squared", [False, True])
def test_matches_float64_formula_with_large_prototypes(squared):
    # With norms around 60, float32 rounding in ‖p‖² − 2⟨p, p⟩ + ‖p‖² leaves d_ii up to ≈ 0.02
    # unless the diagonal is set to 0: S_ii would drop from log(1e4) ≈ 9.21 to ≈ 3.8 and the
    # entropy of those rows would rise from 0.0032 to 0.2 or more.
    prototypes = 30.0 * np.random.default_rng(0).normal(size=(7, 4)).astype(np.float32)
    result = prototype_diversity_entropy(prototypes, squared=squared)
    expected = _reference(prototypes, squared)
    np.testing.assert_allclose(result.per_example, expected, rtol=2e-3)
    np.testing.assert_allclose(result.aggregate, expected.mean(), rtol=2e-3)


def test_spread_prototypes_are_more_diverse_and_single_prototype_is_one():
    base = np.random.default_rng(1).normal(size=(5, 3)).astype(np.float32)
    near = prototype_diversity_entropy(0.1 * base).aggregate
    far = prototype_diversity_entropy(10.0 * base).aggregate
    assert near > far  # close prototypes have large off-diagonal similarities
    one = prototype_diversity_entropy(np.ones((1, 3), np.float32))
    np.testing.assert_array_equal(one.per_example, [1.0])
    with pytest.raises(ValueError, match=r"\[K·M, D\]"):
        prototype_diversity_entropy(np.zeros((2, 3, 4)))
