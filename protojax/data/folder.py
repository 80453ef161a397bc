"""Image folders: `folder:PATH` reads `PATH/{train,val,test}/<class>/*.{png,jpg,jpeg}`.

Classes are the sub-folders of `train/`, sorted by name; `val/` and `test/` may hold any subset
of them. Where `test/` is missing, a stratified `data.test_fraction` of `train/` becomes the
test split; where `val/` is missing, a stratified `data.val_fraction` of what remains becomes
the validation split (both seeded by `data.split_seed`). Every class keeps at least one
training image.

Images are decoded lazily with Pillow, converted to RGB (from grayscale, palette, RGBA, ...;
an alpha channel is dropped) and resized to `data.image_size` × `data.image_size` bilinearly
without keeping the aspect ratio, as ProtoPNet's `Resize((224, 224))` does. With
`data.image_size = 0` the side is that of the first training image, which must then be
square (otherwise loading stops and asks for a `data.image_size`). Loading reads every
image's header once and logs how many images will be converted or resized. A relative PATH
is taken under `data.data_dir` when that is set.
"""

from __future__ import annotations

import collections
import logging
from pathlib import Path

import numpy as np

from protojax.config import ConfigDict
from protojax.data.base import Dataset, Split, stratified_split
from protojax.errors import DataError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg")

log = logging.getLogger("protojax")


def resolve_path(path: str, data_dir: str) -> Path:
    """`path` as given, or under `data_dir` when it is relative and `data_dir` is set."""
    resolved = Path(path).expanduser()
    if not resolved.is_absolute() and data_dir:
        resolved = Path(data_dir).expanduser() / resolved
    return resolved


