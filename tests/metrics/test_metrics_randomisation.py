"""Spearman correlation against SciPy, and the cascading randomisation on a toy explainer."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy import stats

from protojax.metrics import model_randomisation, spearman
from protojax.metrics.randomisation import randomise


def test_spearman_matches_scipy_with_ties_and_constant_rows():
    rng = np.random.default_rng(0)
    a = rng.integers(0, 4, size=(3, 30)).astype(np.float32)  # many ties
    b = a + rng.normal(size=(3, 30)).astype(np.float32)
    b[2] = -b[2]
    result = np.asarray(spearman(a, b))
    for i in range(3):
        np.testing.assert_allclose(result[i], stats.spearmanr(a[i], b[i]).statistic, rtol=1e-5)
    assert np.isnan(spearman(np.ones((1, 5)), np.arange(5.0)[None]))[0]


def _explain(params):
    # The map reads only the "top" layer; "unused" plays no part.
    return jnp.broadcast_to(params["top"]["kernel"], (2, 4, 4))


def test_model_randomisation_cascade():
    rng = np.random.default_rng(0)
    params = {
        "top": {"kernel": jnp.asarray(rng.normal(size=(4, 4)), jnp.float32)},
        "unused": {"kernel": jnp.ones((3,)), "bias": jnp.zeros((3,))},
    }
    key = jax.random.PRNGKey(3)
    result = model_randomisation(_explain, params, [("unused",), ("top",)], rng=key)
    assert result.layers == ["unused", "top"]
    np.testing.assert_allclose(result.per_example[0], [1.0, 1.0], rtol=1e-6)
    randomised = randomise(params, ("top",), jax.random.fold_in(key, 1))
    expected = spearman(_explain(params), _explain(randomised))
    np.testing.assert_allclose(result.per_example[1], expected, rtol=1e-6)
    assert abs(result.aggregate[1]) < 0.9
    # Constant arrays stay as they are; the mean and spread of the others are kept.
    same = randomise(params, ("unused",), key)
    np.testing.assert_array_equal(same["unused"]["kernel"], params["unused"]["kernel"])
    np.testing.assert_array_equal(same["top"]["kernel"], params["top"]["kernel"])
    big = randomise({"w": jnp.asarray(rng.normal(3.0, 2.0, size=10000), jnp.float32)}, (), key)
    np.testing.assert_allclose([big["w"].mean(), big["w"].std()], [3.0, 2.0], rtol=0.05)
