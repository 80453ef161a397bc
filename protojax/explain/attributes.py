"""Explanations through a dictionary of attributes Φ(x) `[B, J]` read by a linear
interpreter, as FLINT gives them (Parekh et al., NeurIPS 2021; jayneelparekh/FLINT
`flint.py`): local relevance, the top-activating examples of each class and attribute,
activation maximisation with partial initialisation (`optimize_inp`), and the figures.

Model-agnostic: the inputs are arrays and an `attribute_fn(images) -> [B, J]` callable (give a
`jax.tree_util.Partial` whose leaves are the parameters, so that new parameters reuse the
compiled code).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from protojax.explain.common import as_pytree_callable, check_images


class LocalRelevance(NamedTuple):
    """`raw [B, J]`: r_j(x) = Φ_j(x)·W_{ĉ,j}; `normalized [B, J]`: r divided by its row
    maximum (rows whose maximum is 0 are left at 0)."""

    raw: jax.Array
    normalized: jax.Array


def local_relevance(attributes, weights, classes) -> LocalRelevance:
    """The relevance of each attribute to the interpreter's decision for class ĉ:
    r_j(x) = Φ_j(x)·W_{ĉ,j}, then r ← r / max_j r_j (the official `collect_g_data`).

    Args:
      attributes: Φ(x) `[B, J]`.
      weights: the interpreter's linear weights `[J, K]` (a Flax `Dense` kernel).
      classes: `[B]` int, the explained class of each row (FLINT: h's prediction).

    Returns:
      `LocalRelevance(raw [B, J], normalized [B, J])`.
    """
    attributes, weights = jnp.asarray(attributes), jnp.asarray(weights)
    if attributes.ndim != 2 or weights.ndim != 2 or weights.shape[0] != attributes.shape[1]:
        raise ValueError(
            f"attributes must be [B, J] and weights [J, K]; got {tuple(attributes.shape)} and "
            f"{tuple(weights.shape)}."
        )
    raw = attributes * jnp.take(weights, jnp.asarray(classes), axis=1).T
    top = jnp.max(raw, axis=1, keepdims=True)
    normalized = jnp.where(top != 0, raw / jnp.where(top != 0, top, 1.0), 0.0)
    return LocalRelevance(raw, normalized)


def top_activating(attributes, labels, *, num_classes: int, per_class: int = 1) -> np.ndarray:
    """For each class c and attribute j, the rows of class c with the largest Φ_j (the official
    `extract_attr_class_max`), most activating first.

    Args:
      attributes: Φ `[N, J]`.
      labels: `[N]` int classes (the official code uses the true labels).
      num_classes: K.
      per_class: how many rows per (class, attribute).

    Returns:
      `[K, per_class, J]` int64 row indices into `attributes`; −1 where a class has fewer rows.
    """
    attributes, labels = np.asarray(attributes), np.asarray(labels)
    out = np.full((num_classes, per_class, attributes.shape[1]), -1, np.int64)
    for c in range(num_classes):
        rows = np.flatnonzero(labels == c)
        order = np.argsort(-attributes[rows], axis=0, kind="stable")[:per_class]  # [n, J]
        out[c, : len(order)] = rows[order]
    return out


def total_variation(images: jax.Array) -> jax.Array:
    """Per image `[B]`: mean |x[i+1, j] − x[i, j]| + mean |x[i, j+1] − x[i, j]| over its
    pixels and channels (the anisotropic TV of `optimize_inp`)."""
    dy = jnp.abs(images[:, 1:] - images[:, :-1])
    dx = jnp.abs(images[:, :, 1:] - images[:, :, :-1])
    return jnp.mean(dy, axis=(1, 2, 3)) + jnp.mean(dx, axis=(1, 2, 3))


def _objective(attribute_fn, images, attribute, c, lambda_tv, lambda_bound, lambda_l1, bounds):
    """Σ_b [C·Φ_{j_b}(x_b) − λ_tv·TV(x_b) − λ_bound·bound(x_b) − λ_l1·mean|x_b|]: each image's
    term depends on that image only, so the images are optimised independently."""
    low, high = bounds
    activation = jnp.take_along_axis(attribute_fn(images), attribute[:, None], axis=1)[:, 0]
    magnitude = jnp.abs(images)
    outside = ((images > high) | (images < low)).astype(images.dtype)
    bound = jnp.mean(outside * magnitude, axis=(1, 2, 3))
    l1 = jnp.mean(magnitude, axis=(1, 2, 3))
    per_image = (
        c * activation - lambda_tv * total_variation(images) - lambda_bound * bound - lambda_l1 * l1
    )
    return jnp.sum(per_image)


@functools.partial(jax.jit, static_argnames=("rounds", "steps"))
def _maximize(
    attribute_fn,
    init,
    attribute,
    c,
    lambda_tv,
    lambda_bound,
    lambda_l1,
    bounds,
    lr,
    lr_decay,
    *,
    rounds,
    steps,
):
    gradient = jax.grad(
        lambda x: _objective(
            attribute_fn, x, attribute, c, lambda_tv, lambda_bound, lambda_l1, bounds
        )
    )
    adam = optax.scale_by_adam()  # torch.optim.Adam's defaults: β = (0.9, 0.999), ε = 1e-8

    def one_round(r, images):
        rate = lr * lr_decay**r

        def one_step(_, carry):
            x, state = carry
            direction, state = adam.update(gradient(x), state)
            return x + rate * direction, state  # ascent

        # A fresh optimizer each round, as the official code re-creates Adam.
        return jax.lax.fori_loop(0, steps, one_step, (images, adam.init(images)))[0]

    return jax.lax.fori_loop(0, rounds, one_round, init)


def maximize_attribute(
    attribute_fn,
    init,
    attribute,
    *,
    c: float = 2.0,
    lambda_tv: float = 6.0,
    lambda_bound: float = 10.0,
    lambda_l1: float = 0.0,
    bounds: tuple[float, float] = (0.0, 1.0),
    rounds: int = 12,
    steps: int = 50,
    lr: float = 0.05,
    lr_decay: float = 0.5,
) -> jax.Array:
    """Activation maximisation with partial initialisation (the official `optimize_inp`).

    Maximises C·Φ_j(x) − λ_tv·TV(x) − λ_bound·bound(x) − λ_l1·mean|x| by gradient ascent,
    where bound(x) = mean(|x|·[x ∉ [low, high]]) and TV is `total_variation`: `rounds`
    rounds of `steps` Adam steps, each round with a fresh Adam at learning rate
    lr·lr_decay^round. FLINT starts from a fraction (0.3 for MNIST and QuickDraw, 0.4–0.6 for
    CIFAR-10) of a training image that strongly activates Φ_j; its settings are C = 2,
    λ_tv = 6, λ_bound = 10 in [0, 1] for the grey datasets, and C = 2, λ_tv = λ_bound = 20 in
    [−2.5, 2.5] for normalised CIFAR-10.

    Args:
      attribute_fn: `images [B, H, W, C] -> Φ [B, J]`, in inference mode.
      init: `[B, H, W, C]` starting images (already scaled).
      attribute: `[B]` int (or one int for all), the attribute j each image maximises.

    Returns:
      The optimised images `[B, H, W, C]`.
    """
    init = check_images(init, "init")
    attribute = jnp.broadcast_to(jnp.asarray(attribute, jnp.int32), init.shape[:1])
    scalars = (c, lambda_tv, lambda_bound, lambda_l1, tuple(map(float, bounds)), lr, lr_decay)
    return _maximize(
        as_pytree_callable(attribute_fn, "attribute_fn"),
        init,
        attribute,
        *jax.tree.map(jnp.float32, scalars),
        rounds=rounds,
        steps=steps,
    )


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1)
    else:
        ax.imshow(image)
    ax.set_xticks([])
    ax.set_yticks([])


def relevance_figure(relevance, *, class_names: Sequence[str], threshold: float = 0.1):
    """Heat map of the global relevance `[K, J]` of every attribute to every class, clipped to
    [−1, 1]; the class–attribute pairs above `threshold` are annotated with their value, and
    classes the interpreter never predicts (NaN rows) are grey."""
    plt = _pyplot()
    relevance = np.asarray(relevance, np.float32)
    k, j = relevance.shape
    fig, ax = plt.subplots(figsize=(0.36 * j + 2.4, 0.36 * k + 1.3))
    cmap = plt.get_cmap("RdBu_r").with_extremes(bad="0.8")
    image = ax.imshow(np.ma.masked_invalid(np.clip(relevance, -1, 1)), cmap=cmap, vmin=-1, vmax=1)
    for (row, col), value in np.ndenumerate(relevance):
        if value > threshold:
            colour = "white" if value > 0.6 else "black"
            ax.text(col, row, f"{value:.1f}", ha="center", va="center", fontsize=7, color=colour)
    ax.set_xticks(range(j), [f"φ{i}" for i in range(j)], fontsize=7, rotation=90)
    ax.set_yticks(range(k), list(class_names)[:k], fontsize=8)
    ax.set_xlabel("attribute")
    ax.set_ylabel("interpreter's class")
    ax.set_title(f"Global relevance r(class, attribute); values > {threshold} printed", fontsize=9)
    fig.colorbar(image, ax=ax, fraction=0.03, pad=0.02)
    fig.tight_layout()
    return fig


def attribute_figure(
    samples, visualisations, attribute_ids, relevances, *, class_names: Sequence[str]
):
    """The attributes of each class and their visualisations.

    Args:
      samples: `[K, A, H, W, C]` in [0, 1], for each class its A most relevant attributes'
        top-activating training image.
      visualisations: `[K, A, H, W, C]` in [0, 1], the activation-maximised images (FLINT
        shows each on its own min–max range).
      attribute_ids: `[K, A]` int, the attribute of each slot (−1: an empty slot).
      relevances: `[K, A]` global relevance of each slot's attribute to its class.
      class_names: the K class names.

    Returns:
      A matplotlib figure: one row per class, a (sample, visualisation) pair per attribute.
    """
    plt = _pyplot()
    attribute_ids = np.asarray(attribute_ids)
    k, a = attribute_ids.shape
    fig, axes = plt.subplots(k, 2 * a, figsize=(1.25 * 2 * a + 1.0, 1.35 * k), squeeze=False)
    for row in range(k):
        for slot in range(a):
            left, right = axes[row, 2 * slot], axes[row, 2 * slot + 1]
            if attribute_ids[row, slot] < 0:
                left.axis("off")
                right.axis("off")
                if slot == 0:
                    left.text(
                        0,
                        0.5,
                        "no attribute above the threshold",
                        fontsize=7,
                        va="center",
                        transform=left.transAxes,
                    )
                continue
            _show(left, samples[row, slot])
            _show(right, visualisations[row, slot])
            left.set_title(
                f"φ{attribute_ids[row, slot]}  r={relevances[row, slot]:.2f}",
                fontsize=8,
                loc="left",
            )
        axes[row, 0].set_ylabel(str(class_names[row]), rotation=0, ha="right", va="center")
        if attribute_ids[row, 0] < 0:
            axes[row, 0].text(
                -0.1,
                0.5,
                str(class_names[row]),
                ha="right",
                va="center",
                transform=axes[row, 0].transAxes,
            )
    fig.suptitle(
        "Most relevant attributes of each class: top-activating training image | its "
        "activation maximisation",
        fontsize=9,
    )
    fig.tight_layout()
    return fig


def local_explanation_figure(images, relevance, classes, *, class_names: Sequence[str], top=3):
    """Each image beside a bar chart of its `top` most relevant attributes (normalised local
    relevance for class `classes[i]`), as the official `analyze_img`."""
    plt = _pyplot()
    relevance = np.asarray(relevance, np.float32)
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(1.5 * n, 3.2), squeeze=False)
    for i in range(n):
        _show(axes[0, i], images[i])
        axes[0, i].set_title(str(class_names[int(classes[i])]), fontsize=8)
        order = np.argsort(-relevance[i], kind="stable")[:top]
        axes[1, i].bar(range(len(order)), relevance[i, order], color="tab:green")
        axes[1, i].set_xticks(range(len(order)), [f"φ{j}" for j in order], fontsize=7)
        axes[1, i].set_ylim(0, 1.05)
        axes[1, i].tick_params(axis="y", labelsize=6)
    axes[1, 0].set_ylabel("relevance", fontsize=8)
    fig.suptitle("Interpreter's class and the attributes most relevant to it", fontsize=9)
    fig.tight_layout()
    return fig


__all__ = [
    "LocalRelevance",
    "attribute_figure",
    "local_explanation_figure",
    "local_relevance",
    "maximize_attribute",
    "relevance_figure",
    "top_activating",
    "total_variation",
]
