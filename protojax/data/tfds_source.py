"""TFDS datasets: `tfds:NAME` read through `tfds.data_source` (ArrayRecord, no TensorFlow).

Splits use TFDS slicing syntax: `data.train_split`, `data.val_split`, `data.test_split`
(for example `train[:90%]`). An empty `data.val_split` holds out a stratified
`data.val_fraction` of the training split as validation (seeded by `data.split_seed`), which
reads every training label once. A prepared dataset with only a `train` split (such as
`quickdraw_bitmap`) read with the default `train`/`test` names is sliced instead: its last
`data.test_fraction` becomes the test split (TFDS shuffles examples when it prepares them).

Images are resized bilinearly (antialiased, aspect ratio not kept) to `data.image_size`; 0
keeps the dataset's size, which must then be fixed. Labels come from the `label` feature. Where
the dataset has them (caltech_birds2011), `segmentation_mask` becomes `mask [H, W] bool`
(resized bilinearly, then above one half) and `bbox` (normalised ymin, xmin, ymax, xmax)
becomes `box [4] int32` in pixels (y0, x0, y1, x1; ends exclusive, rounded outwards).

A dataset that is not prepared is prepared first, as ArrayRecord, by `prepare_tfds` (what
`python -m experiments.prepare_data --dataset=NAME --data_dir=DIR` runs) when `data.download`
is on and the run has one process. Where that cannot work (offline, no TensorFlow, files that
must be downloaded by hand, several processes) or `data.download` is off, it stops with a
`DataError` naming the dataset, the data_dir searched, why, and that command.
"""

from __future__ import annotations

import difflib
import importlib.util
import logging
import socket
import threading
import urllib.parse
import urllib.request

import numpy as np

from protojax.config import ConfigDict
from protojax.data.base import Dataset, Split, stratified_split
from protojax.data.folder import resize_image
from protojax.errors import DataError, UsageError


def prepare_command(name: str, data_dir: str) -> str:
    """The shell command that prepares TFDS dataset `name` in `data_dir`."""
    return f"python -m experiments.prepare_data --dataset={name} --data_dir={data_dir}"


def resolve_split_specs(config: ConfigDict, available: dict[str, int]) -> tuple[str, str, str]:
    """The (train, val, test) TFDS split specs to read.

    Args:
      config: the `data` section.
      available: example count of each split of a prepared dataset; empty when unknown.

    Returns:
      The specs; val is empty when it is to be held out of train.
    """
    train, val, test = config.train_split, config.val_split, config.test_split
    if not train or not test:
        raise UsageError(
            "data.train_split and data.test_split must name TFDS splits, such as 'train' "
            "or 'train[90%:]'."
        )
    if set(available) == {"train"} and (train, test) == ("train", "test"):
        cut = int(round(available["train"] * (1 - config.test_fraction)))
        train, test = f"train[:{cut}]", f"train[{cut}:]"
    return train, val, test


class _Source:
    """A TFDS data source and its labels, read once on first use."""

    def __init__(self, source, label_source):
        self.source = source
        self._label_source = label_source
        self._labels = None
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.source)

    def read(self, rows: list[int]) -> list[dict]:
        # Record by record: `__getitems__` of the sources that tfds.testing.mock_data returns
        # is broken (the mock does not bind `self`), and local reads gain little from batching.
        return [self.source[row] for row in rows]

    @property
    def labels(self) -> np.ndarray:
        with self._lock:
            if self._labels is None:
                self._labels = self._read_labels()
            return self._labels

    def _read_labels(self) -> np.ndarray:
        source = self._label_source
        if len(self):
            try:
                source[0]
            except Exception:
                # Under tfds.testing.mock_data, honouring `decoders` means encoding the fake
                # images, which needs TensorFlow (cf. tensorflow/datasets#11058): fall back to
                # fully decoded examples.
                source = self.source
        return np.fromiter(
            (int(source[row]["label"]) for row in range(len(self))), np.int32, count=len(self)
        )


