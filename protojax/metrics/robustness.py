"""Robustness of explanations: max-sensitivity (Yeh et al., NeurIPS 2019)."""

from __future__ import annotations

import functools
from collections.abc import Callable

import jax
import jax.numpy as jnp

from protojax.metrics.common import MetricResult, as_partial

_NORMALIZATIONS = (None, "explanation", "input")


def _frobenius(x: jax.Array) -> jax.Array:
    """`[B, ...]` → `[B]` Frobenius norm over all but the batch axis."""
    x = x.reshape(x.shape[0], -1).astype(jnp.float32)
    return jnp.sqrt(jnp.sum(x * x, axis=1))


@functools.partial(jax.jit, static_argnames=("num_samples", "normalize"))
def _max_sensitivity(explain_fn, images, rng, radius, *, num_samples, normalize):
    reference = explain_fn(images)
    if reference.shape[:1] != images.shape[:1]:
        raise ValueError(
            f"explain_fn must return one explanation per image, [B, ...] with B = "
            f"{images.shape[0]}, got shape {reference.shape}."
        )

    def distance(key):
        noise = jax.random.uniform(key, images.shape, images.dtype, -radius, radius)
        return _frobenius(explain_fn(images + noise) - reference)

    # One explain_fn call per sample keeps memory at one batch of explanations.
    distances = jax.lax.map(distance, jax.random.split(rng, num_samples))  # [S, B]
    worst = jnp.max(distances, axis=0)
    if normalize is not None:
        scale = _frobenius(reference if normalize == "explanation" else images)
        worst = jnp.where(scale > 0, worst / jnp.where(scale > 0, scale, 1.0), jnp.nan)
    return MetricResult(worst, jnp.nanmean(worst))


def max_sensitivity(
    explain_fn: Callable[[jax.Array], jax.Array],
    images,
    *,
    rng: jax.Array,
    radius: float,
    num_samples: int = 10,
    normalize: str | None = None,
) -> MetricResult:
    """Max-sensitivity (Yeh et al. 2019): the largest change of an explanation in an L∞ ball.

    Monte Carlo estimate of max over ‖δ‖∞ ≤ r of ‖Φ(x + δ) − Φ(x)‖_F: `num_samples`
    perturbations δ are drawn uniformly from [−r, r] per pixel and channel (independently for
    every image); perturbed images are not clipped to any pixel range. Lower is more robust.

    `normalize` chooses the denominator:
      - None (default): no division, Yeh et al.'s definition, in the explanation's units;
      - "explanation": ‖Φ(x)‖_F, so the value is a relative change and explainers of
        different scales (gradients, probabilities) compare fairly;
      - "input": ‖x‖_F, as Quantus's `MaxSensitivity` divides.
    With a denominator, a zero one (an all-zero explanation, or a black image) gives NaN for
    that example, and the aggregate is the mean over the others. An explainer whose output
    does not change under the perturbations (a constant map, whatever its sign) scores 0.

    Fix the explained target inside `explain_fn` (for example close over the labels or the
    predictions at x), so that a perturbation cannot switch the class being explained.

    Args:
      explain_fn: `explain_fn(images [B, H, W, C]) -> [B, ...]` explanations (any trailing
        shape, e.g. `[B, H, W]` or `[B, H, W, C]`). A `jax.tree_util.Partial` whose leaves
        are parameters is traced, so new parameters do not recompile.
      images: `[B, H, W, C]` floating-point images.
      rng: a PRNG key.
      radius: r, the half-width of the L∞ ball, in pixel units (> 0).
      num_samples: the number of perturbations; `explain_fn` runs once per sample.
      normalize: None, "explanation" or "input".

    Returns:
      `MetricResult(per_example=[B] float32, aggregate=nan-mean scalar)`.
    """
    images = jnp.asarray(images)
    if images.ndim != 4 or not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"images must be floating-point [B, H, W, C], got {images.dtype} {images.shape}."
        )
    if isinstance(radius, int | float) and radius <= 0:
        raise ValueError(f"radius must be positive, got {radius}.")
    if int(num_samples) != num_samples or num_samples < 1:
        raise ValueError(f"num_samples must be a positive integer, got {num_samples}.")
    if normalize not in _NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {_NORMALIZATIONS}, got {normalize!r}.")
    return _max_sensitivity(
        as_partial(explain_fn),
        images,
        rng,
        jnp.asarray(radius, images.dtype),
        num_samples=int(num_samples),
        normalize=normalize,
    )
