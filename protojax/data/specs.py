"""What a dataset looks like — classes and image shape — without loading it.

The benchmark launcher and `load_workdir` need a model's input shape where the data (or
grain, tensorflow_datasets and scikit-learn) may be absent, as on accelerator images.
"""

from __future__ import annotations

import pathlib

from protojax.data.base import Dataset
from protojax.errors import DataError, UsageError

# (height, width, channels, classes) of the TFDS datasets the configs use; 0 = varies.
TFDS_SPECS = {
    "mnist": (28, 28, 1, 10),
    "fashion_mnist": (28, 28, 1, 10),
    "kmnist": (28, 28, 1, 10),
    "cifar10": (32, 32, 3, 10),
    "cifar100": (32, 32, 3, 100),
    "svhn_cropped": (32, 32, 3, 10),
    "quickdraw_bitmap": (28, 28, 1, 345),
    "caltech_birds2011": (0, 0, 3, 200),
    "cars196": (0, 0, 3, 196),
    "stanford_dogs": (0, 0, 3, 120),
    "oxford_iiit_pet": (0, 0, 3, 37),
    "oxford_flowers102": (0, 0, 3, 102),
    "imagenet2012": (0, 0, 3, 1000),
}


def _square(size: int, native: tuple[int, int], name: str) -> tuple[int, int]:
    if size:
        return size, size
    if not all(native):
        raise UsageError(f"{name} images vary in size; set data.image_size.")
    return native


def describe(config) -> Dataset:
    """A `Dataset` with no splits describing what `load_dataset(config)` would serve."""
    name, size = config.name, config.image_size
    if name == "digits":
        from protojax.data.digits import DEFAULT_SIZE

        h, w = _square(size, (DEFAULT_SIZE, DEFAULT_SIZE), name)
        return Dataset("digits", 10, tuple(map(str, range(10))), (h, w, 1), {})
    if name == "shapes":
        from protojax.data.shapes import DEFAULT_SIZE, KINDS

        h, w = _square(size, (DEFAULT_SIZE, DEFAULT_SIZE), name)
        kinds = KINDS[: config.shapes.num_classes]
        return Dataset("shapes", len(kinds), kinds, (h, w, 3), {})
    if name.startswith("tfds:"):
        tfds_name = name[len("tfds:") :].split("/")[0].split(":")[0]
        if tfds_name not in TFDS_SPECS:
            raise UsageError(
                f"No shape is known for {name} without loading it; use one of "
                f"{', '.join(sorted(TFDS_SPECS))} or load the dataset."
            )
        h, w, c, k = TFDS_SPECS[tfds_name]
        h, w = _square(size, (h, w), name)
        return Dataset(name, k, tuple(map(str, range(k))), (h, w, c), {})
    if name.startswith("quickdraw:"):
        from protojax.data.quickdraw import CATEGORIES

        h, w = _square(size, (28, 28), name)
        return Dataset(name, len(CATEGORIES), tuple(CATEGORIES), (h, w, 1), {})
    if name.startswith("folder:"):
        root = pathlib.Path(name[len("folder:") :]) / "train"
        if not root.is_dir():
            raise DataError(f"Image folder {root} does not exist; see the README for the layout.")
        classes = sorted(p.name for p in root.iterdir() if p.is_dir())
        h, w = _square(size, (0, 0), name)
        return Dataset(name, len(classes), tuple(classes), (h, w, 3), {})
    raise UsageError(f"Unknown data source '{name}' in data.name.")