class TfdsSplit(Split):
    """Rows `positions` of a TFDS data source (all rows when None), decoded on access.

    Args:
      source: the data source with its labels.
      positions: `[N]` rows of the source that form this split, or None for all of them.
      height, width, channels: the shape images are served in.
      fields: extra fields to serve: a subset of {"mask", "box"}.
      crop_to_box: crop each image (and mask) to its `bbox` before resizing, as ProtoPNet's
        CUB preprocessing does; the served box then covers the whole image.
    """

    def __init__(
        self,
        source: _Source,
        positions: np.ndarray | None,
        *,
        height: int,
        width: int,
        channels: int,
        fields: frozenset[str],
        crop_to_box: bool = False,
    ):
        self.source = source
        self.positions = positions
        self.height, self.width, self.channels = height, width, channels
        self.fields = fields
        self.crop_to_box = crop_to_box

    def __len__(self) -> int:
        return len(self.source) if self.positions is None else len(self.positions)

    @property
    def labels(self) -> np.ndarray:
        labels = self.source.labels
        return labels if self.positions is None else labels[self.positions]

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        rows = indices if self.positions is None else self.positions[indices]
        examples = self.source.read([int(row) for row in rows])
        if self.crop_to_box:
            examples = [_crop_example(example) for example in examples]
        images = np.empty((len(examples), self.height, self.width, self.channels), np.uint8)
        for row, example in enumerate(examples):
            images[row] = resize_image(example["image"], self.height, self.width)
        batch = {
            "image": images.astype(np.float32) / 255.0,
            "label": np.asarray([int(ex["label"]) for ex in examples], np.int32),
            "index": indices.astype(np.int32),
        }
        if "mask" in self.fields:
            masks = np.empty((len(examples), self.height, self.width), bool)
            for row, example in enumerate(examples):
                resized = resize_image(example["segmentation_mask"], self.height, self.width)
                masks[row] = resized[..., 0] > 127
            batch["mask"] = masks
        if "box" in self.fields:
            boxes = np.asarray([ex["bbox"] for ex in examples], np.float64).reshape(-1, 4)
            scale = np.array([self.height, self.width, self.height, self.width], np.float64)
            corners = np.concatenate(
                [np.floor(boxes[:, :2] * scale[:2]), np.ceil(boxes[:, 2:] * scale[2:])], axis=1
            )
            batch["box"] = np.clip(corners, 0, scale).astype(np.int32)
        return batch


def _crop_example(example: dict) -> dict:
    """The example cropped to its normalised `bbox` (y0, x0, y1, x1), outward to whole pixels."""
    height, width = example["image"].shape[:2]
    y0, x0, y1, x1 = np.asarray(example["bbox"], np.float64).reshape(4)
    top, left = int(np.floor(y0 * height)), int(np.floor(x0 * width))
    bottom = max(int(np.ceil(y1 * height)), top + 1)
    right = max(int(np.ceil(x1 * width)), left + 1)
    cropped = dict(example)
    cropped["image"] = example["image"][top:bottom, left:right]
    if "segmentation_mask" in example:
        cropped["segmentation_mask"] = example["segmentation_mask"][top:bottom, left:right]
    cropped["bbox"] = np.array([0.0, 0.0, 1.0, 1.0], np.float32)
    return cropped


def find_builder(name: str, data_dir: str | None, **builder_kwargs):
    """`tfds.builder(name, data_dir=...)`; an unknown name is a UsageError with suggestions."""
    import tensorflow_datasets as tfds

    try:
        return tfds.builder(name, data_dir=data_dir, **builder_kwargs)
    except tfds.core.registered.DatasetNotFoundError as error:
        close = difflib.get_close_matches(
            name, tfds.list_builders(with_community_datasets=False), n=3
        )
        hint = f"did you mean {', '.join(close)}?" if close else "see tfds.list_builders()."
        raise UsageError(f"Unknown TFDS dataset '{name}'; {hint}") from error


class PrepareError(DataError):
    """TFDS could not prepare a dataset; `reason` says why, and how to fix it, in a few words."""

    def __init__(self, name: str, root: str, reason: str):
        self.reason = reason
        super().__init__(f"Could not prepare TFDS dataset '{name}' in {root}: {reason}.")


def _has_tensorflow() -> bool:
    """Whether TensorFlow is installed, found without importing it (which takes seconds)."""
    return importlib.util.find_spec("tensorflow") is not None


_DEFAULT_PORTS = {"https": 443, "http": 80, "ftp": 21}
_CONNECT_TIMEOUT_S = 5.0


