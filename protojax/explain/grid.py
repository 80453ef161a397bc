"""Figures that set explainers side by side: a comparison grid and one figure per image.

Model-agnostic: they take images `[N, H, W, C]` in [0, 1], maps `{name: [N, H, W]}` and the
predictions and labels as text. Maps are drawn with a diverging colour map centred at zero
(red: evidence for the score, blue: against), over a faint grey copy of the image, each with a
colour bar. A map holding NaN or ±inf is not drawn: its panel says so.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np

CMAP = "RdBu_r"
# Maps without negative values (Grad-CAM, RELAX) in the per-image figures: their own range.
SEQUENTIAL_CMAP = "inferno"
# How much of the grey image shows under a map: white (zero) areas let it through.
_MAP_ALPHA = 0.75


def _pyplot():
    """matplotlib.pyplot on the file-only Agg backend (imported lazily: the explainers run
    without matplotlib)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _grey(image: np.ndarray) -> np.ndarray:
    """`[H, W, C]` in [0, 1] → `[H, W]` luminance (the mean over channels)."""
    return np.clip(np.asarray(image, np.float32), 0.0, 1.0).mean(axis=-1)


def _show_image(ax, image: np.ndarray) -> None:
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0.0, vmax=1.0, interpolation="nearest")
    else:
        ax.imshow(image[..., :3], interpolation="nearest")


def _show_map(ax, image: np.ndarray, values: np.ndarray, limit: float, cmap: str, low=None):
    """Draws `values [H, W]` in [−limit, limit] (or [low, limit]) over the grey image; returns
    the map's artist, or None (after writing why on the panel) when it holds non-finite
    values."""
    ax.imshow(_grey(image), cmap="gray", vmin=0.0, vmax=1.0, alpha=0.35, interpolation="nearest")
    values = np.asarray(values, np.float32)
    if not np.all(np.isfinite(values)):
        bad = int(np.sum(~np.isfinite(values)))
        ax.text(0.5, 0.5, f"{bad} non-finite\nvalues", color="crimson", fontsize=8,
                ha="center", va="center", transform=ax.transAxes)  # fmt: skip
        return None
    return ax.imshow(
        values,
        cmap=cmap,
        vmin=-limit if low is None else low,
        vmax=limit,
        alpha=_MAP_ALPHA,
        interpolation="nearest",
    )


def _max_abs(values: np.ndarray) -> float:
    """max |values| over finite entries, at least a tiny positive number (a zero map is white)."""
    finite = np.abs(values[np.isfinite(values)])
    return max(float(finite.max()) if finite.size else 0.0, 1e-12)


