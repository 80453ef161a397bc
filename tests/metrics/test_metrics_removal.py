"""The prototype-removal effect against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics import prototype_removal


def _logits(similarities, weights, active):
    return similarities @ (weights * active[:, None].astype(weights.dtype))


def test_prototype_removal_matches_a_numpy_loop():
    rng = np.random.default_rng(0)
    similarities = rng.uniform(size=(30, 6)).astype(np.float32)
    weights = np.kron(np.eye(3), np.ones((2, 1))).astype(np.float32)  # 2 prototypes per class
    labels = rng.integers(0, 3, size=30)
    active = np.array([1, 1, 1, 0, 1, 1], bool)
    fn = jax.tree_util.Partial(_logits, jnp.asarray(similarities), jnp.asarray(weights))
    result = prototype_removal(fn, labels, active)

    def acc(flags):
        return np.mean(np.argmax(similarities @ (weights * flags[:, None]), 1) == labels)

    base = acc(active.astype(np.float32))
    expected = np.full(6, np.nan)
    for j in np.flatnonzero(active):
        flags = active.copy()
        flags[j] = False
        expected[j] = base - acc(flags.astype(np.float32))
    np.testing.assert_allclose(result.accuracy, base, rtol=1e-6)
    np.testing.assert_allclose(result.per_example, expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(result.aggregate, np.nanmean(expected), rtol=1e-6, atol=1e-7)
    assert np.isnan(result.accuracy_without[3])
