"""KMEx's AD/AI against a NumPy loop."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.metrics import average_drop_increase

_PATTERNS = np.random.default_rng(0).uniform(size=(3, 4, 5, 2)).astype(np.float32)


def _score(images, targets):
    return jnp.sum(images * jnp.asarray(_PATTERNS)[targets], axis=(1, 2, 3))


def test_average_drop_increase_matches_a_numpy_loop():
    rng = np.random.default_rng(1)
    images = rng.uniform(size=(4, 4, 5, 2)).astype(np.float32)
    relevance = rng.normal(size=(4, 4, 5)).astype(np.float32)
    relevance[3] = -np.abs(relevance[3])  # all negative: ranked by magnitude
    fill = rng.uniform(size=(4, 5, 2)).astype(np.float32)
    targets = np.array([0, 2, 1, 2])
    result = average_drop_increase(
        jax.tree_util.Partial(_score), images, relevance, fill, targets=targets
    )
    drops, rises = [], []
    for b in range(4):
        order = np.argsort(-np.abs(relevance[b]).ravel(), kind="stable")
        masked = images[b].reshape(20, 2).copy()
        masked[order[:10]] = fill.reshape(20, 2)[order[:10]]
        s = float(np.sum(images[b] * _PATTERNS[targets[b]]))
        s_masked = float(np.sum(masked.reshape(4, 5, 2) * _PATTERNS[targets[b]]))
        drops.append(max(0.0, s - s_masked) / (s + 1e-8))
        rises.append(s < s_masked)
    np.testing.assert_allclose(result.per_example, drops, rtol=1e-5)
    np.testing.assert_allclose(result.aggregate, np.mean(drops), rtol=1e-5)
    np.testing.assert_array_equal(result.increase, rises)
    np.testing.assert_allclose(result.average_increase, np.mean(rises))


def test_average_drop_increase_checks_inputs():
    images = np.zeros((2, 4, 5, 2), np.float32)
    with pytest.raises(ValueError, match="fraction"):
        average_drop_increase(_score, images, np.zeros((2, 4, 5)), 0.0, targets=[0, 0], fraction=0)
    with pytest.raises(ValueError, match="targets"):
        average_drop_increase(_score, images, np.zeros((2, 4, 5)), 0.0, targets=[0])
    with pytest.raises(ValueError, match="fill of shape"):
        average_drop_increase(_score, images, np.zeros((2, 4, 5)), np.zeros(3), targets=[0, 0])
    with pytest.raises(ValueError, match="same"):
        average_drop_increase(_score, images, np.zeros((2, 4, 4)), 0.0, targets=[0, 0])
