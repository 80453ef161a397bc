"""Concept maps: image parts found by clustering a network's activations (NAVE, NAS).

Every spatial activation vector of one or more layers is a point in feature space; k-means
groups them into k concepts, and each image becomes a segmentation into those concepts
(Boubekki et al., "Neuro-Activated Vision Explanations", arXiv 2411.19700, and "Leveraging
Activations for Superpixel Explanations", arXiv 2406.04933). This extends KMEx from whole
images to parts.

The recipe, per image or over a dataset:
1. take the named layers' maps `{name: [B, h, w, c]}` (what `return_layers` gives);
2. resize each to a common grid (bilinear by default; `resize="bicubic"` is the other choice
   the papers leave open), so that deep, coarse layers and shallow, fine ones line up;
3. L2-normalise each layer's vector per pixel, so that no layer dominates by its scale, and
   concatenate;
4. k-means: per image (`concept_maps`: labels are local to each image), or fitted once on a
   sample of pixels from many images and applied to new ones (`fit_concepts` and
   `apply_concepts`: the same concept has the same label everywhere).

`superpixelify` then averages a saliency map within each segment (NAS); `best_segment_iou`
scores a segmentation against object masks; `concept_figure` draws concept maps, one column
per k.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.kmeans import kmeans, kmeans_predict

FeaturesFn = Callable[[jax.Array], Mapping[str, jax.Array]]


class ConceptMaps(NamedTuple):
    """Concept segmentations.

    Attributes:
      labels: `[B, H, W]` int32, each pixel's concept at the image's size.
      grid_labels: `[B, g_h, g_w]` int32, the concepts on the grid they were computed on.
      centroids: `[B, k, F]` per image (`concept_maps`) or `[k, F]` shared (`apply_concepts`).
    """

    labels: jax.Array
    grid_labels: jax.Array
    centroids: jax.Array


class Concepts(NamedTuple):
    """Concepts fitted on a dataset sample (`fit_concepts`), to apply to any image.

    Attributes:
      centroids: `[k, F]`, in the normalised, concatenated feature space.
      layers: the layer names, in the order their features are concatenated.
      grid: `(g_h, g_w)`, the grid the features are resized to.
      inertia: the k-means inertia of the fit.
    """

    centroids: jax.Array
    layers: tuple[str, ...]
    grid: tuple[int, int]
    inertia: jax.Array


def concept_features(
    maps: Mapping[str, jax.Array],
    *,
    grid: tuple[int, int],
    layers: tuple[str, ...] | None = None,
    resize: str = "bilinear",
) -> jax.Array:
    """The per-pixel concept features: each layer resized to `grid`, L2-normalised per pixel,
    concatenated in `layers` order (default: sorted names).

    Args:
      maps: `{name: [B, h, w, c]}`.
      grid: `(g_h, g_w)`.

    Returns:
      `[B, g_h, g_w, F]` float32, F the summed channels; each layer's block has unit norm
      (zero where the layer is zero).
    """
    if resize not in ("bilinear", "bicubic", "nearest"):
        raise ValueError(f"resize must be bilinear, bicubic or nearest; got {resize!r}.")
    names = tuple(sorted(maps)) if layers is None else tuple(layers)
    if not names:
        raise ValueError("concept features need at least one layer.")
    blocks = []
    for name in names:
        x = jnp.asarray(maps[name], jnp.float32)  # [B, h, w, c]
        b, _, _, c = x.shape
        x = jax.image.resize(x, (b, *grid, c), method=resize)
        norm = jnp.sqrt(jnp.sum(x * x, axis=-1, keepdims=True))
        blocks.append(x / jnp.maximum(norm, 1e-12))
    return jnp.concatenate(blocks, axis=-1)


def _features_on_grid(
    features_fn: FeaturesFn,
    images: jax.Array,
    grid: tuple[int, int] | None,
    layers: tuple[str, ...] | None,
    resize: str,
) -> tuple[jax.Array, tuple[int, int], tuple[str, ...]]:
    """`concept_features` of `features_fn(images)` on `grid` (default: the finest layer's
    size), with the grid and the layer names it used."""
    maps = features_fn(images)
    grid = tuple(grid or max((m.shape[1:3] for m in maps.values()), key=lambda s: s[0] * s[1]))
    names = tuple(sorted(maps)) if layers is None else tuple(layers)
    return concept_features(maps, grid=grid, layers=names, resize=resize), grid, names


def _labels_at_image_size(grid_labels: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Nearest-neighbour upsampling of `[B, g_h, g_w]` labels to `[B, H, W]`."""
    b = grid_labels.shape[0]
    return jax.image.resize(grid_labels, (b, *size), method="nearest").astype(jnp.int32)