def _off(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def _check(images: np.ndarray, maps: Mapping[str, np.ndarray], count: int | None = None):
    images = np.asarray(images, np.float32)
    if images.ndim != 4:
        raise ValueError(f"images must have shape [N, H, W, C]; got {images.shape}.")
    if not maps:
        raise ValueError("maps is empty; give at least one explainer's [N, H, W] maps.")
    maps = {name: np.asarray(values, np.float32) for name, values in maps.items()}
    for name, values in maps.items():
        if values.shape != images.shape[:3]:
            raise ValueError(
                f"maps[{name!r}] has shape {values.shape}; it must be [N, H, W] = "
                f"{images.shape[:3]}, like the images (reduce [N, H, W, C] attributions with "
                "protojax.explain.reduce_channels)."
            )
    if count is not None and count != images.shape[0]:
        raise ValueError(f"give one prediction and one label per image ({images.shape[0]}).")
    return images, maps


def comparison_grid(
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    predictions: Sequence[str],
    labels: Sequence[str],
    notes: Sequence[str] | None = None,
    title: str = "",
    cmap: str = CMAP,
):
    """Rows are images, columns are explainers: a matplotlib figure.

    Each row starts with the image, titled with its prediction and label (in red when they
    differ) and an optional note (such as the predicted probability). Each map is divided by
    its own max |value|, so that maps of different scales share one colour bar in [−1, 1];
    each panel names that max so that scales stay comparable.

    Args:
      images: `[N, H, W, C]` in [0, 1].
      maps: `{explainer: [N, H, W]}`, in column order.
      predictions: N predicted class names.
      labels: N true class names.
      notes: N strings shown under them, or None.
      title: the figure's title.
      cmap: a diverging matplotlib colour map.

    Returns:
      The figure (save it with `fig.savefig`, close it with `plt.close(fig)`).
    """
    notes = [""] * len(predictions) if notes is None else list(notes)
    if not len(predictions) == len(labels) == len(notes):
        raise ValueError("give as many labels (and notes) as predictions.")
    images, maps = _check(images, maps, len(predictions))
    plt = _pyplot()
    rows, cols = images.shape[0], len(maps) + 1
    cell = 1.45
    fig, axes = plt.subplots(
        rows, cols, figsize=(cell * cols + 0.9, cell * rows + 0.8), squeeze=False
    )
    artist = None
    for r in range(rows):
        ax = axes[r, 0]
        _show_image(ax, images[r])
        ax.set_ylabel(
            f"pred {predictions[r]}\nlabel {labels[r]}" + (f"\n{notes[r]}" if notes[r] else ""),
            fontsize=7,
            color="black" if predictions[r] == labels[r] else "crimson",
        )
        for c, (name, values) in enumerate(maps.items(), start=1):
            scale = _max_abs(values[r])
            drawn = _show_map(axes[r, c], images[r], values[r] / scale, 1.0, cmap)
            if drawn is not None:
                artist = drawn
                axes[r, c].set_xlabel(f"max |·| {scale:.3g}", fontsize=6)
            if r == 0:
                axes[r, c].set_title(name, fontsize=8)
        if r == 0:
            ax.set_title("image", fontsize=8)
    for ax in axes.ravel():
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    width = fig.get_figwidth()
    fig.tight_layout(rect=(0, 0, 1 - 1.0 / width, 1))
    if artist is not None:
        bar_ax = fig.add_axes((1 - 0.9 / width, 0.15, 0.12 / width, 0.7))
        bar = fig.colorbar(artist, cax=bar_ax)
        bar.set_label("relevance / max |relevance| of its map", fontsize=7)
        bar.ax.tick_params(labelsize=6)
    return fig


def explanation_figure(
    image: np.ndarray,
    maps: Mapping[str, np.ndarray],
    *,
    title: str = "",
    cmap: str = CMAP,
):
    """One image and one explainer's maps (RELAX: importance and uncertainty), each map in its
    own units with its own colour bar: symmetric about zero in the diverging `cmap`, or, for a
    map without negative values (Grad-CAM, RELAX), its own [min, max] in a sequential one.

    Args:
      image: `[H, W, C]` in [0, 1].
      maps: `{name: [H, W]}`.
      title: the figure's title, for example the explainer, prediction and label.
      cmap: a diverging matplotlib colour map.

    Returns:
      The figure.
    """
    images, maps = _check(
        np.asarray(image)[None], {k: np.asarray(v)[None] for k, v in maps.items()}
    )
    plt = _pyplot()
    cols = len(maps) + 1
    fig, axes = plt.subplots(1, cols, figsize=(2.6 * cols, 2.9), squeeze=False)
    _show_image(axes[0, 0], images[0])
    axes[0, 0].set_title("image", fontsize=9)
    for c, (name, values) in enumerate(maps.items(), start=1):
        ax = axes[0, c]
        finite = values[0][np.isfinite(values[0])]
        if finite.size and finite.min() >= 0:  # one sign: its own range, sequential colours
            low, high = float(finite.min()), max(float(finite.max()), float(finite.min()) + 1e-12)
            artist = _show_map(ax, images[0], values[0], high, SEQUENTIAL_CMAP, low=low)
        else:
            artist = _show_map(ax, images[0], values[0], _max_abs(values[0]), cmap)
        ax.set_title(name, fontsize=9)
        if artist is not None:
            bar = fig.colorbar(artist, ax=ax, fraction=0.046, pad=0.04)
            bar.ax.tick_params(labelsize=7)
            if not math.isclose(float(np.min(values)), float(np.max(values))):
                bar.set_label(f"min {np.min(values):.3g}, max {np.max(values):.3g}", fontsize=7)
    for ax in axes.ravel():
        _off(ax)
    if title:
        fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    return fig
