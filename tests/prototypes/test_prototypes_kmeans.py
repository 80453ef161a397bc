"""k-means against scikit-learn on its digits, streaming against in-memory, sample weights
against fitting the subset, empty-cluster re-seeding by hand, and kmeans_predict against a
naive loop.

Compiles are the cost here: every test that can reuses the program for (1797 × 64, k = 10,
n_init = 10, in memory).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import load_digits
from threadpoolctl import threadpool_limits

from protojax.prototypes import kmeans as km


@pytest.fixture(scope="module")
def digits():
    data = load_digits()
    return data.data.astype(np.float32), data.target


@pytest.fixture(scope="module")
def noisy_digits(digits):
    # Continuous values, so that no distance ties depend on float32 summation order.
    x, y = digits
    noise = np.random.default_rng(0).normal(0.0, 0.05, x.shape).astype(np.float32)
    return x + noise, y


def naive_labels_and_inertia(x, centroids, weights=None):
    x64, c64 = np.asarray(x, np.float64), np.asarray(centroids, np.float64)
    squared = ((x64[:, None, :] - c64[None]) ** 2).sum(-1)
    weights = np.ones(len(x)) if weights is None else np.asarray(weights, np.float64)
    return squared.argmin(1), float((weights * squared.min(1)).sum())


@pytest.mark.parametrize("k", [10, 30])
def test_inertia_within_one_percent_of_sklearn_on_digits(digits, k):
    x, _ = digits
    result = km.kmeans(jnp.asarray(x), k, jax.random.key(0))
    with threadpool_limits(1):  # OpenMP threads spin-wait badly on a shared, busy CPU
        reference = KMeans(n_clusters=k, n_init=10, random_state=0).fit(x)
    assert abs(float(result.inertia) - reference.inertia_) <= 0.01 * reference.inertia_
    # The result is self-consistent: labels are the nearest centroids, inertia their cost.
    labels, inertia = naive_labels_and_inertia(x, result.centroids)
    np.testing.assert_array_equal(result.labels, labels)
    np.testing.assert_allclose(float(result.inertia), inertia, rtol=1e-5)
    assert result.centroids.shape == (k, 64) and result.labels.dtype == jnp.int32
    assert 1 <= int(result.n_iter) <= 300


def test_streaming_agrees_with_in_memory(noisy_digits):
    x, _ = noisy_digits
    in_memory = km.kmeans(jnp.asarray(x), 10, jax.random.key(1))
    # 1797 rows in chunks of 256: the last chunk overlaps the one before it.
    streamed = km.kmeans(jnp.asarray(x), 10, jax.random.key(1), batch_size=256)
    np.testing.assert_array_equal(streamed.labels, in_memory.labels)
    np.testing.assert_allclose(streamed.centroids, in_memory.centroids, rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(float(streamed.inertia), float(in_memory.inertia), rtol=1e-5)
    assert int(streamed.n_iter) == int(in_memory.n_iter)


def test_zero_weights_equal_fitting_the_subset(noisy_digits):
    x, y = noisy_digits
    subset = y == 3
    weighted = km.kmeans(
        jnp.asarray(x), 10, jax.random.key(2), weights=jnp.asarray(subset, jnp.float32)
    )
    alone = km.kmeans(jnp.asarray(x[subset]), 10, jax.random.key(2))
    np.testing.assert_allclose(weighted.centroids, alone.centroids, rtol=1e-5, atol=1e-4)
    np.testing.assert_array_equal(np.asarray(weighted.labels)[subset], alone.labels)
    np.testing.assert_allclose(float(weighted.inertia), float(alone.inertia), rtol=1e-5)
    assert int(weighted.n_iter) == int(alone.n_iter)
    # Rows of weight 0 still get their nearest centroid.
    labels, _ = naive_labels_and_inertia(x, weighted.centroids)
    np.testing.assert_array_equal(weighted.labels, labels)


def test_empty_cluster_takes_the_farthest_point():
    # Hand case: 1-D points 0, 1, 2, 10, 11 in clusters {0, 1, 2} -> 0 and {10, 11} -> 1;
    # cluster 2 is empty. The point farthest from its centre (10, at squared distance 25 from
    # the centre 5 it was assigned to) moves into cluster 2 and leaves cluster 1.
    x = jnp.asarray([[0.0], [1.0], [2.0], [10.0], [11.0]])
    weights = jnp.ones(5)
    data = km._Data(x.T, jnp.zeros(1), x, jnp.sum(x * x, axis=1), weights)
    labels = jnp.asarray([0, 0, 0, 1, 1])
    distances = jnp.asarray([1.0, 0.0, 1.0, 25.0, 16.0])
    sums = jnp.asarray([[3.0], [21.0], [0.0]])
    counts = jnp.asarray([3.0, 2.0, 0.0])
    sums, counts = jax.jit(km._reseed_empty)(data, sums, counts, labels, distances)
    np.testing.assert_allclose(sums, [[3.0], [11.0], [10.0]])
    np.testing.assert_allclose(counts, [3.0, 1.0, 1.0])


def test_kmeans_predict_matches_a_naive_loop():
    rng = np.random.default_rng(3)
    centroids = rng.standard_normal((6, 5)).astype(np.float32)
    centroids[4] = centroids[1]  # a duplicate: ties go to the first index
    x = np.concatenate([rng.standard_normal((40, 5)), centroids[[1, 4]]]).astype(np.float32)
    want = []
    for row in x.astype(np.float64):
        best, best_j = np.inf, -1
        for j, c in enumerate(centroids.astype(np.float64)):
            d = float(((row - c) ** 2).sum())
            if d < best:
                best, best_j = d, j
        want.append(best_j)
    got = jax.jit(km.kmeans_predict)(x, centroids)
    np.testing.assert_array_equal(got, want)
    assert got.dtype == jnp.int32 and want[-2:] == [1, 1]


def test_kmeans_rejects_bad_arguments():
    x = jnp.zeros((5, 2))
    key = jax.random.key(0)
    with pytest.raises(ValueError, match=r"x must be \[N, D\]"):
        km.kmeans(jnp.zeros(5), 2, key)
    with pytest.raises(ValueError, match="k must be between 1"):
        km.kmeans(x, 6, key)
    with pytest.raises(ValueError, match="weights must be"):
        km.kmeans(x, 2, key, weights=jnp.ones(4))
    with pytest.raises(ValueError, match="non-negative"):
        km.kmeans(x, 2, key, weights=jnp.asarray([1.0, -1.0, 1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match="at least 3 rows of positive weight"):
        km.kmeans(x, 3, key, weights=jnp.asarray([1.0, 1.0, 0.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="batch_size"):
        km.kmeans(x, 2, key, batch_size=0)


def test_kmeans_module_is_what_the_package_exports():
    # `kmeans` names both the function and its module; the package attribute is the module.
    import protojax.prototypes as prototypes
    from protojax.prototypes.kmeans import kmeans

    assert prototypes.kmeans is km
    assert km.kmeans is kmeans and callable(km.kmeans_predict)