def concept_maps(
    features_fn: FeaturesFn,
    images: jax.Array,
    *,
    k: int,
    rng: jax.Array,
    grid: tuple[int, int] | None = None,
    layers: tuple[str, ...] | None = None,
    resize: str = "bilinear",
    n_init: int = 3,
    max_iter: int = 100,
) -> ConceptMaps:
    """Each image segmented into `k` concepts by k-means on its own activation vectors.

    Labels are local to each image: concept 2 of one image and of another need not match
    (use `fit_concepts` for labels shared across images).

    Args:
      features_fn: `features_fn(images [B, H, W, C]) -> {name: [B, h, w, c]}`.
      images: `[B, H, W, C]`.
      k: concepts per image, at most the grid's pixel count.
      rng: a PRNG key; image i uses `fold_in(rng, i)`.
      grid: the common grid; default: the finest layer's size.
      layers: which of the returned maps to use, in order (default: all, sorted by name).
      resize: `bilinear`, `bicubic` or `nearest`, to bring each layer to `grid`.

    Returns:
      `ConceptMaps(labels [B, H, W], grid_labels [B, g_h, g_w], centroids [B, k, F])`.
    """
    features, _, _ = _features_on_grid(features_fn, images, grid, layers, resize)
    b, gh, gw, f = features.shape
    if k > gh * gw:
        raise ValueError(f"k={k} concepts need at least {k} grid pixels; the grid is {gh}×{gw}.")
    keys = jax.vmap(lambda i: jax.random.fold_in(rng, i))(jnp.arange(b))
    fit = jax.vmap(lambda x, key: kmeans(x, k, key, n_init=n_init, max_iter=max_iter))
    result = fit(features.reshape(b, gh * gw, f), keys)
    grid_labels = result.labels.reshape(b, gh, gw)
    return ConceptMaps(
        _labels_at_image_size(grid_labels, images.shape[1:3]), grid_labels, result.centroids
    )


def fit_concepts(
    features_fn: FeaturesFn,
    images: jax.Array,
    *,
    k: int,
    rng: jax.Array,
    grid: tuple[int, int] | None = None,
    layers: tuple[str, ...] | None = None,
    resize: str = "bilinear",
    pixels_per_image: int | None = None,
    n_init: int = 3,
    max_iter: int = 300,
) -> Concepts:
    """`k` concepts fitted on the activations of a sample of images, to share across images.

    Args:
      features_fn, images, grid, layers, resize: as for `concept_maps`.
      pixels_per_image: draw this many grid pixels per image at random (default: all), to
        bound the fit's memory on large samples.

    Returns:
      `Concepts(centroids [k, F], layers, grid, inertia)`.
    """
    features, grid, names = _features_on_grid(features_fn, images, grid, layers, resize)
    b, gh, gw, f = features.shape
    points = features.reshape(b, gh * gw, f)
    sample_rng, fit_rng = jax.random.split(rng)
    if pixels_per_image is not None and pixels_per_image < gh * gw:
        keys = jax.random.split(sample_rng, b)
        picks = jax.vmap(lambda key: jax.random.permutation(key, gh * gw)[:pixels_per_image])(keys)
        points = jnp.take_along_axis(points, picks[..., None], axis=1)
    result = kmeans(points.reshape(-1, f), k, fit_rng, n_init=n_init, max_iter=max_iter)
    return Concepts(result.centroids, names, grid, result.inertia)


