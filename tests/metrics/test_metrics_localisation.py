"""Pointing game, relevance rank accuracy and relevance mass accuracy on hand-made cases."""

import jax.numpy as jnp
import numpy as np
import pytest

from protojax.metrics import pointing_game, relevance_mass_accuracy, relevance_rank_accuracy


def _mask(shape, pixels):
    mask = np.zeros(shape, bool)
    for y, x in pixels:
        mask[y, x] = True
    return mask


def test_pointing_game_hand_cases():
    saliency = np.zeros((4, 5, 5), np.float32)
    saliency[0, 1, 3] = 2.0  # peak (1, 3), inside its mask
    saliency[1, 4, 4] = 1.0  # peak (4, 4); mask pixels at distance 2 and √2 away
    saliency[2] = 1.0  # all tied: the peak is the first pixel, (0, 0)
    saliency[3, 2, 2] = 1.0  # empty mask: always a miss
    masks = np.stack(
        [
            _mask((5, 5), [(1, 3)]),
            _mask((5, 5), [(2, 4), (3, 3)]),
            _mask((5, 5), [(0, 0)]),
            _mask((5, 5), []),
        ]
    )
    # At tolerance 0 only the peak pixel counts: hits for 0 and 2.
    result = pointing_game(saliency, masks)
    np.testing.assert_array_equal(result.per_example, [True, False, True, False])
    assert float(result.aggregate) == 0.5
    # (3, 3) is √2 ≈ 1.41 from (4, 4): outside a disc of radius 1, inside one of 1.5.
    assert not bool(pointing_game(saliency, masks, tolerance=1).per_example[1])
    assert bool(pointing_game(saliency, masks, tolerance=1.5).per_example[1])
    # The disc is closed: (2, 4) at distance exactly 2 is a hit at tolerance 2 for the mask alone.
    only_far = masks.copy()
    only_far[1] = _mask((5, 5), [(2, 4)])
    assert bool(pointing_game(saliency, only_far, tolerance=2).per_example[1])
    assert not bool(pointing_game(saliency, only_far, tolerance=1.9).per_example[1])
    # The tie rule: with the mask on (0, 1) instead of (0, 0), the tied map misses.
    shifted = masks.copy()
    shifted[2] = _mask((5, 5), [(0, 1)])
    assert not bool(pointing_game(saliency, shifted).per_example[2])


def test_pointing_game_accepts_trailing_singleton_channel_and_rejects_bad_shapes():
    saliency = np.zeros((1, 3, 3, 1), np.float32)
    saliency[0, 2, 1, 0] = 1.0
    assert bool(pointing_game(saliency, _mask((3, 3), [(2, 1)])[None]).per_example[0])
    with pytest.raises(ValueError, match="reduce_channels"):
        pointing_game(np.zeros((1, 3, 3, 3)), np.zeros((1, 3, 3), bool))
    with pytest.raises(ValueError, match="same"):
        pointing_game(np.zeros((1, 3, 3)), np.zeros((1, 3, 4), bool))
    with pytest.raises(ValueError, match="batch size"):
        pointing_game(np.zeros((2, 3, 3)), np.zeros((1, 3, 3), bool))
    with pytest.raises(ValueError, match="tolerance"):
        pointing_game(np.zeros((1, 3, 3)), np.zeros((1, 3, 3), bool), tolerance=-1)


def test_relevance_rank_accuracy_hand_cases():
    graded = np.arange(9, 0, -1, dtype=np.float32).reshape(3, 3)  # 9 at (0, 0) ... 1 at (2, 2)
    tied = np.zeros((3, 3), np.float32)
    tied[0, 0] = -0.0  # -0.0 ties with 0.0
    saliency = np.stack([graded, tied, graded])
    masks = np.stack(
        [
            _mask((3, 3), [(0, 0), (1, 1), (2, 2)]),  # K = 3, top-3 is the first row: 1 of 3
            _mask((3, 3), [(0, 1), (2, 2)]),  # K = 2, all tied: top-2 = (0, 0), (0, 1): 1 of 2
            _mask((3, 3), []),  # empty: NaN, left out of the mean
        ]
    )
    result = relevance_rank_accuracy(saliency, masks)
    np.testing.assert_allclose(result.per_example[:2], [1 / 3, 1 / 2], rtol=1e-6)
    assert np.isnan(result.per_example[2])
    np.testing.assert_allclose(result.aggregate, (1 / 3 + 1 / 2) / 2, rtol=1e-6)
    assert np.isnan(relevance_rank_accuracy(saliency[2:], masks[2:]).aggregate)


