"""The spatial-misalignment benchmark of part-prototype models (Sacha, Jura, Rymarczyk, Struski,
Tabor, Zieliński, "Interpretability Benchmark for Evaluating Spatial Misalignment of
Prototypical Parts Explanations", AAAI 2024; official code: gmum/interpretability-benchmark,
`run_adversarial_test.py` and `spatial_alignment_test/`).

A prototype's explanation points at its high-activation box. If the prototype is local, pixels
outside that box cannot change its activation much; the benchmark perturbs only those pixels,
adversarially, and measures how much the activation, its rank and its location move.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

from protojax.metrics.common import as_partial


class Misalignment(NamedTuple):
    """The result of `spatial_misalignment`; per-example values are `[B]`.

    Attributes:
      per_example: PAC, 100 · (1 − a′/a) for the top prototype's max activation a (NaN when
        a ≤ 0).
      aggregate: the mean PAC (NaN ones left out).
      prc: PRC, the change in the number of other-class prototypes whose max activation
        exceeds the top prototype's.
      plc: PLC, 100 · (1 − IoU) of the top prototype's top-10% activation regions before and
        after.
      accuracy_before, accuracy_after: the accuracy on the images and on the attacked ones.
      top_prototype: the prototype attacked in each image.
      box: `[B, 4]` (y0, x0, y1, x1), exclusive ends: the region left untouched (the high
        activation box with its margin).
      adversarial: `[B, H, W, C]` the attacked images.
    """

    per_example: jax.Array
    aggregate: jax.Array
    prc: jax.Array
    plc: jax.Array
    accuracy_before: jax.Array
    accuracy_after: jax.Array
    top_prototype: jax.Array
    box: jax.Array
    adversarial: jax.Array


def _box(activation: jax.Array, percentile: float) -> jax.Array:
    """The tightest box `[4]` (exclusive ends) around the pixels ≥ the map's percentile."""
    hot = activation >= jnp.percentile(activation, percentile)
    rows, cols = jnp.any(hot, axis=1), jnp.any(hot, axis=0)
    h, w = activation.shape
    return jnp.stack(
        [
            jnp.argmax(rows),
            jnp.argmax(cols),
            h - jnp.argmax(rows[::-1]),
            w - jnp.argmax(cols[::-1]),
        ]
    )


def _top_region(activation: jax.Array) -> jax.Array:
    return activation > jnp.quantile(activation, 0.9)


@functools.partial(jax.jit, static_argnames=("iterations", "margin", "percentile", "random_start"))
def _misalignment(
    activations_fn,
    images,
    labels,
    prototype_class,
    rng,
    epsilon,
    step,
    *,
    iterations,
    margin,
    percentile,
    random_start,
):
    b, h, w, c = images.shape
    logits, maps = activations_fn(images)  # [B, K], [B, h', w', P]
    maps = jnp.maximum(maps, 0.0)
    peaks = jnp.max(maps, axis=(1, 2))  # [B, P]
    top = jnp.argmax(peaks, axis=1)
    rows = jnp.arange(b)
    top_maps = jnp.take_along_axis(maps, top[:, None, None, None], axis=3)[..., 0]

    def upsample(m, method):
        return jax.image.resize(m.astype(jnp.float32), (h, w), method)

    boxes = jax.vmap(lambda m: _box(upsample(m, "cubic"), percentile))(top_maps)
    low = jnp.maximum(boxes[:, :2] - margin, 0)
    high = jnp.minimum(boxes[:, 2:] + jnp.int32(margin), jnp.array([h, w]))
    ys, xs = jnp.arange(h)[None, :, None], jnp.arange(w)[None, None, :]
    inside = (
        (ys >= low[:, 0, None, None])
        & (ys < high[:, 0, None, None])
        & (xs >= low[:, 1, None, None])
        & (xs < high[:, 1, None, None])
    )
    free = (~inside)[..., None].astype(images.dtype)  # 1 where the attack may change pixels

    def objective(x):
        _, m = activations_fn(x * free + images * (1.0 - free))
        chosen = jnp.take_along_axis(m, top[:, None, None, None], axis=3)[..., 0]
        return jnp.sum(jnp.max(chosen, axis=(1, 2)))

    start = images
    if random_start:
        start = images + jax.random.uniform(rng, images.shape, images.dtype, -epsilon, epsilon)

    def pgd_step(x, _):
        gradient = jax.grad(objective)(x)
        x = images + jnp.clip(x - step * jnp.sign(gradient) - images, -epsilon, epsilon)
        return x, None

    adversarial, _ = jax.lax.scan(pgd_step, start, None, length=iterations)
    adversarial = adversarial * free + images * (1.0 - free)
    logits_after, maps_after = activations_fn(adversarial)
    maps_after = jnp.maximum(maps_after, 0.0)
    peaks_after = jnp.max(maps_after, axis=(1, 2))

    before, after = peaks[rows, top], peaks_after[rows, top]
    pac = jnp.where(before > 0, 100.0 * (1.0 - after / jnp.where(before > 0, before, 1.0)), jnp.nan)
    other = prototype_class[None, :] != labels[:, None]  # [B, P]
    above_before = jnp.sum(other & (peaks > before[:, None]), axis=1)
    above_after = jnp.sum(other & (peaks_after > after[:, None]), axis=1)
    prc = (above_after - above_before).astype(jnp.float32)
    top_after = jnp.take_along_axis(maps_after, top[:, None, None, None], axis=3)[..., 0]
    region_before = jax.vmap(lambda m: _top_region(upsample(m, "linear")))(top_maps)
    region_after = jax.vmap(lambda m: _top_region(upsample(m, "linear")))(top_after)
    union = jnp.sum(region_before | region_after, axis=(1, 2))
    intersection = jnp.sum(region_before & region_after, axis=(1, 2))
    plc = jnp.where(union > 0, 100.0 * (1.0 - intersection / jnp.maximum(union, 1)), 0.0)
    correct_before = jnp.argmax(logits, axis=1) == labels
    correct_after = jnp.argmax(logits_after, axis=1) == labels
    return Misalignment(
        pac,
        jnp.nanmean(pac),
        prc,
        plc,
        jnp.mean(correct_before.astype(jnp.float32)),
        jnp.mean(correct_after.astype(jnp.float32)),
        top,
        jnp.concatenate([low, high], axis=1),
        adversarial,
    )