def _unreachable_host(urls) -> str | None:
    """'HOST (why)' for the first download host, or the proxy for it, that takes no TCP
    connection within `_CONNECT_TIMEOUT_S`; None when every one does."""
    proxies = urllib.request.getproxies()
    seen = set()
    for url in urls:
        parts = urllib.parse.urlsplit(url)
        if (
            parts.hostname
            and parts.scheme in proxies
            and not urllib.request.proxy_bypass(parts.hostname)
        ):
            parts = urllib.parse.urlsplit(proxies[parts.scheme])
        target = (parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme, 443))
        if not target[0] or target in seen:
            continue
        seen.add(target)
        try:
            socket.create_connection(target, timeout=_CONNECT_TIMEOUT_S).close()
        except OSError as error:
            return f"{target[0]} ({error})"
    return None


def _obstacle(builder, manual_dir: str) -> str | None:
    """Why preparing `builder` would fail, found before anything is downloaded; None if none.

    TFDS retries an unreachable URL 10 times with exponential back-off, about 200 s per file
    (measured offline with tensorflow-datasets 4.9.10), and DownloadConfig sets neither retries
    nor timeouts. So the two usual failures are looked for first: TensorFlow, which TFDS needs
    to encode `Image` features while preparing (only after downloading them); and a TCP
    connection to each host of the dataset's registered URLs (or to its proxy), which fails
    at once, or after `_CONNECT_TIMEOUT_S`, offline. Datasets without registered URLs skip
    that check.
    """
    import tensorflow_datasets as tfds

    if builder.MANUAL_DOWNLOAD_INSTRUCTIONS and not manual_dir:
        return "its files must first be downloaded by hand into a folder given as --manual_dir"
    features = builder.info.features
    if not _has_tensorflow() and any(
        isinstance(feature, tfds.features.Image) for feature in features.values()
    ):
        return "TFDS needs TensorFlow to encode its images; install it with pip install -e '.[tf]'"
    if not manual_dir:
        unreachable = _unreachable_host(sorted(builder.url_infos or ()))
        if unreachable:
            return f"cannot reach {unreachable}; check the network connection"
    return None


def prepare_tfds(name: str, data_dir: str | None = None, manual_dir: str = "") -> str:
    """Downloads and prepares TFDS dataset `name` as ArrayRecord files.

    Args:
      name: the TFDS name, such as `cifar10`.
      data_dir: the TFDS data directory; None or empty: TFDS's default.
      manual_dir: a folder of files downloaded by hand, for datasets that need them.

    Returns:
      The directory written.

    Raises:
      UsageError: an unknown dataset name.
      PrepareError: it cannot be prepared here; nothing is downloaded when that is known first.
    """
    import tensorflow_datasets as tfds

    builder = find_builder(name, data_dir or None, file_format="array_record")
    root = str(builder.data_dir_root)
    reason = _obstacle(builder, manual_dir)
    if reason:
        raise PrepareError(name, root, reason)
    logging.info("Downloading TFDS dataset %s and preparing it as ArrayRecord in %s.", name, root)
    # TFDS's GCS copies are TFRecord, which is never what is asked for here; skip looking.
    download_config = tfds.download.DownloadConfig(
        manual_dir=manual_dir or None, try_download_gcs=False
    )
    try:
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    except ModuleNotFoundError as error:
        if "tensorflow" not in str(error):
            raise
        raise PrepareError(
            name, root, "TFDS needs TensorFlow for it; install it with pip install -e '.[tf]'"
        ) from error
    except Exception as error:
        first = str(error).strip().splitlines()[0].rstrip(".") if str(error).strip() else ""
        raise PrepareError(
            name, root, f"{first or repr(error)}; check the network connection and --manual_dir"
        ) from error
    return str(builder.data_dir)


class _NotPrepared(Exception):
    """A split of a dataset that is not prepared could not be opened."""


def _prepare_to_read(name: str, data_dir: str | None, root: str) -> None:
    """Prepares an unprepared dataset before it is read, or says why it cannot be."""
    import jax

    command = prepare_command(name, root)
    if jax.process_count() > 1:
        # Several processes would write the same files at once; waiting for one of them would
        # need a barrier the data layer does not have.
        raise DataError(
            f"TFDS dataset '{name}' is not prepared in data_dir {root}, and a run of "
            f"{jax.process_count()} processes does not prepare it; prepare it once, where "
            f"every process can read it, with: {command}"
        )
    try:
        prepare_tfds(name, data_dir)
    except PrepareError as error:
        raise DataError(
            f"TFDS dataset '{name}' is not prepared in data_dir {root} and could not be "
            f"prepared here ({error.reason}); prepare it with: {command}"
        ) from error


