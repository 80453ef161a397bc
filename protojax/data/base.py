"""The random-access split and dataset types that every source returns.

A split serves examples by index. `get_batch(indices)` returns the batch dict of the method
protocol (`protojax.train.protocol`) without the `valid` field: `image [n,H,W,C] float32` in
[0, 1], `label [n] int32`, `index [n] int32`, and source-specific fields
(`mask [n,H,W] bool`, `box [n,4] int32`, ...). Normalization and augmentation happen later,
in the pipeline.
"""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from protojax.errors import DataError


class Split(abc.ABC):
    """A random-access split of a dataset."""

    @abc.abstractmethod
    def __len__(self) -> int: ...

    @property
    @abc.abstractmethod
    def labels(self) -> np.ndarray:
        """All labels of the split, `[N] int32`, in index order."""

    @abc.abstractmethod
    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        """The examples at `indices [n]` as a batch dict (see the module docstring)."""


class ArraySplit(Split):
    """A split held in memory as arrays.

    Args:
      images: `[N, H, W, C]`, uint8 in [0, 255] or float in [0, 1].
      labels: `[N]` integer class ids.
      extras: further per-example arrays with leading dimension N (`mask`, `box`, ...).
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        extras: dict[str, np.ndarray] | None = None,
    ):
        if images.ndim != 4:
            raise DataError(
                f"Images must be [N, H, W, C]; got shape {images.shape}. Add a channel axis "
                "for grayscale images."
            )
        if len(images) != len(labels):
            raise DataError(f"{len(images)} images but {len(labels)} labels; they must match.")
        self.images = images
        self._labels = np.asarray(labels, np.int32)
        self.extras = dict(extras or {})
        for key, value in self.extras.items():
            if len(value) != len(images):
                raise DataError(f"Field '{key}' has {len(value)} rows for {len(images)} images.")

    def __len__(self) -> int:
        return len(self._labels)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        images = self.images[indices]
        images = (
            images.astype(np.float32) / 255.0
            if images.dtype == np.uint8
            else images.astype(np.float32)
        )
        batch = {
            "image": images,
            "label": self._labels[indices],
            "index": indices.astype(np.int32),
        }
        for key, value in self.extras.items():
            batch[key] = value[indices]
        return batch


@dataclasses.dataclass(frozen=True)
class Dataset:
    """A dataset: its description and its named splits (`train`, `val`, `test`, ...)."""

    name: str
    num_classes: int
    class_names: tuple[str, ...]
    image_shape: tuple[int, int, int]  # (H, W, C) as served to the model
    splits: dict[str, Split]

    def split(self, name: str) -> Split:
        if name not in self.splits:
            raise DataError(
                f"Dataset '{self.name}' has no split '{name}'; it has {', '.join(self.splits)}."
            )
        return self.splits[name]


def stratified_split(
    labels: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Splits indices `[N]` into (keep, held_out) with `fraction` of each class held out.

    A `fraction` of 0 holds nothing out: `held_out` is empty.
    """
    from sklearn.model_selection import train_test_split

    indices = np.arange(len(labels))
    if fraction == 0:
        return indices, indices[:0]
    keep, held = train_test_split(
        indices, test_size=fraction, stratify=labels, random_state=seed, shuffle=True
    )
    return np.sort(keep), np.sort(held)
