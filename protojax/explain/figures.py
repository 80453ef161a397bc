"""Figures of prototype models, as matplotlib figures built from arrays: the "this looks like
that" explanation of one image, a class's gallery of prototypes, decoded prototypes, inputs
beside their reconstructions, and the 2-D PCA of a latent space with its prototypes.

Images are `[H, W, C]` with values in [0, 1] (denormalise first). Each function returns the
figure; save it with `fig.savefig` (or a run's `ctx.save_figure`) and close it. matplotlib is
imported when a figure is built, with the file-only Agg backend.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from protojax.imaging import overlay_heatmap, to_rgb

BOX_COLOUR = (1.0, 0.85, 0.0)


def pyplot():
    """matplotlib.pyplot with the Agg backend (the model code runs without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save(fig, path: pathlib.Path) -> pathlib.Path:
    """Writes the figure as a PNG (creating its folder) and closes it; returns the path."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    pyplot().close(fig)
    return path


def show(ax, image: np.ndarray, title: str = "", box=None) -> None:
    """Shows an image `[H, W, C]` in [0, 1] pixel-exact, without ticks, with box (y0, x0, y1,
    x1) outlined on top of it."""
    from matplotlib.patches import Rectangle

    image = np.clip(np.asarray(image), 0, 1)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    if box is not None:
        y0, x0, y1, x1 = (int(v) for v in box)
        # Pixel i spans [i − 0.5, i + 0.5] in imshow's coordinates.
        ax.add_patch(
            Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=2, ec=BOX_COLOUR)
        )
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


class Evidence(NamedTuple):
    """One prototype's part in an explanation: its activation on the image and the training
    patch it stands for.

    Attributes:
      activation: `[H, W]` the prototype's similarity map on the image, upsampled.
      box: `[4]` the activation's 95th-percentile box in the image.
      patch: `[h, w, C]` the prototype's high-activation crop of its source image.
      source: `[H', W', C]` the source image.
      source_box: `[4]` the box in the source image.
      text: what the row says (prototype, similarity, weight, contribution).
    """

    activation: np.ndarray
    box: np.ndarray
    patch: np.ndarray
    source: np.ndarray
    source_box: np.ndarray
    text: str


def this_looks_like_that(image: np.ndarray, evidence: Sequence[Evidence], *, title: str):
    """One row per prototype: the image with the activation's box, the activation overlay,
    the prototype's patch ("looks like"), its source image with box, and the row's text."""
    plt = pyplot()
    image = to_rgb(image)
    fig, axes = plt.subplots(
        len(evidence),
        5,
        figsize=(11, 2.3 * len(evidence) + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.4]},
    )
    fig.suptitle(title, fontsize=10)
    for r, e in enumerate(evidence):
        first = r == 0
        show(axes[r, 0], image, "this image" if first else "", e.box)
        show(axes[r, 1], overlay_heatmap(image, e.activation), "activation" if first else "", e.box)
        show(axes[r, 2], to_rgb(e.patch), "looks like" if first else "")
        source_title = "prototype's source" if first else ""
        show(axes[r, 3], to_rgb(e.source), source_title, e.source_box)
        axes[r, 4].axis("off")
        axes[r, 4].text(0.0, 0.5, e.text, fontsize=9, va="center", family="monospace")
    fig.tight_layout()
    return fig


def class_gallery(
    patches: Sequence[np.ndarray],
    sources: Sequence[np.ndarray],
    boxes: Sequence[np.ndarray],
    titles: Sequence[str],
    *,
    title: str,
):
    """A class's prototypes in columns: the patch above, the source image with box below."""
    plt = pyplot()
    n = len(patches)
    fig, axes = plt.subplots(2, n, figsize=(1.8 * n + 0.4, 4.0), squeeze=False)
    fig.suptitle(title, fontsize=10)
    for col in range(n):
        show(axes[0, col], to_rgb(patches[col]), titles[col])
        show(axes[1, col], to_rgb(sources[col]), box=boxes[col])
    fig.tight_layout()
    return fig


def centroid_gallery(
    images: np.ndarray,
    importance: np.ndarray,
    *,
    class_names: Sequence[str],
    title: str,
    max_classes: int = 20,
):
    """Centroid prototypes (KMEx), one row per class: each centroid's image (its nearest
    training image of the class) titled with its importance, the training images it
    represents.

    Args:
      images: `[K, M, H, W, C]` in [0, 1].
      importance: `[K, M]`.
      class_names: K names.
      max_classes: rows shown at most (the first classes).
    """
    plt = pyplot()
    k, m = images.shape[:2]
    rows = min(k, max_classes)
    fig, axes = plt.subplots(rows, m, figsize=(1.5 * m + 1.2, 1.55 * rows + 0.6), squeeze=False)
    fig.suptitle(title, fontsize=9)
    for r in range(rows):
        for col in range(m):
            show(axes[r, col], to_rgb(images[r, col]), f"n={int(importance[r, col])}")
        axes[r, 0].set_ylabel(str(class_names[r]), fontsize=8)
    fig.tight_layout()
    return fig


def nearest_prototypes(
    image: np.ndarray, prototype_images: Sequence[np.ndarray], texts: Sequence[str], *, title: str
):
    """An image beside the images of its nearest prototypes, each with its text below."""
    plt = pyplot()
    n = len(prototype_images)
    fig, axes = plt.subplots(1, n + 1, figsize=(1.9 * (n + 1), 2.9), squeeze=False)
    fig.suptitle(title, fontsize=9)
    show(axes[0, 0], to_rgb(image), "this image")
    for col, (source, text) in enumerate(zip(prototype_images, texts, strict=True), start=1):
        show(axes[0, col], to_rgb(source))
        axes[0, col].set_xlabel(text, fontsize=7)
    fig.tight_layout()
    return fig


def decoded_prototypes(
    decoded: np.ndarray,
    active: np.ndarray,
    *,
    prototypes_per_class: int,
    class_names: Sequence[str],
    title: str,
):
    """Decoded prototypes `[P, H, W, C]` in [0, 1], one row per class (prototype j in row
    j // M); inactive ones are crossed out."""
    plt = pyplot()
    m = prototypes_per_class
    k = len(decoded) // m
    fig, axes = plt.subplots(k, m, figsize=(1.1 * m + 1.2, 1.1 * k), squeeze=False)
    for j, ax in enumerate(axes.ravel()):
        show(ax, decoded[j])
        if not active[j]:
            ax.plot([0, 1], [0, 1], "r-", [0, 1], [1, 0], "r-", transform=ax.transAxes, lw=1)
        if j % m == 0:
            ax.set_ylabel(class_names[j // m], rotation=0, ha="right", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def reconstructions(images: np.ndarray, rebuilt: np.ndarray, *, title: str):
    """Images `[n, H, W, C]` (top row) above their reconstructions (bottom row), in [0, 1]."""
    plt = pyplot()
    n = len(images)
    fig, axes = plt.subplots(2, n, figsize=(0.9 * n, 2.2), squeeze=False)
    for i in range(n):
        show(axes[0, i], images[i])
        show(axes[1, i], rebuilt[i])
    axes[0, 0].set_ylabel("input", rotation=0, ha="right", va="center")
    axes[1, 0].set_ylabel("decoded", rotation=0, ha="right", va="center")
    fig.suptitle(title)
    fig.tight_layout()
    return fig


def pca_2d(points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean `[d]`, components `[d, 2]`): the first two principal axes of `points [N, d]`;
    project with `(x − mean) @ components`."""
    mean = points.mean(axis=0)
    _, _, vt = np.linalg.svd(points - mean, full_matrices=False)
    return mean, vt[:2].T


def latent_pca(
    latents: np.ndarray,
    labels: np.ndarray,
    prototypes: np.ndarray,
    prototype_class: np.ndarray,
    active: np.ndarray,
    *,
    class_names: Sequence[str],
    title: str,
):
    """Latents `[N, d]` (dots, coloured by label) and prototypes `[P, d]` (stars; inactive
    ones as grey crosses) on the latents' first two principal components."""
    plt = pyplot()
    mean, to_2d = pca_2d(latents)
    points, corners = (latents - mean) @ to_2d, (prototypes - mean) @ to_2d
    num_classes = len(class_names)
    colours = plt.get_cmap("tab10" if num_classes <= 10 else "tab20")
    fig, ax = plt.subplots(figsize=(6.4, 5.2))
    for c in range(num_classes):
        colour = colours(c % colours.N)
        ax.scatter(*points[labels == c].T, s=6, alpha=0.35, color=colour, label=class_names[c])
        mine = (prototype_class == c) & active
        ax.scatter(
            *corners[mine].T,
            s=150,
            marker="*",
            color=colour,
            edgecolors="black",
            linewidths=0.8,
            zorder=3,
        )
    if (~active).any():
        ax.scatter(*corners[~active].T, s=60, marker="x", color="0.4", zorder=3, label="eliminated")
    ax.set(xlabel="PC 1", ylabel="PC 2", title=title)
    ax.legend(fontsize=7, markerscale=2, loc="best", ncol=2)
    fig.tight_layout()
    return fig


__all__ = [
    "Evidence",
    "class_gallery",
    "decoded_prototypes",
    "latent_pca",
    "pca_2d",
    "reconstructions",
    "save",
    "show",
    "this_looks_like_that",
]
