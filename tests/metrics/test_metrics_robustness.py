"""Max-sensitivity: exact zeros, a naive loop over the same draws, and scaling properties.

Every call reuses one `Partial` explainer and one sample count, so that the suite compiles
the metric once per normalisation, and the key is an "rbg" key: threefry code takes seconds
to compile on CPU, rbg a fraction of that.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.metrics import max_sensitivity

_RNG = jax.random.key(0, impl="rbg")
_RADIUS = 0.05
_SAMPLES = 6
_IMAGES = jnp.asarray(np.random.default_rng(0).uniform(0.2, 1.0, (3, 4, 4, 2)), jnp.float32)
_NORMS = np.linalg.norm(np.asarray(_IMAGES, np.float64).reshape(3, -1), axis=1)


def _scaled(scale, images):
    return scale * images


def _floor(images):
    return jnp.floor(images)


def _sensitivity(scale, normalize):
    explain_fn = jax.tree_util.Partial(_scaled, jnp.float32(scale))
    return max_sensitivity(
        explain_fn, _IMAGES, rng=_RNG, radius=_RADIUS, num_samples=_SAMPLES, normalize=normalize
    )


def test_insensitive_explainer_scores_zero_and_zero_explanations_nan():
    # With r = 0.25, x = 1.5 stays in (1.25, 1.75), where floor is constantly 1: no change, 0;
    # x = 0.5 stays in (0.25, 0.75), where floor is 0: no change either; x = -1.5 gives the
    # constant all-negative explanation -2: no change, 0.
    images = jnp.stack([jnp.full((3, 3, 1), v) for v in (1.5, 0.5, -1.5)])
    result = max_sensitivity(_floor, images, rng=_RNG, radius=0.25, num_samples=_SAMPLES)
    np.testing.assert_array_equal(result.per_example, [0.0, 0.0, 0.0])
    assert float(result.aggregate) == 0.0
    # Relative to the explanation, x = 0.5's value is 0 / ‖floor(0.5)‖ = 0 / 0: NaN, left out.
    relative = max_sensitivity(
        _floor, images, rng=_RNG, radius=0.25, num_samples=_SAMPLES, normalize="explanation"
    )
    assert float(relative.per_example[0]) == float(relative.per_example[2]) == 0.0
    assert np.isnan(relative.per_example[1])
    assert float(relative.aggregate) == 0.0


def test_identity_matches_naive_loop_over_the_same_draws():
    # The default is Yeh et al.'s un-normalised max ‖Φ(x + δ) − Φ(x)‖.
    result = max_sensitivity(
        jax.tree_util.Partial(_scaled, jnp.float32(1.0)),
        _IMAGES,
        rng=_RNG,
        radius=_RADIUS,
        num_samples=_SAMPLES,
    )
    worst = np.zeros(3)
    for key in jax.random.split(_RNG, _SAMPLES):
        noise = np.asarray(jax.random.uniform(key, _IMAGES.shape, jnp.float32, -_RADIUS, _RADIUS))
        for i in range(3):
            worst[i] = max(worst[i], np.linalg.norm(noise[i]))  # Φ(x + δ) − Φ(x) = δ
    np.testing.assert_allclose(result.per_example, worst, rtol=1e-4)
    np.testing.assert_allclose(result.aggregate, worst.mean(), rtol=1e-4)
    # ‖δ‖ ≤ r·√n in the L∞ ball (n = 32 entries per image).
    assert np.all(worst <= _RADIUS * np.sqrt(32))


def test_normalisations_scale_as_documented():
    raw = np.asarray(_sensitivity(1.0, None).per_example)
    relative = np.asarray(_sensitivity(1.0, "explanation").per_example)
    np.testing.assert_allclose(relative, raw / _NORMS, rtol=1e-5)  # here Φ(x) = x
    # Doubling the explanation doubles the raw and the input-relative value, not the
    # explanation-relative one.
    np.testing.assert_allclose(_sensitivity(2.0, None).per_example, 2 * raw, rtol=1e-5)
    np.testing.assert_allclose(_sensitivity(2.0, "input").per_example, 2 * raw / _NORMS, rtol=1e-5)
    np.testing.assert_allclose(_sensitivity(2.0, "explanation").per_example, relative, rtol=1e-5)


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="radius"):
        max_sensitivity(_floor, _IMAGES, rng=_RNG, radius=0.0)
    with pytest.raises(ValueError, match="normalize"):
        max_sensitivity(_floor, _IMAGES, rng=_RNG, radius=0.1, normalize="max")
    with pytest.raises(ValueError, match="floating-point"):
        max_sensitivity(_floor, jnp.zeros((2, 3, 3), jnp.float32), rng=_RNG, radius=0.1)
    with pytest.raises(ValueError, match="one explanation per image"):
        max_sensitivity(lambda x: x.sum(), _IMAGES, rng=_RNG, radius=0.1)
