"""Distance kernels against naive float64 per-element loops: random inputs, large magnitudes
where cancellation matters, the gradient of l2 at 0, ties and the `valid` mask."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.prototypes import distances

squared_jit = jax.jit(distances.squared_l2_distances)


def naive_squared(features, prototypes):
    """Σ_d (z_d − p_d)² per (location, prototype), in float64 loops."""
    z = np.asarray(features, np.float64).reshape(-1, features.shape[-1])
    p = np.asarray(prototypes, np.float64)
    out = np.zeros((len(z), len(p)))
    for i in range(len(z)):
        for j in range(len(p)):
            out[i, j] = sum((z[i, c] - p[j, c]) ** 2 for c in range(z.shape[1]))
    return out.reshape(*features.shape[:-1], len(p))


def test_squared_l2_matches_naive_loop_on_a_feature_map():
    rng = np.random.default_rng(0)
    features = rng.standard_normal((2, 3, 3, 5)).astype(np.float32)
    prototypes = rng.standard_normal((4, 5)).astype(np.float32)
    got = squared_jit(features, prototypes)
    assert got.shape == (2, 3, 3, 4) and got.dtype == jnp.float32
    np.testing.assert_allclose(got, naive_squared(features, prototypes), rtol=1e-5, atol=1e-5)


def test_squared_l2_survives_a_large_common_offset():
    # Sigmoid-like features around a large offset: ‖z‖² ≈ 8e6 while distances are ≈ 16.
    # The expansion alone would lose them to cancellation; the shift by the mean prototype
    # keeps float32 accuracy relative to the distances themselves.
    rng = np.random.default_rng(1)
    features = (1000.0 + rng.standard_normal((6, 8))).astype(np.float32)
    prototypes = (1000.0 + rng.standard_normal((5, 8))).astype(np.float32)
    np.testing.assert_allclose(
        squared_jit(features, prototypes), naive_squared(features, prototypes), rtol=1e-4
    )


def test_squared_l2_error_is_bounded_by_the_norms_for_spread_large_vectors():
    # Large, spread prototypes and features very close to them: the cancellation error of
    # ‖z‖² − 2⟨z, p⟩ + ‖p‖² is inherent, bounded by float32 epsilon times the norms; the
    # clamp keeps every distance non-negative.
    rng = np.random.default_rng(2)
    prototypes = (1e3 * rng.standard_normal((4, 16))).astype(np.float32)
    features = (prototypes[[0, 1, 2, 3, 0]] + 1e-2 * rng.standard_normal((5, 16))).astype(
        np.float32
    )
    got = np.asarray(squared_jit(features, prototypes), np.float64)
    want = naive_squared(features, prototypes)
    norms = (features.astype(np.float64) ** 2).sum(1)[:, None] + (
        prototypes.astype(np.float64) ** 2
    ).sum(1)[None, :]
    assert np.all(got >= 0)
    assert np.all(np.abs(got - want) <= 1e-6 * norms)


def test_l2_matches_naive_and_has_a_finite_gradient_at_zero():
    rng = np.random.default_rng(3)
    prototypes = rng.standard_normal((3, 4)).astype(np.float32)
    features = np.stack([prototypes[1], rng.standard_normal(4).astype(np.float32)])
    np.testing.assert_allclose(
        jax.jit(distances.l2_distances)(features, prototypes)[1],
        np.sqrt(naive_squared(features, prototypes))[1],
        rtol=1e-5,
    )

    @jax.jit
    @jax.grad
    def gradient(z, j):
        return distances.l2_distances(z[None], prototypes)[0, j]

    at_zero = gradient(jnp.asarray(prototypes[1]), 1)
    assert np.all(np.isfinite(at_zero))
    np.testing.assert_allclose(at_zero, 0.0, atol=1e-3)
    # Away from 0 the gradient is (z − p) / ‖z − p‖.
    z = features[1]
    want = (z - prototypes[2]) / np.linalg.norm(z - prototypes[2])
    np.testing.assert_allclose(gradient(jnp.asarray(z), 2), want, rtol=1e-4, atol=1e-6)


def test_log_similarity_matches_float64_including_large_distances():
    d = np.array([0.0, 1e-4, 0.5, 3.0, 1e3, 1e6, 1e8], np.float32)
    want = np.log((d.astype(np.float64) + 1) / (d.astype(np.float64) + 1e-4))
    np.testing.assert_allclose(distances.log_similarity(d), want, rtol=1e-5)
    want_kmex = np.log((d.astype(np.float64) + 1) / (d.astype(np.float64) + 1e-8))
    np.testing.assert_allclose(distances.log_similarity(d, eps=1e-8), want_kmex, rtol=1e-5)


def naive_min_over_patches(distance_map, valid):
    b, h, w, p = distance_map.shape
    mins = np.full((b, p), np.inf)
    locs = np.zeros((b, p, 2), np.int64)
    for i in range(b):
        for j in range(p):
            for y in range(h):
                for x in range(w):
                    if valid[i, y, x] and distance_map[i, y, x, j] < mins[i, j]:
                        mins[i, j] = distance_map[i, y, x, j]
                        locs[i, j] = (y, x)
    return mins, locs


def test_min_over_patches_takes_the_first_row_major_minimum_and_respects_valid():
    rng = np.random.default_rng(4)
    # Small integers: many ties, so the first-occurrence rule is exercised.
    distance_map = rng.integers(0, 3, (3, 4, 5, 6)).astype(np.float32)
    everywhere = np.ones((3, 4, 5), bool)
    mins, locs = jax.jit(distances.min_over_patches)(distance_map)
    want_mins, want_locs = naive_min_over_patches(distance_map, everywhere)
    np.testing.assert_array_equal(mins, want_mins)
    np.testing.assert_array_equal(locs, want_locs)
    assert locs.dtype == jnp.int32

    valid = rng.random((3, 4, 5)) < 0.5
    valid[2] = False  # an image with no valid location at all
    mins, locs = distances.min_over_patches(distance_map, valid)
    want_mins, want_locs = naive_min_over_patches(distance_map, valid)
    np.testing.assert_array_equal(mins, want_mins)
    np.testing.assert_array_equal(locs, want_locs)
    assert np.all(np.isinf(mins[2])) and np.all(np.asarray(locs[2]) == 0)


def test_distance_kernels_reject_bad_shapes():
    with pytest.raises(ValueError, match="share D"):
        distances.squared_l2_distances(np.zeros((2, 3)), np.zeros((4, 5)))
    with pytest.raises(ValueError, match=r"prototypes must be \[P, D\]"):
        distances.squared_l2_distances(np.zeros((2, 3)), np.zeros(3))
    with pytest.raises(ValueError, match=r"\[B, H, W, P\]"):
        distances.min_over_patches(np.zeros((4, 5, 6)))
    with pytest.raises(ValueError, match="valid"):
        distances.min_over_patches(np.zeros((1, 2, 2, 3)), np.ones((1, 2, 3), bool))
