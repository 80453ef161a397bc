"""Gradient explainers: saliency, SmoothGrad and integrated gradients.

Each returns `[B, H, W, C]` attributions; `reduce_channels` turns them into `[B, H, W]` maps.
Score functions follow `protojax.explain.common`: `score_fn(images) -> [B]`, or
`score_fn(images, targets) -> [B]` with `targets=`. They must score each image independently
(no batch statistics), since the gradient of Σ_b score_b is taken with respect to the batch.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.common import (
    as_pytree_callable,
    call_score,
    check_batch_size,
    check_images,
    check_targets,
    chunked_sum,
    weighted_sample_sum,
)

IG_METHODS = ("trapezoid", "left", "right", "midpoint")


def _input_gradients(score_fn, images, targets):
    """∂score_b / ∂images_b for every image b, `[B, H, W, C]`."""
    return jax.grad(lambda x: jnp.sum(call_score(score_fn, x, targets)))(images)


def saliency(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
) -> jax.Array:
    """The gradient of each image's score with respect to its pixels (Simonyan et al. 2014).

    Args:
      score_fn: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)` when
        `targets` is given; ideally a `jax.tree_util.Partial` whose leaves are the parameters.
      images: `[B, H, W, C]`.
      targets: optional `[B]` class or prototype indices passed to `score_fn`.

    Returns:
      `[B, H, W, C]` gradients.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    return _saliency(score_fn, images, targets)


@jax.jit
def _saliency(score_fn, images, targets):
    return _input_gradients(score_fn, images, targets)


def smoothgrad(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    rng: jax.Array,
    num_samples: int = 50,
    sigma: float = 0.15,
    batch_size: int | None = None,
    targets: jax.Array | None = None,
) -> jax.Array:
    """SmoothGrad (Smilkov et al. 2017): the mean gradient over Gaussian-noised copies.

    Image b's noise has standard deviation `sigma · (max(x_b) − min(x_b))`, a fraction of its
    value range. Sample n draws its noise as
    `jax.random.normal(jax.random.fold_in(rng, n), images.shape)`, so that with the default
    (threefry) keys the result does not depend on `batch_size`.

    Args:
      score_fn: as in `saliency`.
      images: `[B, H, W, C]`.
      rng: a PRNG key.
      num_samples: the number of noisy copies.
      sigma: the noise level as a fraction of each image's value range.
      batch_size: noisy copies evaluated at once (each on the whole batch), or None for all.
      targets: optional `[B]` indices passed to `score_fn`.

    Returns:
      `[B, H, W, C]` mean gradients.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1; got {num_samples}.")
    return _smoothgrad(
        score_fn,
        images,
        targets,
        rng,
        sigma,
        num_samples=int(num_samples),
        batch_size=check_batch_size(batch_size),
    )


@partial(jax.jit, static_argnames=("num_samples", "batch_size"))
def _smoothgrad(score_fn, images, targets, rng, sigma, *, num_samples, batch_size):
    value_range = jnp.max(images, axis=(1, 2, 3), keepdims=True) - jnp.min(
        images, axis=(1, 2, 3), keepdims=True
    )
    noise_scale = sigma * value_range  # [B, 1, 1, 1]

    def gradient_sum(sample_indices, fresh):
        def one_sample(index):
            noise = jax.random.normal(jax.random.fold_in(rng, index), images.shape, images.dtype)
            return _input_gradients(score_fn, images + noise_scale * noise, targets)

        return weighted_sample_sum(fresh, jax.vmap(one_sample)(sample_indices))

    total = chunked_sum(gradient_sum, jnp.arange(num_samples), batch_size=batch_size)
    return total / num_samples


def _integration_nodes(steps: int, method: str) -> tuple[np.ndarray, np.ndarray]:
    """Path positions α and quadrature weights (summing to 1) of a `steps`-point rule."""
    if method == "trapezoid":
        alphas = np.linspace(0.0, 1.0, steps)
        weights = np.full(steps, 1.0 / (steps - 1))
        weights[[0, -1]] /= 2.0
    elif method == "left":
        alphas, weights = np.arange(steps) / steps, np.full(steps, 1.0 / steps)
    elif method == "right":
        alphas, weights = np.arange(1, steps + 1) / steps, np.full(steps, 1.0 / steps)
    else:
        alphas, weights = (np.arange(steps) + 0.5) / steps, np.full(steps, 1.0 / steps)
    return alphas.astype(np.float32), weights.astype(np.float32)


def integrated_gradients(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    baseline: jax.Array | float | None = None,
    steps: int = 50,
    method: str = "trapezoid",
    batch_size: int | None = None,
    targets: jax.Array | None = None,
) -> jax.Array:
    """Integrated gradients (Sundararajan et al. 2017).

    (x − x₀) ⊙ Σ_i w_i ∇score(x₀ + α_i (x − x₀)), with `steps` gradient evaluations at the nodes
    α_i of a quadrature rule whose weights w_i sum to 1:
    - `'trapezoid'`: α = 0, 1/(steps−1), …, 1, end weights halved (steps ≥ 2);
    - `'left'`: α = i/steps, i = 0 … steps−1;
    - `'right'`: α = i/steps, i = 1 … steps;
    - `'midpoint'`: α = (i + ½)/steps.
    The attributions of an image sum to score(x) − score(x₀) up to the quadrature error
    (completeness), exactly so for a linear score.

    Args:
      score_fn: as in `saliency`.
      images: `[B, H, W, C]`.
      baseline: x₀, an array broadcastable to `[B, H, W, C]` (for example `[H, W, C]` or a
        scalar); zeros by default.
      steps: the number of gradient evaluations.
      method: the quadrature rule, one of `'trapezoid'`, `'left'`, `'right'`, `'midpoint'`.
      batch_size: path points evaluated at once (each on the whole batch), or None for all.
      targets: optional `[B]` indices passed to `score_fn`.

    Returns:
      `[B, H, W, C]` attributions.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    if method not in IG_METHODS:
        raise ValueError(f"method must be one of {IG_METHODS}; got {method!r}.")
    min_steps = 2 if method == "trapezoid" else 1
    if steps < min_steps:
        raise ValueError(f"steps must be at least {min_steps} for method {method!r}; got {steps}.")
    if baseline is None:
        baseline = jnp.zeros_like(images)
    else:
        baseline = jnp.asarray(baseline, images.dtype)
        try:
            baseline = jnp.broadcast_to(baseline, images.shape)
        except ValueError:
            raise ValueError(
                f"baseline of shape {baseline.shape} does not broadcast to the images' shape "
                f"{images.shape}; give [B, H, W, C], [H, W, C], [C] or a scalar."
            ) from None
    return _integrated_gradients(
        score_fn,
        images,
        baseline,
        targets,
        steps=int(steps),
        method=method,
        batch_size=check_batch_size(batch_size),
    )


@partial(jax.jit, static_argnames=("steps", "method", "batch_size"))
def _integrated_gradients(score_fn, images, baseline, targets, *, steps, method, batch_size):
    alphas, weights = _integration_nodes(steps, method)
    delta = images - baseline

    def weighted_gradient_sum(nodes, fresh):
        alpha, weight = nodes
        grads = jax.vmap(lambda a: _input_gradients(score_fn, baseline + a * delta, targets))(alpha)
        return weighted_sample_sum(fresh * weight, grads)

    mean_gradient = chunked_sum(
        weighted_gradient_sum, (jnp.asarray(alphas), jnp.asarray(weights)), batch_size=batch_size
    )
    return delta * mean_gradient
