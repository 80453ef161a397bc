"""Push and nearest-image reductions against sequential NumPy loops (ties, padding rows,
sharded batches), and the high-activation box against a direct loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec

from protojax.prototypes.projection import (
    ProjectionState,
    nearest_init,
    nearest_update,
    projection_init,
    projection_update,
    prune_mask,
    push_statistics,
)
from protojax.train import make_data_mesh

N, H, W, D, P, K, BATCH = 12, 3, 3, 4, 6, 3, 4


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    # Values on a coarse grid make exact ties between patches likely.
    features = rng.integers(0, 3, (N, H, W, D)).astype(np.float32)
    features[9] = features[2]  # the same image twice, in two batches: the first must win
    labels = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2, 2, 1, 0], np.int32)
    valid = np.ones(N, bool)
    valid[11] = False  # a padding row
    prototypes = rng.integers(0, 3, (P, D)).astype(np.float32)
    prototype_class = np.arange(P, dtype=np.int32) // 2
    distances = ((features[..., None, :] - prototypes) ** 2).sum(-1)  # [N, H, W, P]
    return features, labels, valid, prototypes, prototype_class, distances


def naive_push(features, labels, valid, prototype_class, distances):
    best = np.full(P, np.inf)
    index = np.full(P, -1)
    location = np.zeros((P, 2), int)
    patch = np.zeros((P, D), np.float32)
    for j in range(P):
        for n in range(N):
            if not valid[n] or labels[n] != prototype_class[j]:
                continue
            for h in range(H):
                for w in range(W):
                    if distances[n, h, w, j] < best[j]:
                        best[j], index[j] = distances[n, h, w, j], n
                        location[j], patch[j] = (h, w), features[n, h, w]
    return best, index, location, patch


update = jax.jit(projection_update)


def run_push(features, labels, valid, prototype_class, distances, sharding=None):
    state = projection_init(P, D)
    for start in range(0, N, BATCH):
        rows = slice(start, start + BATCH)
        batch = [features[rows], distances[rows], labels[rows], np.arange(N)[rows], valid[rows]]
        if sharding is not None:
            batch = [jax.device_put(a, sharding) for a in batch]
        f, d, y, i, v = batch
        state = update(
            state, f, d, labels=y, indices=i, valid=v, prototype_class=jnp.asarray(prototype_class)
        )
    return jax.device_get(state)


def test_projection_matches_a_sequential_loop(data):
    features, labels, valid, _, prototype_class, distances = data
    expected = naive_push(features, labels, valid, prototype_class, distances)
    state = run_push(features, labels, valid, prototype_class, distances)
    np.testing.assert_array_equal(state.distance, expected[0])
    np.testing.assert_array_equal(state.index, expected[1])
    np.testing.assert_array_equal(state.location, expected[2])
    np.testing.assert_array_equal(state.patch, expected[3])
    # Every prototype took a patch of its own class, and never the padding row.
    assert np.all(labels[state.index] == prototype_class) and 11 not in state.index


def test_projection_sharded_over_four_devices_equals_one(data):
    features, labels, valid, _, prototype_class, distances = data
    mesh = make_data_mesh(jax.devices()[:4])
    sharding = NamedSharding(mesh, PartitionSpec("data"))
    sharded = run_push(features, labels, valid, prototype_class, distances, sharding)
    single = run_push(features, labels, valid, prototype_class, distances)
    for a, b in zip(sharded, single):
        np.testing.assert_array_equal(a, b)


def test_projection_without_classes_searches_every_image(data):
    features, labels, valid, _, _, distances = data
    state = projection_init(P, D)
    state = update(state, features, distances, labels=labels, indices=np.arange(N), valid=valid)
    flat = np.where(valid[:, None, None, None], distances, np.inf).reshape(-1, P)
    np.testing.assert_array_equal(state.distance, flat.min(0))
    first = flat.argmin(0)
    np.testing.assert_array_equal(state.index, first // (H * W))


def test_nearest_matches_a_stable_sort(data):
    _, labels, valid, _, _, distances = data
    min_distances = distances.min(axis=(1, 2))  # [N, P], with ties
    k = 4
    state = nearest_init(P, k)
    step = jax.jit(nearest_update)
    for start in range(0, N, 5):
        rows = slice(start, start + 5)
        state = step(
            state,
            min_distances[rows],
            labels=labels[rows],
            indices=np.arange(N)[rows],
            valid=valid[rows],
        )
    for j in range(P):
        candidates = [n for n in range(N) if valid[n]]
        order = sorted(candidates, key=lambda n: (min_distances[n, j], n))[:k]
        np.testing.assert_array_equal(state.index[j], order)
        np.testing.assert_array_equal(state.label[j], labels[order])
        np.testing.assert_array_equal(state.distance[j], min_distances[order, j])


def test_prune_mask_counts_own_class_neighbours_like_a_loop():
    rng = np.random.default_rng(5)
    labels = rng.integers(0, 3, (9, 6))
    classes = np.arange(9) // 3
    active = rng.random(9) > 0.2
    want = [bool(active[j]) and sum(int(c == classes[j]) for c in labels[j]) < 3 for j in range(9)]
    np.testing.assert_array_equal(prune_mask(labels, classes, active, threshold=3), want)


def test_push_statistics_skip_prototypes_without_a_patch():
    def state(distance):
        p = len(distance)
        zeros = np.zeros(p, np.int32)
        return ProjectionState(np.asarray(distance), zeros, np.zeros((p, 2)), np.zeros((p, 2)))

    got = push_statistics(state([1.0, np.inf, 2.0, 4.5]))
    assert got == {"prototypes_pushed": 3, "mean_push_distance": 2.5}
    assert push_statistics(state([np.inf])) == {
        "prototypes_pushed": 0,
        "mean_push_distance": None,
    }