def spatial_misalignment(
    activations_fn: Callable[[jax.Array], tuple[jax.Array, jax.Array]],
    images,
    labels,
    prototype_class,
    *,
    rng: jax.Array,
    epsilon: float = 0.4,
    step: float = 0.01,
    iterations: int = 40,
    margin: int = 10,
    percentile: float = 95.0,
    random_start: bool = True,
) -> Misalignment:
    """The spatial-misalignment benchmark with the top prototype attacked (`top_proto`).

    For each image:
      1. the top prototype j is the one of largest max activation (activations clipped at 0,
         as the official code does);
      2. its map is upsampled bicubically to the image and boxed around the pixels ≥ its
         95th percentile; the box grows by `margin` pixels (10) on every side, clipped to
         the image;
      3. PGD under L∞ changes only the pixels outside the box: from a uniform start in the
         ε-ball (cleverhans' default `rand_init`), `iterations` steps
         x ← x₀ + clip(x − α·sign(∇ₓ a_j(x)) − x₀, −ε, ε) that lower j's max activation a_j;
         pixels are not clipped to any range (the official `clip_min` is None), so ε and α
         are in the units of the images given (the official ε 0.4 and α 0.01 are in
         ImageNet-normalised units: pass normalised images and the model's own function);
      4. with a, a′ j's max activation before and after: PAC = 100 · (1 − a′/a);
         PRC = #{other-class prototypes above j after} − #{… before}, other-class meaning
         not the image's true class; PLC = 100 · (1 − IoU) of the pixels above the 90th
         percentile of j's bilinearly upsampled map before and after (0 when both are
         empty); and the accuracy before and after.
    A local prototype gives PAC, PRC and PLC near 0 and keeps the accuracy.

    Two departures from the official code: it clips the margin's far edge at size − 1
    (leaving the last row and column attackable) where we clip at the size; and, as we read
    cleverhans, its PGD differentiates a cross-entropy over the wrapper's single output,
    whose gradient is zero, so its steps reduce to the random start. We descend the
    activation itself, as the paper describes.

    Args:
      activations_fn: `activations_fn(images [B, H, W, C]) -> (logits [B, K],
        similarity_maps [B, h, w, P])`, differentiable (ProtoPNet's `activations` gives
        both); ideally a `jax.tree_util.Partial`.
      images: `[B, H, W, C]`.
      labels: `[B]` int, the true classes.
      prototype_class: `[P]` int.
      rng: a PRNG key for the random start.
      epsilon, step, iterations: ε, α and the number of PGD steps.
      margin: pixels added around the box on every side.
      percentile: the box's activation percentile.
      random_start: start from a uniform draw in the ε-ball, as cleverhans does.

    Returns:
      `Misalignment(per_example PAC [B], aggregate mean PAC, prc [B], plc [B],
      accuracy_before, accuracy_after, top_prototype [B], box [B, 4], adversarial)`.
    """
    images = jnp.asarray(images, jnp.float32)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}.")
    labels = jnp.asarray(labels)
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels must be [B] = [{images.shape[0]}], got {labels.shape}.")
    if epsilon <= 0 or step <= 0 or int(iterations) != iterations or iterations < 0:
        raise ValueError("epsilon and step must be positive and iterations a count ≥ 0.")
    return _misalignment(
        as_partial(activations_fn),
        images,
        labels,
        jnp.asarray(prototype_class, jnp.int32),
        rng,
        jnp.float32(epsilon),
        jnp.float32(step),
        iterations=int(iterations),
        margin=int(margin),
        percentile=float(percentile),
        random_start=bool(random_start),
    )
