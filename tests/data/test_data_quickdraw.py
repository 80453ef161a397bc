"""QuickDraw `<category>_small.npy` files: the ProtoVAE row split, memory maps and errors."""

import numpy as np
import pytest

from protojax.data import default_config, load_dataset
from protojax.data.quickdraw import CATEGORIES
from protojax.errors import DataError

TRAIN, TEST = 8, 3


def write_files(root, rows=TRAIN + TEST + 1):
    """Row r of class k holds k·20 + r in pixel 0 and noise elsewhere; odd classes are 28×28."""
    root.mkdir(exist_ok=True)
    rng = np.random.default_rng(0)
    for k, category in enumerate(CATEGORIES):
        pixels = rng.integers(0, 256, (rows, 784), dtype=np.uint8)
        pixels[:, 0] = k * 20 + np.arange(rows)
        np.save(root / f"{category}_small.npy", pixels.reshape(rows, 28, 28) if k % 2 else pixels)
    return root


def quickdraw_config(root, **overrides):
    config = default_config()
    config.name = f"quickdraw:{root}"
    config.quickdraw.train_per_class, config.quickdraw.test_per_class = TRAIN, TEST
    config.update(overrides)
    return config


def decode(batch):
    """(class, row) of each example, from pixel 0."""
    code = np.round(batch["image"][:, 0, 0, 0] * 255).astype(int)
    return code // 20, code % 20


def test_rows_split_as_protovae(tmp_path):
    root = write_files(tmp_path / "qd")
    dataset = load_dataset(quickdraw_config(root, val_fraction=0.25))
    assert dataset.class_names == CATEGORIES and dataset.image_shape == (28, 28, 1)
    seen = {}
    for name in ("train", "val", "test"):
        split = dataset.split(name)
        batch = split.get_batch(np.arange(len(split)))
        assert batch["image"].shape == (len(split), 28, 28, 1)
        assert batch["image"].dtype == np.float32
        classes, rows = decode(batch)
        np.testing.assert_array_equal(classes, batch["label"])
        np.testing.assert_array_equal(batch["label"], split.labels)
        seen[name] = set(zip(classes.tolist(), rows.tolist()))
    expected_train = {(k, r) for k in range(10) for r in range(TRAIN)}
    assert seen["train"] | seen["val"] == expected_train
    assert not seen["train"] & seen["val"]
    assert seen["test"] == {(k, r) for k in range(10) for r in range(TRAIN, TRAIN + TEST)}
    np.testing.assert_array_equal(np.bincount(dataset.split("val").labels), [2] * 10)
    # The full image matches the file row, whichever layout the file uses.
    batch = dataset.split("test").get_batch(np.arange(len(dataset.split("test"))))
    for k in (0, 1):
        reference = np.load(root / f"{CATEGORIES[k]}_small.npy").reshape(-1, 28, 28)
        i = int(np.flatnonzero(batch["label"] == k)[0])
        np.testing.assert_allclose(batch["image"][i, ..., 0], reference[TRAIN] / 255.0)


def test_files_are_memory_mapped_and_resized(tmp_path):
    root = write_files(tmp_path / "qd")
    dataset = load_dataset(quickdraw_config(root, image_size=32, val_fraction=0.25))
    split = dataset.split("train")
    assert all(isinstance(array, np.memmap) for array in split.arrays)
    assert split.arrays is dataset.split("test").arrays  # opened once, shared
    batch = split.get_batch(np.arange(4))
    assert batch["image"].shape == (4, 32, 32, 1)
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_errors_name_the_files(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "none")):
        load_dataset(quickdraw_config(tmp_path / "none"))
    root = write_files(tmp_path / "qd")
    (root / "cow_small.npy").unlink()
    (root / "lion_small.npy").unlink()
    with pytest.raises(DataError, match="cow_small.npy, lion_small.npy"):
        load_dataset(quickdraw_config(root))
    root = write_files(tmp_path / "short", rows=TRAIN + TEST - 1)
    with pytest.raises(DataError, match=f"{root / 'ant_small.npy'} has 10 rows"):
        load_dataset(quickdraw_config(root))
    with pytest.raises(DataError, match="val_fraction"):
        load_dataset(quickdraw_config(write_files(tmp_path / "few"), val_fraction=0.05))
    root = write_files(tmp_path / "lfs")
    (root / "dog_small.npy").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(DataError, match=str(root / "dog_small.npy")):
        load_dataset(quickdraw_config(root))
