"""Class centroids (KMEx): the per-class k-means against scikit-learn, its bookkeeping against
NumPy, and the nearest and soft centroid classifiers against their formulas."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans

from protojax.prototypes.centroids import (
    class_kmeans,
    nearest_centroid_logits,
    soft_centroid_log_probabilities,
)


def _blobs(rng, sizes, per_class=3, dim=3):
    """Classes of unequal sizes, each `per_class` well-separated blobs."""
    xs, ys = [], []
    for c, n in enumerate(sizes):
        centres = rng.normal(size=(per_class, dim)) * 10 + 40 * c
        member = np.arange(n) % per_class
        xs.append(centres[member] + rng.normal(size=(n, dim)) * 0.3)
        ys.append(np.full(n, c))
    order = rng.permutation(sum(sizes))  # classes interleaved, as in a dataset
    return np.concatenate(xs)[order].astype(np.float32), np.concatenate(ys)[order]


def test_class_kmeans_matches_sklearn_per_class_and_numpy_bookkeeping():
    rng = np.random.default_rng(0)
    x, y = _blobs(rng, (17, 30, 9))
    fit = class_kmeans(x, y, num_classes=3, per_class=3, rng=jax.random.key(0), n_init=2)
    centroids = np.asarray(fit.centroids)
    assignment = np.asarray(fit.assignment)
    assert centroids.shape == (9, 3)
    np.testing.assert_array_equal(fit.prototype_class, np.repeat(np.arange(3), 3))
    for c in range(3):
        rows = x[y == c]
        ref = KMeans(n_clusters=3, n_init=10, random_state=0).fit(rows)
        ours = centroids[3 * c : 3 * c + 3]
        # The same clusters, in some order.
        match = np.argmin(((ours[:, None] - ref.cluster_centers_[None]) ** 2).sum(-1), axis=1)
        assert sorted(match) == [0, 1, 2]
        np.testing.assert_allclose(ours, ref.cluster_centers_[match], atol=1e-4)
        np.testing.assert_allclose(fit.inertia[c], ref.inertia_, rtol=1e-4)
        # Each row is assigned to the nearest centroid of its own class.
        d = ((rows[:, None] - ours[None]) ** 2).sum(-1)
        np.testing.assert_array_equal(assignment[y == c], 3 * c + np.argmin(d, axis=1))
    np.testing.assert_array_equal(fit.importance, np.bincount(assignment, minlength=9))
    assert int(np.sum(fit.importance)) == len(x)
    for j in range(9):
        members = np.flatnonzero(y == j // 3)
        d = ((x[members] - centroids[j]) ** 2).sum(-1)
        assert int(fit.nearest[j]) == members[np.argmin(d)]


def test_class_kmeans_refuses_a_class_with_too_few_rows():
    x = np.zeros((7, 2), np.float32)
    y = np.array([0, 0, 0, 1, 1, 0, 0])
    with pytest.raises(ValueError, match=r"Classes \[1\] have fewer than 3 rows"):
        class_kmeans(x, y, num_classes=2, per_class=3, rng=jax.random.key(0))


def test_nearest_and_soft_centroid_classifiers_match_their_formulas():
    rng = np.random.default_rng(1)
    z = rng.normal(size=(6, 4)).astype(np.float32)
    centroids = rng.normal(size=(3 * 2, 4)).astype(np.float32)  # K = 3, M = 2
    d = np.sqrt(((z[:, None] - centroids[None]) ** 2).sum(-1))  # [B, P]
    logits = np.asarray(nearest_centroid_logits(jnp.asarray(z), centroids, num_classes=3))
    expected = -np.min((d**2).reshape(6, 3, 2), axis=-1)
    np.testing.assert_allclose(logits, expected, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(np.argmax(logits, 1), np.argmin(d, axis=1) // 2)

    s = np.log(d + 1) - np.log(d + 1e-4)
    p = np.exp(s - s.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    log_p = soft_centroid_log_probabilities(jnp.asarray(z), centroids, num_classes=3)
    np.testing.assert_allclose(np.exp(log_p), p.reshape(6, 3, 2).sum(-1), rtol=1e-5, atol=1e-6)
