"""scikit-learn's 1,797 real 8×8 digits, the embedded dataset of the quick start and tests.

Pixels are divided by 16 into [0, 1] and resized bilinearly to `image_size` (0: 28 px, as
MNIST; 8 keeps the native size). The split is
`train_test_split(test_size=0.2, stratify=y, random_state=0)` (1,437 train, 360 test), and a
further stratified 10% of train forms `val` (1,293 train, 144 val); with `val_fraction=0`
there is no `val` split.
"""

from __future__ import annotations

import numpy as np

from protojax.data.base import ArraySplit, Dataset, stratified_split


def resize_bilinear(images: np.ndarray, size: int) -> np.ndarray:
    """Bilinear resize with half-pixel centres: `[N, h, w, C]` → `[N, size, size, C]`."""
    n, h, w, c = images.shape
    if (h, w) == (size, size):
        return images.astype(np.float32)

    def axis_weights(src: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        coords = (np.arange(size) + 0.5) * src / size - 0.5
        coords = np.clip(coords, 0, src - 1)
        lo = np.floor(coords).astype(np.int64)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (coords - lo).astype(np.float32)

    y0, y1, wy = axis_weights(h)
    x0, x1, wx = axis_weights(w)
    images = images.astype(np.float32)
    rows = images[:, y0] * (1 - wy)[None, :, None, None] + images[:, y1] * wy[None, :, None, None]
    return rows[:, :, x0] * (1 - wx)[None, None, :, None] + rows[:, :, x1] * wx[None, None, :, None]


DEFAULT_SIZE = 28


def load_digits(
    image_size: int = DEFAULT_SIZE, val_fraction: float = 0.1, seed: int = 0
) -> Dataset:
    """The digits dataset with `train`, `val` (unless `val_fraction` is 0) and `test` splits,
    images `[N, S, S, 1]`."""
    from sklearn.datasets import load_digits as sk_load_digits
    from sklearn.model_selection import train_test_split

    digits = sk_load_digits()
    images = (digits.images / 16.0).astype(np.float32)[..., None]  # [1797, 8, 8, 1]
    labels = digits.target.astype(np.int32)
    size = image_size or DEFAULT_SIZE
    images = np.clip(resize_bilinear(images, size), 0.0, 1.0)
    all_idx = np.arange(len(labels))
    train_idx, test_idx = train_test_split(all_idx, test_size=0.2, stratify=labels, random_state=0)
    keep, held = stratified_split(labels[train_idx], val_fraction, seed)
    val_idx, train_idx = train_idx[held], train_idx[keep]

    def split(idx):
        return ArraySplit(images[idx], labels[idx])

    splits = {"train": split(train_idx), "val": split(val_idx), "test": split(test_idx)}
    if not val_fraction:
        del splits["val"]
    return Dataset(
        name="digits",
        num_classes=10,
        class_names=tuple(str(d) for d in range(10)),
        image_shape=(size, size, 1),
        splits=splits,
    )