def apply_concepts(
    concepts: Concepts, features_fn: FeaturesFn, images: jax.Array, *, resize: str = "bilinear"
) -> ConceptMaps:
    """Segments `images [B, H, W, C]` into the fitted concepts: each pixel takes its nearest
    centroid, so a label means the same concept in every image."""
    features, _, _ = _features_on_grid(features_fn, images, concepts.grid, concepts.layers, resize)
    grid_labels = kmeans_predict(features, concepts.centroids)  # [B, g_h, g_w]
    return ConceptMaps(
        _labels_at_image_size(grid_labels, images.shape[1:3]), grid_labels, concepts.centroids
    )


def superpixelify(saliency: jax.Array, labels: jax.Array) -> jax.Array:
    """Each pixel's saliency replaced by the mean saliency of its segment (NAS).

    Args:
      saliency: `[B, H, W]`.
      labels: `[B, H, W]` int segment labels (any non-negative values, per image).

    Returns:
      `[B, H, W]` float32, constant within each segment of each image.
    """
    saliency = jnp.asarray(saliency, jnp.float32)
    b = saliency.shape[0]
    flat_labels = jnp.asarray(labels, jnp.int32).reshape(b, -1)
    flat = saliency.reshape(b, -1)
    segments = flat.shape[1]  # enough ids for any labelling of the image's pixels

    def per_image(values, ids):
        sums = jax.ops.segment_sum(values, ids, num_segments=segments)
        counts = jax.ops.segment_sum(jnp.ones_like(values), ids, num_segments=segments)
        return (sums / jnp.maximum(counts, 1.0))[ids]

    return jax.vmap(per_image)(flat, flat_labels).reshape(saliency.shape)


def best_segment_iou(labels: np.ndarray, masks: np.ndarray) -> np.ndarray:
    """For each image, the IoU of its best-matching segment with its object mask.

    Args:
      labels: `[B, H, W]` int segment labels.
      masks: `[B, H, W]` bool object masks.

    Returns:
      `[B]` float64, max over the image's segments s of |s ∩ mask| / |s ∪ mask|.
    """
    labels, masks = np.asarray(labels), np.asarray(masks, bool)
    out = np.zeros(labels.shape[0])
    for i, (segments, mask) in enumerate(zip(labels, masks, strict=True)):
        ids = np.unique(segments)
        inside = np.array([np.sum((segments == s) & mask) for s in ids])
        sizes = np.array([np.sum(segments == s) for s in ids])
        out[i] = np.max(inside / (sizes + mask.sum() - inside))
    return out


def concept_overlay(image: np.ndarray, labels: np.ndarray, *, alpha: float = 0.55) -> np.ndarray:
    """An image `[H, W, C]` in [0, 1] blended with one colour per segment of `labels [H, W]`
    (matplotlib's tab10/tab20 colours); `[H, W, 3]`."""
    from protojax.explain.figures import pyplot
    from protojax.imaging import to_rgb

    palette = np.asarray(pyplot().get_cmap("tab20").colors)[::2]  # the 10 strong colours
    palette = np.concatenate([palette, np.asarray(pyplot().get_cmap("tab20").colors)[1::2]])
    colours = palette[np.asarray(labels) % len(palette)]
    return (1 - alpha) * to_rgb(image) + alpha * colours


def concept_figure(images: np.ndarray, labels: Mapping[int, np.ndarray], *, titles: Sequence[str]):
    """One row per image: the image, then its concept map overlaid for each k, one column per
    k (`labels[k]` is `[B, H, W]`)."""
    from protojax.explain.figures import pyplot, show

    plt = pyplot()
    ks = sorted(labels)
    b = images.shape[0]
    fig, axes = plt.subplots(b, len(ks) + 1, figsize=(1.8 * (len(ks) + 1), 1.8 * b + 0.3))
    axes = np.asarray(axes).reshape(b, len(ks) + 1)
    for row in range(b):
        show(axes[row, 0], images[row], titles[row])
        for col, k in enumerate(ks, start=1):
            overlay = concept_overlay(images[row], np.asarray(labels[k][row]))
            show(axes[row, col], overlay, f"k = {k}" if row == 0 else "")
    fig.tight_layout()
    return fig


__all__ = [
    "ConceptMaps",
    "Concepts",
    "apply_concepts",
    "best_segment_iou",
    "concept_features",
    "concept_figure",
    "concept_maps",
    "concept_overlay",
    "fit_concepts",
    "superpixelify",
]
