"""Diversity figures of prototypes given as arrays, against hand-computed cases and NumPy."""

import numpy as np

from protojax.metrics import (
    class_coverage,
    class_log_volumes,
    mean_pairwise_distance,
    prototype_diversity,
    prototype_diversity_entropy,
)


def test_mean_pairwise_distance_hand_case():
    p = np.array([[0.0, 0.0], [3.0, 0.0], [0.0, 4.0], [9.0, 9.0]])
    result = mean_pairwise_distance(
        p, prototype_class=np.array([0, 0, 1, 1]), active=np.array([1, 1, 1, 0], bool)
    )
    np.testing.assert_allclose(result.all, (3 + 4 + 5) / 3)
    np.testing.assert_allclose(result.within_class, 3.0)  # only the pair (0, 1) is in one class
    assert np.isnan(mean_pairwise_distance(p[:1]).all)


def test_class_log_volumes_match_slogdet():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(6, 4)).astype(np.float32)
    classes = np.array([0, 0, 1, 1, 1, 2])
    active = np.array([1, 1, 1, 1, 0, 1], bool)
    volumes = class_log_volumes(p, classes, num_classes=4, active=active)
    for k, rows in enumerate([[0, 1], [2, 3], [5]]):
        expected = 0.5 * np.linalg.slogdet(p[rows].astype(np.float64) @ p[rows].T)[1]
        np.testing.assert_allclose(volumes[k], expected, rtol=1e-4)
    assert np.isnan(volumes[3])


def test_class_coverage_full_and_partial():
    # A class on a square grid; one prototype in its corner covers only its nearest half.
    grid = np.stack(np.meshgrid(np.arange(5.0), np.arange(5.0)), -1).reshape(-1, 2)
    latents = np.concatenate([grid, grid + 100.0]).astype(np.float32)
    labels = np.repeat([0, 1], 25)
    prototypes = np.array([[0.0, 0.0], [102.0, 102.0]], np.float32)
    cover = class_coverage(latents, labels, prototypes, np.array([0, 1]), num_classes=2)
    # Class 1's prototype sits in the middle: its half is a diamond around it.
    assert 0 < cover[0] < cover[1] < 1
    own = np.linalg.norm(grid, axis=1)
    sample = grid[own <= np.median(own)]
    assert sample.shape[0] >= 13


def test_prototype_diversity_gathers_the_figures():
    rng = np.random.default_rng(0)
    p = rng.normal(size=(4, 3)).astype(np.float32)
    latents = rng.normal(size=(40, 3)).astype(np.float32)
    labels = np.repeat([0, 1], 20)
    similarities = -np.linalg.norm(latents[:, None] - p[None], axis=-1)
    result = prototype_diversity(
        p,
        np.array([0, 0, 1, 1]),
        num_classes=2,
        latents=latents,
        labels=labels,
        similarities=similarities,
    )
    np.testing.assert_allclose(result.entropy, prototype_diversity_entropy(p).aggregate, rtol=1e-6)
    assert result.log_volume.shape == (2,) and np.all(np.isfinite(result.log_volume))
    # Davies–Bouldin by hand: each latent to its nearest prototype.
    assign = np.argmax(similarities, 1)
    spread = np.array(
        [np.linalg.norm(latents[assign == i] - p[i], axis=1).mean() for i in range(4)]
    )
    gaps = np.linalg.norm(p[:, None] - p[None], axis=-1)
    np.fill_diagonal(gaps, 1.0)
    ratio = (spread[:, None] + spread[None]) / gaps
    np.fill_diagonal(ratio, -np.inf)
    np.testing.assert_allclose(result.davies_bouldin, ratio.max(1).mean(), rtol=1e-4)
    assert result.coverage.shape == (2,)
    free = prototype_diversity(p, None, num_classes=2)
    assert free.log_volume.size == 0 and np.isnan(free.davies_bouldin) and free.coverage is None
