"""InfoDisent's kernels: the unmixing against SciPy's expm (orthogonal, det +1) and mx_pool
against a naive loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from protojax.prototypes import channels

unmixing = jax.jit(channels.orthogonal_unmixing)
mx_pool_with_locations = jax.jit(lambda x: channels.mx_pool(x, return_locations=True))


@pytest.mark.parametrize("d", [3, 32])
def test_orthogonal_unmixing_matches_scipy_and_is_a_rotation(d):
    rng = np.random.default_rng(d)
    a = rng.standard_normal((d, d)).astype(np.float32)
    u = np.asarray(unmixing(a), np.float64)
    a64 = a.astype(np.float64)
    np.testing.assert_allclose(u, scipy.linalg.expm(a64 - a64.T), atol=1e-5)
    np.testing.assert_allclose(u @ u.T, np.eye(d), atol=1e-5)
    np.testing.assert_allclose(np.linalg.det(u), 1.0, atol=1e-5)


def test_orthogonal_unmixing_of_zero_is_the_identity_and_rejects_non_square():
    np.testing.assert_array_equal(unmixing(np.zeros((3, 3), np.float32)), np.eye(3))
    with pytest.raises(ValueError, match="square"):
        channels.orthogonal_unmixing(np.zeros((3, 4), np.float32))


def naive_mx_pool(x):
    b, h, w, c = x.shape
    values = np.zeros((b, c))
    top = np.zeros((b, c, 2), np.int64)
    bottom = np.zeros((b, c, 2), np.int64)
    for i in range(b):
        for k in range(c):
            high, low = -np.inf, np.inf
            for y in range(h):
                for z in range(w):
                    if x[i, y, z, k] > high:
                        high, top[i, k] = x[i, y, z, k], (y, z)
                    if x[i, y, z, k] < low:
                        low, bottom[i, k] = x[i, y, z, k], (y, z)
            values[i, k] = max(high, 0.0) - max(-low, 0.0)
    return values, top, bottom


def test_mx_pool_matches_a_naive_loop_with_ties_and_one_signed_channels():
    rng = np.random.default_rng(0)
    # Small integers in [-2, 2]: ties everywhere, so the first row-major location counts.
    x = rng.integers(-2, 3, (2, 3, 4, 5)).astype(np.float32)
    x[0, :, :, 1] = np.abs(x[0, :, :, 1]) + 1.0  # only positive: the negative part is 0
    x[1, :, :, 2] = -np.abs(x[1, :, :, 2]) - 1.0  # only negative: the positive part is 0
    values, top, bottom = naive_mx_pool(x)
    result = mx_pool_with_locations(x)
    np.testing.assert_array_equal(result.values, values)
    np.testing.assert_array_equal(result.positive_locations, top)
    np.testing.assert_array_equal(result.negative_locations, bottom)
    np.testing.assert_array_equal(jax.jit(channels.mx_pool)(x), values)
    assert result.positive_locations.dtype == jnp.int32


def test_mx_pool_gradient_reaches_only_the_two_extremes():
    x = np.zeros((1, 2, 2, 1), np.float32)
    x[0, 0, 1, 0], x[0, 1, 0, 0] = 3.0, -2.0
    grad = jax.jit(jax.grad(lambda v: channels.mx_pool(v).sum()))(x)
    want = np.zeros_like(x)
    want[0, 0, 1, 0], want[0, 1, 0, 0] = 1.0, 1.0  # d(relu(max))/dmax = 1, d(−relu(−min))/dmin = 1
    np.testing.assert_array_equal(grad, want)