def resize_image(image: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear (antialiased) resize of a uint8 image `[h, w, C]` to `[height, width, C]`."""
    from PIL import Image

    if image.shape[:2] == (height, width):
        return image
    channels = image.shape[-1]
    pil = Image.fromarray(image[..., 0] if channels == 1 else image)
    resized = np.asarray(pil.resize((width, height), Image.Resampling.BILINEAR))
    return resized[..., None] if channels == 1 else resized


def _unreadable(path: Path, error: Exception) -> DataError:
    # Pillow reports damaged files with many types: OSError, SyntaxError ("broken PNG
    # file"), ValueError, struct.error, zlib.error, DecompressionBombError...
    text = str(error).strip()
    reason = text.splitlines()[0] if text else type(error).__name__
    return DataError(f"Cannot read image {path} ({reason}); replace or remove it.")


def _read_rgb(path: Path) -> np.ndarray:
    """The image at `path` as RGB uint8 `[h, w, 3]`; a DataError names an unreadable file."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except Exception as error:
        raise _unreadable(path, error) from error


def _header(path: Path) -> tuple[str, int, int]:
    """(mode, height, width) from the image's header, without decoding it."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return image.mode, image.height, image.width
    except Exception as error:
        raise _unreadable(path, error) from error


def survey(paths: list[Path], height: int, width: int) -> tuple[collections.Counter, int]:
    """(modes other than RGB with their counts, number of images not `height` × `width`)."""
    converted, resized = collections.Counter(), 0
    for path in paths:
        mode, h, w = _header(path)
        if mode != "RGB":
            converted[mode] += 1
        resized += (h, w) != (height, width)
    return converted, resized


class FolderSplit(Split):
    """Images listed by path, decoded on access.

    Args:
      paths: image files, one per example.
      labels: `[N]` class ids.
      height, width: the size images are resized to.
    """

    def __init__(self, paths: list[Path], labels: np.ndarray, height: int, width: int):
        self.paths = list(paths)
        self._labels = np.asarray(labels, np.int32)
        self.height, self.width = height, width

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def labels(self) -> np.ndarray:
        return self._labels

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        images = np.empty((len(indices), self.height, self.width, 3), np.uint8)
        for row, i in enumerate(indices):
            images[row] = resize_image(_read_rgb(self.paths[i]), self.height, self.width)
        return {
            "image": images.astype(np.float32) / 255.0,
            "label": self._labels[indices],
            "index": indices.astype(np.int32),
        }


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _subfolders(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _scan(split_dir: Path, classes: list[str]) -> tuple[list[Path], np.ndarray]:
    """All images under `split_dir/<class>/` with their class ids."""
    folders = _subfolders(split_dir)
    if not folders:
        raise DataError(f"{split_dir} holds no class folders; put images in {split_dir}/<class>/.")
    paths, labels = [], []
    for folder in folders:
        if folder.name not in classes:
            raise DataError(
                f"Class folder {folder} has no counterpart in train/; every class needs "
                "training images."
            )
        images = _images_in(folder)
        if not images:
            raise DataError(
                f"Class folder {folder} holds no {'/'.join(IMAGE_EXTENSIONS)} images; add "
                "some or remove it."
            )
        paths += images
        labels += [classes.index(folder.name)] * len(images)
    return paths, np.asarray(labels, np.int32)


def _hold_out(
    labels: np.ndarray, fraction: float, seed: int, *, what: str, train_dir: Path
) -> tuple[np.ndarray, np.ndarray]:
    """Stratified (keep, held) positions, keeping every class in train."""
    try:
        keep, held = stratified_split(labels, fraction, seed)
    except ValueError as error:
        raise DataError(
            f"Cannot hold out a stratified {fraction} of {train_dir} as {what} ({error}); "
            f"add images to the smallest classes or provide {train_dir.parent / what}."
        ) from error
    if len(np.unique(labels[keep])) < len(np.unique(labels)):
        raise DataError(
            f"Holding out {fraction} of {train_dir} as {what} leaves a class without "
            f"training images; lower the fraction or provide {train_dir.parent / what}."
        )
    return keep, held


def load_folder(config: ConfigDict) -> Dataset:
    """The image folder named by `config.name = "folder:PATH"`.

    Args:
      config: the `data` section; reads `name`, `data_dir`, `image_size`, `val_fraction`,
        `test_fraction` and `split_seed`.

    Returns:
      A `Dataset` of RGB images `[S, S, 3]` with `train`, `val` and `test` splits (no `val`
      without a val/ folder when `val_fraction` is 0).
    """
    root = resolve_path(config.name[len("folder:") :], config.data_dir)
    if not root.is_dir():
        raise DataError(f"Image folder {root} does not exist; check data.name=folder:PATH.")
    train_dir = root / "train"
    if not train_dir.is_dir():
        raise DataError(
            f"Image folder {root} has no train/ folder; arrange images as "
            f"{root}/train/<class>/*.png (val/ and test/ are optional)."
        )
    classes = [folder.name for folder in _subfolders(train_dir)]
    paths, labels = _scan(train_dir, classes)
    paths = np.asarray(paths, dtype=object)
    splits = {}
    for what, fraction in (("test", config.test_fraction), ("val", config.val_fraction)):
        split_dir = root / what
        if split_dir.is_dir():
            splits[what] = _scan(split_dir, classes)
        elif what == "val" and not fraction:
            continue
        else:
            keep, held = _hold_out(
                labels, fraction, config.split_seed, what=what, train_dir=train_dir
            )
            splits[what] = (list(paths[held]), labels[held])
            paths, labels = paths[keep], labels[keep]
    splits["train"] = (list(paths), labels)

    if config.image_size:
        side = config.image_size
    else:
        first = splits["train"][0][0]
        _, height, width = _header(first)
        if height != width:
            raise DataError(
                f"data.image_size=0 takes the side of the first training image, but {first} is "
                f"{height}×{width}, not square; set a square side, e.g. "
                f"--config.data.image_size={max(height, width)}."
            )
        side = height
    everything = [path for name in ("train", "val", "test") for path in splits[name][0]]
    converted, resized = survey(everything, side, side)
    if converted or resized:
        modes = ", ".join(f"{count} {mode}" for mode, count in sorted(converted.items()))
        log.info(
            "%s: of %d images, %d are converted to RGB%s and %d resized to %d×%d.",
            config.name,
            len(everything),
            sum(converted.values()),
            f" ({modes})" if modes else "",
            resized,
            side,
            side,
        )
    height = width = side
    return Dataset(
        name=config.name,
        num_classes=len(classes),
        class_names=tuple(classes),
        image_shape=(height, width, 3),
        splits={
            name: FolderSplit(*splits[name], height, width)
            for name in ("train", "val", "test")
            if name in splits
        },
    )