def test_relevance_rank_accuracy_matches_naive_loop():
    rng = np.random.default_rng(0)
    # Small integers make many ties, which the loop breaks by index as documented.
    saliency = rng.integers(-3, 4, size=(6, 7, 5)).astype(np.float32)
    masks = rng.random((6, 7, 5)) < 0.3
    expected = []
    for s, m in zip(saliency, masks):
        s, m = s.ravel(), m.ravel()
        k = m.sum()
        order = sorted(range(s.size), key=lambda i: (-s[i], i))
        expected.append(np.mean([m[i] for i in order[:k]]) if k else np.nan)
    result = relevance_rank_accuracy(saliency, masks)
    np.testing.assert_allclose(result.per_example, expected, rtol=1e-6)
    np.testing.assert_allclose(result.aggregate, np.nanmean(expected), rtol=1e-6)


def test_relevance_mass_accuracy_hand_cases():
    saliency = np.array(
        [
            [[1.0, -2.0], [3.0, 0.0]],  # R⁺ = 1 + 3 = 4, inside (0,0),(1,1): 1 → 0.25
            [[-1.0, -2.0], [-3.0, 0.0]],  # no positive relevance: none inside, 0
            [[1.0, 1.0], [1.0, 1.0]],  # empty mask: NaN
            [[2.0, 2.0], [0.0, -5.0]],  # R⁺ = 4, inside (0,1),(1,1): 2 → 0.5
        ],
        np.float32,
    )
    masks = np.stack(
        [
            _mask((2, 2), [(0, 0), (1, 1)]),
            _mask((2, 2), [(0, 0)]),
            _mask((2, 2), []),
            _mask((2, 2), [(0, 1), (1, 1)]),
        ]
    )
    result = relevance_mass_accuracy(saliency, masks)
    per_example = np.asarray(result.per_example)
    np.testing.assert_allclose(per_example[[0, 1, 3]], [0.25, 0.0, 0.5], rtol=1e-6)
    assert np.isnan(per_example[2])
    np.testing.assert_allclose(result.aggregate, 0.75 / 3, rtol=1e-6)


def test_relevance_mass_accuracy_matches_numpy_formula():
    rng = np.random.default_rng(1)
    saliency = rng.normal(size=(5, 6, 6)).astype(np.float32)
    masks = jnp.asarray(rng.random((5, 6, 6)) < 0.4)
    positive = np.maximum(saliency.astype(np.float64), 0)
    expected = (positive * np.asarray(masks)).sum((1, 2)) / positive.sum((1, 2))
    np.testing.assert_allclose(
        relevance_mass_accuracy(saliency, masks).per_example, expected, rtol=1e-5
    )


# Maps without structure, on a 3 × 4 grid whose mask is the 3 pixels (1, 1), (1, 2), (2, 3).
_GRID = (3, 4)
_INSIDE = [(1, 1), (1, 2), (2, 3)]


def _structureless_maps():
    """Zero, constant positive, constant negative and all-negative (varying) maps."""
    varying = -1.0 - np.arange(12, dtype=np.float32).reshape(_GRID)  # largest at (0, 0)
    varying[2, 3] = -0.5  # the least negative: the peak
    return np.stack([np.zeros(_GRID), np.full(_GRID, 2.0), np.full(_GRID, -3.0), varying]).astype(
        np.float32
    )


def test_structureless_maps_have_the_documented_values():
    saliency = _structureless_maps()
    masks = np.stack([_mask(_GRID, _INSIDE)] * 4)
    # Pointing game: constant maps peak at (0, 0), outside; the varying one at (2, 3), inside.
    np.testing.assert_array_equal(
        pointing_game(saliency, masks).per_example, [False, False, False, True]
    )
    # Relevance rank, K = 3: constant maps take the first three pixels in row-major order,
    # (0, 0), (0, 1), (0, 2), none inside; the varying map ranks (2, 3), (0, 0), (0, 1): 1 of 3.
    np.testing.assert_allclose(
        relevance_rank_accuracy(saliency, masks).per_example, [0, 0, 0, 1 / 3], rtol=1e-6
    )
    # Relevance mass: only the constant positive map has positive relevance, 3 of 12 pixels
    # inside; the others have none inside: 0, never NaN.
    mass = relevance_mass_accuracy(saliency, masks)
    np.testing.assert_allclose(mass.per_example, [0, 0.25, 0, 0], rtol=1e-6)
    assert float(mass.aggregate) == pytest.approx(0.25 / 4)


def test_empty_masks_are_undefined_or_misses():
    saliency = _structureless_maps()
    masks = np.zeros((4, *_GRID), bool)
    assert not np.any(pointing_game(saliency, masks, tolerance=10).per_example)
    for metric in (relevance_rank_accuracy, relevance_mass_accuracy):
        result = metric(saliency, masks)
        assert np.all(np.isnan(result.per_example)) and np.isnan(result.aggregate)
