"""Data sources and the input pipeline.

`load_dataset(config.data)` picks a source by `config.data.name`:
`digits`, `shapes`, `tfds:NAME`, `folder:PATH` or `quickdraw:PATH`. grain and
tensorflow_datasets are imported lazily, only by the functions that need them.
"""

from __future__ import annotations

from protojax import config as config_lib
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
            # Drop each epoch's last partial training batch; off: keep it, padded to the full
            # batch with rows whose `valid` is false (as the official ProtoVAE code keeps it).
            "drop_last": True,
            "eval_batch_size": 256,
            # none: [0, 1]; symmetric: [-1, 1]; imagenet, cifar10: (x - mean) / std per channel.
            "normalization": "none",
            # TFDS slicing syntax. An empty val_split takes a stratified val_fraction of train.
            "train_split": "train",
            "val_split": "",
            "test_split": "test",
            # 0: no `val` split; the whole training split trains (nothing is selected on val
            # in any case: the final parameters are the ones reported).
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
                # ProtoPNet's official offline Augmentor copies, online: per example a third
                # rotated ±15° (zoomed to fill), a third skewed (0.2), a third sheared ±10°.
                "augmentor_mix": False,
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


# The ranges of `config.data` (see `protojax.config.validate`), checked before a run starts.
CONFIG_RULES = (
    config_lib.at_least("data.image_size", 0),
    config_lib.at_least("data.batch_size", 1),
    config_lib.at_least("data.eval_batch_size", 1),
    config_lib.one_of("data.normalization", ("none", "symmetric", "imagenet", "cifar10")),
    config_lib.Rule(
        "data.val_fraction",
        lambda value: 0 <= value < 1,
        "a number from 0 (no validation split) up to, not including, 1",
    ),
    config_lib.between("data.test_fraction", 0, 1),
    config_lib.at_least("data.num_workers", 0),
    config_lib.at_least("data.augment.crop_padding", 0),
    config_lib.at_least("data.augment.rotation_degrees", 0, "a number"),
    config_lib.at_least("data.augment.color_jitter", 0, "a number"),
    config_lib.at_least("data.shapes.num_train", 1),
    config_lib.at_least("data.shapes.num_val", 1),
    config_lib.at_least("data.shapes.num_test", 1),
    config_lib.Rule(
        "data.shapes.num_classes", lambda value: 1 <= value <= 6, "an integer from 1 to 6"
    ),
    config_lib.at_least("data.shapes.num_distractors", 0),
    config_lib.at_least("data.quickdraw.train_per_class", 1),
    config_lib.at_least("data.quickdraw.test_per_class", 1),
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
    "CONFIG_RULES",
    "ArraySplit",
    "Dataset",
    "SOURCES",
    "Split",
    "default_config",
    "load_dataset",
    "stratified_split",
]