def load_tfds(config: ConfigDict) -> Dataset:
    """The TFDS dataset named by `config.name = "tfds:NAME"`.

    Args:
      config: the `data` section; reads `name`, `data_dir` (empty: TFDS's default),
        `download`, `image_size`, `train_split`, `val_split`, `test_split`, `val_fraction`,
        `test_fraction`, `split_seed` and `crop_to_box`.

    Returns:
      A `Dataset` with `train`, `val` and `test` splits of `[H, W, C]` images (no `val` when
      `val_split` is empty and `val_fraction` is 0: the whole training split trains).
    """
    name = config.name[len("tfds:") :]
    data_dir = config.data_dir or None
    builder = find_builder(name, data_dir)
    root = str(builder.data_dir_root)
    # Preparation follows a failed read rather than `is_prepared()`: the sources of
    # tfds.testing.mock_data need no files, although their builders are never prepared.
    try:
        return _read(config, builder, name, data_dir)
    except _NotPrepared as not_prepared:
        if not config.download:
            raise DataError(
                f"TFDS dataset '{name}' is not prepared in data_dir {root}; prepare it "
                f"with: {prepare_command(name, root)}"
            ) from not_prepared.__cause__
    _prepare_to_read(name, data_dir, root)
    return _read(config, find_builder(name, data_dir), name, data_dir)


def _read(config: ConfigDict, builder, name: str, data_dir: str | None) -> Dataset:
    """The splits of `builder`'s dataset; `_NotPrepared` when it is not prepared."""
    import tensorflow_datasets as tfds

    root = str(builder.data_dir_root)
    prepared = builder.is_prepared()
    available = (
        {split: info.num_examples for split, info in builder.info.splits.items()}
        if prepared
        else {}
    )
    train_spec, val_spec, test_spec = resolve_split_specs(config, available)
    features = builder.info.features
    for key in ("image", "label"):
        if key not in features:
            raise DataError(f"TFDS dataset '{name}' has no '{key}' feature; it cannot be used.")
    image_decoders = {
        key: tfds.decode.SkipDecoding()
        for key, feature in features.items()
        if isinstance(feature, tfds.features.Image)
    }

    def open_split(spec: str) -> _Source:
        try:
            source = tfds.data_source(name, split=spec, data_dir=data_dir, download=False)
            labels_only = tfds.data_source(
                name, split=spec, data_dir=data_dir, download=False, decoders=image_decoders
            )
        except Exception as error:
            if not prepared:
                raise _NotPrepared() from error
            reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
            raise DataError(
                f"Cannot read split '{spec}' of TFDS dataset '{name}' in {root} ({reason}; "
                f"splits: {', '.join(available)}); fix data.*_split, or if it holds TFRecord "
                f"files, delete {builder.data_dir} and run: {prepare_command(name, root)}"
            ) from error
        return _Source(source, labels_only)

    height, width, channels = features["image"].shape
    if config.image_size:
        height = width = config.image_size
    elif height is None or width is None:
        raise UsageError(f"TFDS dataset '{name}' has images of varying size; set data.image_size.")
    fields = frozenset(
        field for field, key in (("mask", "segmentation_mask"), ("box", "bbox")) if key in features
    )
    if config.crop_to_box and "box" not in fields:
        raise UsageError(
            f"data.crop_to_box needs a 'bbox' feature, which TFDS dataset '{name}' lacks; "
            "set data.crop_to_box=False."
        )
    split_args = dict(
        height=height,
        width=width,
        channels=channels,
        fields=fields,
        crop_to_box=config.crop_to_box,
    )

    train = open_split(train_spec)
    if val_spec:
        splits = {
            "train": TfdsSplit(train, None, **split_args),
            "val": TfdsSplit(open_split(val_spec), None, **split_args),
        }
    else:
        try:
            keep, held = stratified_split(train.labels, config.val_fraction, config.split_seed)
        except ValueError as error:
            raise DataError(
                f"Cannot hold out a stratified {config.val_fraction} of '{train_spec}' of TFDS "
                f"dataset '{name}' as validation ({error}); set data.val_split instead."
            ) from error
        splits = {"train": TfdsSplit(train, keep, **split_args)}
        if config.val_fraction:
            splits["val"] = TfdsSplit(train, held, **split_args)
    splits["test"] = TfdsSplit(open_split(test_spec), None, **split_args)
    label = features["label"]
    return Dataset(
        name=config.name,
        num_classes=label.num_classes,
        class_names=tuple(label.names),
        image_shape=(height, width, channels),
        splits=splits,
    )
