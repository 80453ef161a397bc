"""QuickDraw as in the official ProtoVAE setup: `quickdraw:PATH`.

PATH holds one `<category>_small.npy` per class of `CATEGORIES` (the class order), each a
uint8 array of 28×28 drawings stored as `[N, 784]` or `[N, 28, 28]`. Rows
`[0, train_per_class)` of every file are training examples and the next `test_per_class`
rows are test examples (8,000 and 2,000 in ProtoVAE, whose loader uses raw row indices, not a
shuffle). A stratified `data.val_fraction` of the training rows forms the validation split.

Each file is memory-mapped once; a batch reads only its rows. Images are served as
`[S, S, 1]` in [0, 1], resized bilinearly from 28 px when `data.image_size` is not 28 or 0.
A relative PATH is taken under `data.data_dir` when that is set.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from protojax.config import ConfigDict
from protojax.data.base import Dataset, Split, stratified_split
from protojax.data.digits import resize_bilinear
from protojax.data.folder import resolve_path
from protojax.errors import DataError

CATEGORIES = ("ant", "apple", "banana", "carrot", "cat", "cow", "dog", "frog", "grapes", "lion")
SIDE = 28


def _open(path: Path, rows_needed: int) -> np.ndarray:
    """Memory-maps one category file and checks it; returns `[N, 784]` uint8."""
    try:
        array = np.load(path, mmap_mode="r")
    except (OSError, ValueError) as error:
        raise DataError(
            f"Cannot read {path} as a NumPy array ({error}); if it is a Git LFS pointer, "
            "fetch the real file with git lfs pull."
        ) from error
    if array.dtype != np.uint8 or array.shape[1:] not in ((SIDE * SIDE,), (SIDE, SIDE)):
        raise DataError(
            f"{path} holds {array.dtype} {array.shape}; expected uint8 rows of 784 values or "
            "28×28 images."
        )
    if len(array) < rows_needed:
        raise DataError(
            f"{path} has {len(array)} rows but the split needs {rows_needed}; lower "
            "data.quickdraw.train_per_class or test_per_class."
        )
    return array.reshape(len(array), SIDE * SIDE)


class QuickDrawSplit(Split):
    """Rows of the memory-mapped category files.

    Args:
      arrays: one `[N_k, 784]` uint8 array per class.
      labels: `[N]` class of each example.
      rows: `[N]` row of each example in its class's array.
      size: the image side served.
    """

    def __init__(self, arrays: list[np.ndarray], labels: np.ndarray, rows: np.ndarray, size: int):
        self.arrays = arrays
        self._labels = np.asarray(labels, np.int32)
        self.rows = np.asarray(rows, np.int64)
        self.size = size

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        labels, rows = self._labels[indices], self.rows[indices]
        pixels = np.empty((len(indices), SIDE * SIDE), np.uint8)
        for label in np.unique(labels):
            chosen = labels == label
            pixels[chosen] = self.arrays[label][rows[chosen]]
        images = pixels.reshape(-1, SIDE, SIDE, 1).astype(np.float32) / 255.0
        if self.size != SIDE:
            images = np.clip(resize_bilinear(images, self.size), 0.0, 1.0)
        return {"image": images, "label": labels, "index": indices.astype(np.int32)}


def load_quickdraw(config: ConfigDict) -> Dataset:
    """The 10-class QuickDraw dataset named by `config.name = "quickdraw:PATH"`.

    Args:
      config: the `data` section; reads `name`, `data_dir`, `image_size`, `val_fraction`,
        `split_seed` and `quickdraw.{train_per_class, test_per_class}`.

    Returns:
      A `Dataset` of `[S, S, 1]` images with `train`, `val` (none if `val_fraction` is 0) and
      `test` splits.
    """
    root = resolve_path(config.name[len("quickdraw:") :], config.data_dir)
    if not root.is_dir():
        raise DataError(f"QuickDraw folder {root} does not exist; check data.name=quickdraw:PATH.")
    files = [root / f"{category}_small.npy" for category in CATEGORIES]
    missing = [path.name for path in files if not path.is_file()]
    if missing:
        raise DataError(
            f"QuickDraw folder {root} lacks {', '.join(missing)}; put the ProtoVAE "
            "<category>_small.npy files there."
        )
    num_train = config.quickdraw.train_per_class
    num_test = config.quickdraw.test_per_class
    arrays = [_open(path, num_train + num_test) for path in files]
    classes = np.arange(len(CATEGORIES))
    train_labels = np.repeat(classes, num_train)
    train_rows = np.tile(np.arange(num_train), len(CATEGORIES))
    test_labels = np.repeat(classes, num_test)
    test_rows = np.tile(np.arange(num_train, num_train + num_test), len(CATEGORIES))
    try:
        keep, held = stratified_split(train_labels, config.val_fraction, config.split_seed)
    except ValueError as error:
        raise DataError(
            f"Cannot hold out a stratified {config.val_fraction} of the QuickDraw training "
            f"rows as validation ({error}); raise data.val_fraction."
        ) from error
    size = config.image_size or SIDE

    def split(labels: np.ndarray, rows: np.ndarray) -> QuickDrawSplit:
        return QuickDrawSplit(arrays, labels, rows, size)

    return Dataset(
        name=config.name,
        num_classes=len(CATEGORIES),
        class_names=CATEGORIES,
        image_shape=(size, size, 1),
        splits={
            "train": split(train_labels[keep], train_rows[keep]),
            **({"val": split(train_labels[held], train_rows[held])} if len(held) else {}),
            "test": split(test_labels, test_rows),
        },
    )
