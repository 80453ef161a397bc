"""Data sources and the input pipeline.

`load_dataset(config.data)` picks a source by `config.data.name`:
`digits`, `shapes`, `tfds:NAME`, `folder:PATH` or `quickdraw:PATH`. grain and
tensorflow_datasets are imported lazily, only by the functions that need them.
"""

from __future__ import annotations

from protojax.config import ConfigDict
from protojax.data.base import ArraySplit, Dataset, Split, stratified_split
from protojax.errors import UsageError

SOURCES = ("digits", "shapes", "tfds:NAME", "folder:PATH", "quickdraw:PATH")


def default_config() -> ConfigDict:
    """The `config.data` section shared by every experiment."""
    return ConfigDict(
        {
            "name": "digits",
            # Root for tfds (default ~/tensorflow_datasets), folder and quickdraw sources.
            "data_dir": "",
            # tfds: prepare a dataset that is not prepared yet (needs network and TensorFlow,
            # one process); off: stop and give the prepare_data command instead.
            "download": True,
            # Square side served to the model; 0: the source's default (digits 28, shapes 64,
            # quickdraw 28, tfds the dataset's own, folder the first training image's).
            "image_size": 0,
            # The global batch: it never depends on the device count.
            "batch_size": 64,
            "eval_batch_size": 256,
            # none: [0, 1]; symmetric: [-1, 1]; imagenet, cifar10: (x - mean) / std per channel.
            "normalization": "none",
            # TFDS slicing syntax. An empty val_split takes a stratified val_fraction of train.
            "train_split": "train",
            "val_split": "",
            "test_split": "test",
            "val_fraction": 0.1,
            # Held out of train as test where a source has none (folder without test/, a
            # TFDS dataset with only a train split).
            "test_fraction": 0.2,
            "split_seed": 0,
            # Host threads that assemble batches.
            "num_workers": 2,
            # tfds: sources with a bbox (caltech_birds2011, cars196): crop to it, then resize.
            "crop_to_box": False,
            "augment": {
                "crop_padding": 0,  # random crop after zero padding by this many pixels
                "hflip": False,
                "rotation_degrees": 0.0,  # uniform in [-r, r]
                "color_jitter": 0.0,  # brightness/contrast/saturation strength
            },
            "shapes": {
                "num_train": 5000,
                "num_val": 500,
                "num_test": 1000,
                "shortcut": False,
                "seed": 0,
                "num_classes": 6,  # the first K of disc, square, triangle, cross, star, ring
                "num_distractors": 6,  # most distractors per image; at least half are drawn
            },
            # Rows of each <category>_small.npy: the first train_per_class are train, the
            # next test_per_class are test (ProtoVAE's 8,000 / 2,000).
            "quickdraw": {
                "train_per_class": 8000,
                "test_per_class": 2000,
            },
        }
    )


def load_dataset(config: ConfigDict) -> Dataset:
    """Builds the dataset named by `config.name` (see `SOURCES`)."""
    name = config.name
    if name == "digits":
        from protojax.data.digits import load_digits

        return load_digits(config.image_size, config.val_fraction, config.split_seed)
    if name == "shapes":
        from protojax.data.shapes import load_shapes

        return load_shapes(config)
    if name.startswith("tfds:"):
        from protojax.data.tfds_source import load_tfds

        return load_tfds(config)
    if name.startswith("folder:"):
        from protojax.data.folder import load_folder

        return load_folder(config)
    if name.startswith("quickdraw:"):
        from protojax.data.quickdraw import load_quickdraw

        return load_quickdraw(config)
    raise UsageError(f"Unknown data source '{name}' in data.name; use one of {', '.join(SOURCES)}.")


__all__ = [
    "ArraySplit",
    "Dataset",
    "SOURCES",
    "Split",
    "default_config",
    "load_dataset",
    "stratified_split",
]
