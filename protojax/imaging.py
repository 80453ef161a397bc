"""NumPy image helpers for figures: grey to RGB, box outlines and crops, heat-map overlays, PNGs.

Boxes everywhere in protojax are (y0, x0, y1, x1) in pixels with exclusive ends.
"""

from __future__ import annotations

import pathlib

import numpy as np


def to_rgb(image: np.ndarray) -> np.ndarray:
    """`[H, W, C]` in [0, 1] → `[H, W, 3]` float32 (grey images repeated)."""
    image = np.clip(np.asarray(image, np.float32), 0.0, 1.0)
    return np.repeat(image, 3, axis=-1) if image.shape[-1] == 1 else image[..., :3]


def draw_box(image: np.ndarray, box, color, *, thickness: int = 0) -> np.ndarray:
    """A copy of `image [H, W, 3]` with the outline of box (y0, x0, y1, x1) drawn in `color`;
    `thickness` 0 picks about 1% of the image side (at least 1 px)."""
    out = np.array(image, np.float32, copy=True)
    height, width = out.shape[:2]
    t = thickness or max(1, round(min(height, width) / 100))
    y0, x0, y1, x1 = (int(v) for v in box)
    out[y0 : min(y0 + t, y1), x0:x1] = color
    out[max(y1 - t, y0) : y1, x0:x1] = color
    out[y0:y1, x0 : min(x0 + t, x1)] = color
    out[y0:y1, max(x1 - t, x0) : x1] = color
    return out


def crop(image: np.ndarray, box) -> np.ndarray:
    """`image[y0:y1, x0:x1]` for box (y0, x0, y1, x1)."""
    y0, x0, y1, x1 = (int(v) for v in box)
    return image[y0:y1, x0:x1]


def overlay_heatmap(image: np.ndarray, activation: np.ndarray) -> np.ndarray:
    """0.5·image + 0.3·jet(min–max normalised activation), as the official overlays."""
    from matplotlib import colormaps

    a = np.asarray(activation, np.float32)
    a = (a - a.min()) / max(float(a.max() - a.min()), 1e-12)
    heat = colormaps["jet"](a)[..., :3].astype(np.float32)
    return np.clip(0.5 * image + 0.3 * heat, 0.0, 1.0)


def save_png(path: pathlib.Path, image: np.ndarray) -> None:
    """Writes `image [H, W, 3]` in [0, 1] as an 8-bit PNG."""
    from PIL import Image

    Image.fromarray(np.round(np.clip(image, 0, 1) * 255).astype(np.uint8)).save(path)
