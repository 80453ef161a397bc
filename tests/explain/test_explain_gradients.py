"""Saliency, SmoothGrad, integrated gradients and reduce_channels against NumPy references."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.explain import (
    integrated_gradients,
    reduce_channels,
    saliency,
    smoothgrad,
)

B, H, W, C = 2, 4, 3, 2
HIDDEN = 5


def _params(seed):
    rng = np.random.default_rng(seed)
    return {
        "hidden": rng.normal(size=(H * W * C, HIDDEN)).astype(np.float32) / 3.0,
        "bias": rng.normal(size=HIDDEN).astype(np.float32),
        "out": rng.normal(size=HIDDEN).astype(np.float32),
    }


MLP_TRACES = {"count": 0}


def mlp_score(params, images):
    """s(x) = out · tanh(hidden^T x + bias), one score per image; counts its traces."""
    MLP_TRACES["count"] += 1
    flat = images.reshape(images.shape[0], -1)
    return jnp.tanh(flat @ params["hidden"] + params["bias"]) @ params["out"]


def mlp_score_np(params, images):
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    return np.tanh(flat @ params["hidden"] + params["bias"]) @ params["out"]


def mlp_gradient_np(params, images):
    """Hand-derived ∂s/∂x = hidden (out ⊙ (1 − tanh²)) in float64."""
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    act = np.tanh(flat @ params["hidden"] + params["bias"])
    grad = (params["out"] * (1.0 - act**2)) @ params["hidden"].T.astype(np.float64)
    return grad.reshape(images.shape)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(B, H, W, C)).astype(np.float32)


def quadratic_score(params, images, targets):
    """s_b = Σ ½ V[t_b] ⊙ x² + Σ u ⊙ sin(x), so ∂s/∂x = V[t_b] ⊙ x + u ⊙ cos(x)."""
    weights = params["v"][targets]  # [B, H, W, C]
    return jnp.sum(0.5 * weights * images**2 + params["u"] * jnp.sin(images), axis=(1, 2, 3))


def test_saliency_matches_hand_derived_gradient(images):
    rng = np.random.default_rng(1)
    params = {
        "v": rng.normal(size=(3, H, W, C)).astype(np.float32),
        "u": rng.normal(size=(H, W, C)).astype(np.float32),
    }
    targets = np.array([2, 0])
    got = saliency(Partial(quadratic_score, params), images, targets=targets)
    expected = params["v"][targets] * images + params["u"] * np.cos(images)
    assert got.shape == (B, H, W, C)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_smoothgrad_matches_numpy_loop_over_the_same_noise(images):
    """Also checks that a second checkpoint (new Partial leaves) reuses the compiled code;
    SmoothGrad is checked here rather than in test_explain_api to compile threefry once."""
    key = jax.random.key(3)
    num_samples, sigma = 8, 0.2
    value_range = images.max(axis=(1, 2, 3)) - images.min(axis=(1, 2, 3))
    scale = sigma * value_range[:, None, None, None].astype(np.float64)
    # The documented draw of sample n, jit-compiled once (threefry compiles slowly on CPU).
    draw = jax.jit(lambda n: jax.random.normal(jax.random.fold_in(key, n), images.shape))
    noise = [np.asarray(draw(n)) for n in range(num_samples)]
    for seed in (2, 3):
        params = _params(seed)
        # batch_size 3: the last chunk overlaps the one before by one sample.
        got = smoothgrad(
            Partial(mlp_score, params),
            images,
            rng=key,
            num_samples=num_samples,
            sigma=sigma,
            batch_size=3,
        )
        if seed == 2:
            traces = MLP_TRACES["count"]
        expected = np.mean([mlp_gradient_np(params, images + scale * z) for z in noise], axis=0)
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    assert MLP_TRACES["count"] == traces > 0


@pytest.mark.parametrize("method", ["trapezoid", "left", "right", "midpoint"])
def test_integrated_gradients_is_exact_for_a_linear_score(images, method):
    rng = np.random.default_rng(4)
    weights = rng.normal(size=(H, W, C)).astype(np.float32)
    baseline = rng.normal(size=(H, W, C)).astype(np.float32)
    linear = Partial(lambda w, x: jnp.sum(w * x, axis=(1, 2, 3)) + 1.5, weights)
    got = integrated_gradients(
        linear, images, baseline=baseline, steps=5, method=method, batch_size=2
    )
    np.testing.assert_allclose(got, (images - baseline) * weights, rtol=1e-5, atol=1e-6)


def test_integrated_gradients_completeness_and_riemann_sum_on_a_nonlinear_model(images):
    params = _params(5)
    baseline = np.full((H, W, C), -0.3, np.float32)
    steps = 256
    got = np.asarray(
        integrated_gradients(
            Partial(mlp_score, params), images, baseline=baseline, steps=steps, batch_size=64
        )
    )
    baselines = np.broadcast_to(baseline, images.shape)
    delta = mlp_score_np(params, images) - mlp_score_np(params, baselines)
    assert np.all(np.abs(delta) > 0.1)  # the 1% bound below is meaningful
    np.testing.assert_allclose(got.sum(axis=(1, 2, 3)), delta, rtol=0.01)
    # Per pixel: the trapezoid sum of the hand-derived gradient in float64.
    alphas = np.linspace(0.0, 1.0, steps)
    weights = np.full(steps, 1.0 / (steps - 1))
    weights[[0, -1]] /= 2
    path_grad = sum(
        wt * mlp_gradient_np(params, baseline + a * (images - baseline))
        for a, wt in zip(alphas, weights)
    )
    np.testing.assert_allclose(got, (images - baseline) * path_grad, rtol=1e-4, atol=1e-6)


def test_reduce_channels_modes():
    a = np.array([[[[3.0, -4.0], [-1.0, 0.5]]]], np.float32)  # [1, 1, 2, 2]
    np.testing.assert_allclose(reduce_channels(a, "sum"), [[[-1.0, -0.5]]])
    np.testing.assert_allclose(reduce_channels(a, "abs_sum"), [[[7.0, 1.5]]])
    np.testing.assert_allclose(reduce_channels(a, "max_abs"), [[[4.0, 1.0]]])
    np.testing.assert_allclose(reduce_channels(a, "l2"), [[[5.0, np.sqrt(1.25)]]], rtol=1e-6)
    with pytest.raises(ValueError, match="mode must be one of"):
        reduce_channels(a, "mean_abs")
