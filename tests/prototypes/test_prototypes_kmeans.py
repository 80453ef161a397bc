"""k-means against scikit-learn on its digits (from its own seeding, and step for step from
the same initial centres), streaming against in-memory, sample weights against fitting the
subset, empty-cluster re-seeding by hand, the incremental cluster sums against NumPy, the
streaming path's compiled memory at two N, and kmeans_predict against a naive loop.

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
    data = km._Data(x, jnp.zeros(1), x, jnp.sum(x * x, axis=1), weights)
    labels = jnp.asarray([0, 0, 0, 1, 1])
    distances = jnp.asarray([1.0, 0.0, 1.0, 25.0, 16.0])
    sums = jnp.asarray([[3.0], [21.0], [0.0]])
    counts = jnp.asarray([3.0, 2.0, 0.0])
    sums, counts = jax.jit(km._reseed_empty)(data, sums, counts, labels, distances)
    np.testing.assert_allclose(sums, [[3.0], [11.0], [10.0]])
    np.testing.assert_allclose(counts, [3.0, 1.0, 1.0])


def test_same_init_follows_sklearn_step_for_step(noisy_digits):
    # From the same centres, with two far away: both clusters are empty after the first
    # assignment and are re-seeded (the farthest points). The later iterations update the
    # cluster sums from the rows that changed cluster, and also recompute them in full.
    x, _ = noisy_digits
    init = x[np.random.default_rng(10).choice(len(x), 10, replace=False)].copy()
    init[[2, 5]] = 1000.0 + np.arange(2)[:, None]
    result = km.kmeans(jnp.asarray(x), 10, None, init=jnp.asarray(init))
    with threadpool_limits(1):
        reference = KMeans(n_clusters=10, init=init, n_init=1, algorithm="lloyd").fit(x)
    assert int(result.n_iter) == reference.n_iter_ == 12
    np.testing.assert_array_equal(result.labels, reference.labels_)
    np.testing.assert_allclose(result.centroids, reference.cluster_centers_, atol=1e-4)
    np.testing.assert_allclose(float(result.inertia), reference.inertia_, rtol=1e-5)


def test_incremental_sums_equal_a_full_recompute():
    # base + arrived − departed must equal the sums of the new labels, computed here by NumPy.
    # Run 0 moves three rows, one of them of weight 0 (which must not count); run 1 moves
    # none. The capacity leaves padding slots, which must add nothing.
    rng = np.random.default_rng(4)
    n, d, k = 40, 3, 4
    x = rng.standard_normal((n, d)).astype(np.float32)
    weights = rng.uniform(0.5, 2.0, n).astype(np.float32)
    weights[7] = 0.0
    base_labels = rng.integers(0, k, (2, n)).astype(np.int32)
    labels = base_labels.copy()
    labels[0, [3, 7, 20]] = (base_labels[0, [3, 7, 20]] + 1) % k
    data = km._Data(
        jnp.asarray(x),
        jnp.zeros(d),
        jnp.asarray(x * weights[:, None]),
        jnp.sum(jnp.asarray(x) ** 2, axis=1),
        jnp.asarray(weights),
    )
    base = km._segment_sums(data.weighted, data.weights, jnp.asarray(base_labels), k)
    moved = (weights > 0) & (labels != base_labels)
    arrived, departed = jax.jit(km._moved_sums, static_argnums=(4, 5))(
        data, jnp.asarray(moved), jnp.asarray(labels), jnp.asarray(base_labels), k, 5
    )
    for run in range(2):
        want_sums, want_counts = np.zeros((k, d)), np.zeros(k)
        np.add.at(want_sums, labels[run], x.astype(np.float64) * weights[:, None])
        np.add.at(want_counts, labels[run], weights.astype(np.float64))
        got = jax.tree.map(lambda b, a, o, r=run: b[r] + a[r] - o[r], base, arrived, departed)
        np.testing.assert_allclose(got.sums, want_sums, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(got.counts, want_counts, rtol=1e-5)
        np.testing.assert_array_equal(
            got.members, np.bincount(labels[run][weights > 0], minlength=k)
        )
    np.testing.assert_array_equal(departed.members.sum(axis=1), [2, 0])


@pytest.mark.slow  # two compiles, about 10 s
def test_streaming_memory_does_not_grow_with_the_data():
    # Compiled temporary bytes of the streaming fit at two N: the growth per row is the O(N)
    # labels and distances of each run, far less than a float32 row of the data (D · 4 bytes).
    d, k, runs, chunk = 256, 8, 2, 512

    def temp_bytes(n):
        shape = jax.ShapeDtypeStruct
        compiled = km._fit.lower(
            shape((n, d), jnp.float32),
            shape((n,), jnp.float32),
            shape((runs, k, 4), jnp.float32),
            None,
            1e-4,
            max_iter=300,
            chunk_size=chunk,
        ).compile()
        return compiled.memory_analysis().temp_size_in_bytes

    per_row = (temp_bytes(16384) - temp_bytes(4096)) / (16384 - 4096)
    assert 0 < per_row <= 32 * runs + 16 < d * 4 / 4


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
    with pytest.raises(ValueError, match=r"init must be \[k, D\]"):
        km.kmeans(x, 2, key, init=jnp.zeros((3, 2)))
    with pytest.raises(ValueError, match="rng must be a PRNG key"):
        km.kmeans(x, 2, None)


def test_kmeans_module_is_what_the_package_exports():
    # `kmeans` names both the function and its module; the package attribute is the module.
    import protojax.prototypes as prototypes
    from protojax.prototypes.kmeans import kmeans

    assert prototypes.kmeans is km
    assert km.kmeans is kmeans and callable(km.kmeans_predict)
