"""TFDS through `tfds.data_source` under `tfds.testing.mock_data`, slicing, and preparation.

`mock_data`'s default sources ignore split slicing, so the slicing tests pass their own
`as_data_source_fn`, which applies TFDS's own `ReadInstruction` to a known list of examples.
"""

import socket
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from protojax.data import default_config, load_dataset, tfds_source
from protojax.data.tfds_source import (
    PrepareError,
    prepare_command,
    prepare_tfds,
    resolve_split_specs,
)
from protojax.errors import DataError, UsageError

ROOT = Path(__file__).resolve().parents[2]

# name: (image shape served at image_size 0, classes, image_size to ask for)
DATASETS = {
    "cifar10": ((32, 32, 3), 10, 0),
    "mnist": ((28, 28, 1), 10, 0),
    "fashion_mnist": ((28, 28, 1), 10, 0),
    "svhn_cropped": ((32, 32, 3), 10, 0),
    "caltech_birds2011": ((24, 24, 3), 200, 24),
}


def tfds_config(name, **overrides):
    config = default_config()
    config.name = f"tfds:{name}"
    config.update(overrides)
    return config


def mocked(num_examples=100, **kwargs):
    return tfds.testing.mock_data(
        num_examples=num_examples, policy=tfds.testing.MockPolicy.USE_CODE, **kwargs
    )


def pil_resize(array, size, resample=Image.BILINEAR):
    squeeze = array.shape[-1] == 1
    image = Image.fromarray(array[..., 0] if squeeze else array)
    out = np.asarray(image.resize((size, size), resample))
    return out[..., None] if squeeze else out


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_mocked_dataset(name):
    shape, classes, image_size = DATASETS[name]
    # caltech_birds2011 has 200 classes: too many for a stratified val of 100 mock examples.
    val_split = "test" if name == "caltech_birds2011" else ""
    config = tfds_config(name, image_size=image_size, val_split=val_split, val_fraction=0.2)
    with mocked():
        dataset = load_dataset(config)
        raw = tfds.data_source(name, split="train")
        assert dataset.image_shape == shape
        assert dataset.num_classes == classes and len(dataset.class_names) == classes
        train = dataset.split("train")
        batch = train.get_batch(np.arange(6))
        rows = np.arange(6) if train.positions is None else train.positions[:6]
        examples = [raw[int(r)] for r in rows]
    assert batch["image"].shape == (6, *shape) and batch["image"].dtype == np.float32
    assert batch["label"].dtype == np.int32 and batch["index"].dtype == np.int32
    np.testing.assert_array_equal(batch["label"], [ex["label"] for ex in examples])
    np.testing.assert_array_equal(batch["label"], train.labels[:6])
    for image, ex in zip(batch["image"], examples):
        expected = ex["image"] if not image_size else pil_resize(ex["image"], image_size)
        np.testing.assert_allclose(image, expected / 255.0, atol=1e-7)
    assert len(dataset.split("test")) == 100
    if name == "caltech_birds2011":
        assert set(batch) == {"image", "label", "index", "mask", "box"}
        for mask, box, ex in zip(batch["mask"], batch["box"], examples):
            np.testing.assert_array_equal(
                mask, pil_resize(ex["segmentation_mask"], 24)[..., 0] > 127
            )
            y0, x0, y1, x1 = ex["bbox"].astype(np.float64) * 24
            expected = np.clip([np.floor(y0), np.floor(x0), np.ceil(y1), np.ceil(x1)], 0, 24)
            np.testing.assert_array_equal(box, expected)
    else:
        assert set(batch) == {"image", "label", "index"}
        # val is a stratified fifth of train; together they are the whole train split.
        val = dataset.split("val")
        assert sorted(np.concatenate([train.positions, val.positions])) == list(range(100))
        all_labels = np.concatenate([train.labels, val.labels])
        expected_val = 0.2 * np.bincount(all_labels, minlength=classes)
        assert np.all(np.abs(np.bincount(val.labels, minlength=classes) - expected_val) <= 1)


def test_varying_image_size_needs_image_size():
    with mocked(), pytest.raises(UsageError, match="image_size"):
        load_dataset(tfds_config("caltech_birds2011", image_size=0, val_split="test"))


SIZES = {"train": 50, "test": 20}


def fake_as_data_source(self, split, decoders=None, deserialize_method=None, **kwargs):
    """The examples a prepared dataset would return for `split`: train row i shows i, test
    row i shows 100 + i; the label is i % 5."""
    infos = {k: types.SimpleNamespace(num_examples=v) for k, v in SIZES.items()}
    examples = []
    for part in tfds.core.ReadInstruction.from_spec(split).to_absolute(infos):
        for i in range(*slice(part.from_, part.to).indices(SIZES[part.splitname])):
            value = i + (100 if part.splitname == "test" else 0)
            examples.append({"image": np.full((32, 32, 3), value, np.uint8), "label": i % 5})
    return examples


def shown(batch):
    return np.round(batch["image"][:, 0, 0, 0] * 255).astype(int).tolist()


def test_slicing_syntax_reaches_tfds():
    config = tfds_config(
        "cifar10",
        image_size=0,
        train_split="train[:30]",
        val_split="train[30:40]",
        test_split="test[50%:]+train[-2:]",
    )
    with mocked(as_data_source_fn=fake_as_data_source):
        dataset = load_dataset(config)
        got = {n: shown(s.get_batch(np.arange(len(s)))) for n, s in dataset.splits.items()}
    assert got["train"] == list(range(30))
    assert got["val"] == list(range(30, 40))
    assert got["test"] == list(range(110, 120)) + [48, 49]
    np.testing.assert_array_equal(dataset.split("val").labels, np.arange(30, 40) % 5)


def test_empty_val_split_holds_out_a_stratified_fraction_of_train():
    config = tfds_config("cifar10", image_size=16, val_fraction=0.2, split_seed=3)
    with mocked(as_data_source_fn=fake_as_data_source):
        dataset = load_dataset(config)
        train, val = dataset.split("train"), dataset.split("val")
        val_shown = shown(val.get_batch(np.arange(len(val))))
        assert dataset.image_shape == (16, 16, 3)
    assert len(train) == 40 and len(val) == 10
    assert sorted(val_shown + train.positions.tolist()) == list(range(50))
    np.testing.assert_array_equal(np.bincount(val.labels), [2] * 5)
    np.testing.assert_array_equal(val.labels, np.array(val_shown) % 5)
    with mocked(as_data_source_fn=fake_as_data_source):
        other = load_dataset(tfds_config("cifar10", val_fraction=0.2, split_seed=4))
    assert other.split("val").positions.tolist() != val.positions.tolist()
    with mocked(as_data_source_fn=fake_as_data_source):
        whole = load_dataset(tfds_config("cifar10", val_fraction=0.0))
    assert set(whole.splits) == {"train", "test"}
    assert whole.split("train").positions.tolist() == list(range(50))


def test_split_specs_for_train_only_datasets():
    config = tfds_config("quickdraw_bitmap", test_fraction=0.2)
    assert resolve_split_specs(config, {"train": 1000}) == ("train[:800]", "", "train[800:]")
    assert resolve_split_specs(config, {}) == ("train", "", "test")
    assert resolve_split_specs(config, {"train": 10, "test": 5}) == ("train", "", "test")
    config.test_split = "train[95%:]"
    assert resolve_split_specs(config, {"train": 1000}) == ("train", "", "train[95%:]")
    config.test_split = ""
    with pytest.raises(UsageError, match="test_split"):
        resolve_split_specs(config, {"train": 1000})


class ProtojaxTinyTrainOnly(tfds.core.GeneratorBasedBuilder):
    """30 examples, only a train split: example i shows i and has label i % 3. Its features
    are plain tensors, so preparing it needs no TensorFlow."""

    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
        features = tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=(6, 6, 3), dtype=np.uint8),
                "label": tfds.features.ClassLabel(num_classes=3),
            }
        )
        return tfds.core.DatasetInfo(builder=self, features=features)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples()}

    def _generate_examples(self):
        for i in range(30):
            yield i, {"image": np.full((6, 6, 3), i, np.uint8), "label": i % 3}


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    builder = ProtojaxTinyTrainOnly(data_dir=str(data_dir), file_format="array_record")
    builder.download_and_prepare(file_format="array_record")
    return str(data_dir)


def test_prepared_train_only_dataset_is_sliced_for_test(tiny_dir):
    config = tfds_config(
        "protojax_tiny_train_only", data_dir=tiny_dir, image_size=0, val_fraction=0.2
    )
    dataset = load_dataset(config)
    got = {n: shown(s.get_batch(np.arange(len(s)))) for n, s in dataset.splits.items()}
    assert {n: len(v) for n, v in got.items()} == {"train": 19, "val": 5, "test": 6}
    assert sorted(sum(got.values(), [])) == list(range(30))
    for name, split in dataset.splits.items():
        np.testing.assert_array_equal(split.labels, np.array(got[name]) % 3)
    config.update(dict(train_split="train[:20]", val_split="train[20:25]", test_split="train[25:]"))
    sliced = load_dataset(config)
    got = {n: shown(s.get_batch(np.arange(len(s)))) for n, s in sliced.splits.items()}
    assert {n: len(v) for n, v in got.items()} == {"train": 20, "val": 5, "test": 5}
    assert sorted(sum(got.values(), [])) == list(range(30))
    config.test_split = "validation"
    with pytest.raises(DataError, match="'validation'.*splits: train"):
        load_dataset(config)


def test_not_prepared_names_dataset_dir_and_command(tmp_path):
    with pytest.raises(DataError) as info:
        load_dataset(tfds_config("mnist", data_dir=str(tmp_path), download=False))
    message = str(info.value)
    assert "'mnist' is not prepared" in message and str(tmp_path) in message
    command = f"python -m experiments.prepare_data --dataset=mnist --data_dir={tmp_path}"
    assert message.endswith(command) and command == prepare_command("mnist", str(tmp_path))
    assert list(tmp_path.iterdir()) == []  # nothing written, nothing downloaded


def test_download_prepares_an_unprepared_dataset_in_process(tmp_path):
    assert default_config().download
    config = tfds_config("protojax_tiny_train_only", data_dir=str(tmp_path), image_size=0)
    dataset = load_dataset(config)
    got = {n: shown(s.get_batch(np.arange(len(s)))) for n, s in dataset.splits.items()}
    assert {n: len(v) for n, v in got.items()} == {"train": 21, "val": 3, "test": 6}
    assert sorted(sum(got.values(), [])) == list(range(30))
    for name, split in dataset.splits.items():
        np.testing.assert_array_equal(split.labels, np.array(got[name]) % 3)
    written = list(tmp_path.glob("protojax_tiny_train_only/1.0.0/*.array_record*"))
    assert written, sorted(str(p) for p in tmp_path.rglob("*"))


def forbid_download(monkeypatch):
    def download_and_prepare(self, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", download_and_prepare)


def load_fails_fast(config, data_dir):
    start = time.perf_counter()
    with pytest.raises(DataError) as info:
        load_dataset(config)
    assert time.perf_counter() - start < 10
    assert list(data_dir.iterdir()) == []  # nothing written
    message = str(info.value)
    name = config.name[len("tfds:") :]
    assert f"'{name}' is not prepared in data_dir {data_dir}" in message
    assert message.endswith(prepare_command(name, str(data_dir)))
    return message


def test_download_without_tensorflow_fails_before_downloading(tmp_path, monkeypatch):
    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: False)
    forbid_download(monkeypatch)
    message = load_fails_fast(tfds_config("cifar10", data_dir=str(tmp_path)), tmp_path)
    assert "needs TensorFlow" in message and "pip install -e '.[tf]'" in message


def test_download_offline_fails_before_downloading(tmp_path, monkeypatch):
    """TFDS itself would retry for minutes; the connection check fails at once."""
    tried = []

    def unreachable(address, timeout=None):
        tried.append((address, timeout))
        raise socket.gaierror(-2, "Name or service not known")

    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: True)
    monkeypatch.setattr(socket, "create_connection", unreachable)
    for key in ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY"):
        monkeypatch.delenv(key, raising=False)
    forbid_download(monkeypatch)
    message = load_fails_fast(tfds_config("cifar10", data_dir=str(tmp_path)), tmp_path)
    assert "cannot reach www.cs.toronto.edu" in message and "network" in message
    assert tried == [(("www.cs.toronto.edu", 443), 5.0)]


def test_several_processes_do_not_prepare(tmp_path, monkeypatch):
    import jax

    monkeypatch.setattr(jax, "process_count", lambda: 2)
    forbid_download(monkeypatch)
    config = tfds_config("protojax_tiny_train_only", data_dir=str(tmp_path))
    message = load_fails_fast(config, tmp_path)
    assert "2 processes" in message


def test_unknown_dataset_is_a_usage_error():
    with pytest.raises(UsageError, match="'mnistt'.*mnist"):
        load_dataset(tfds_config("mnistt"))


def test_prepare_uses_array_record(tmp_path, monkeypatch):
    calls = []

    def fake_download_and_prepare(self, **kwargs):
        config = kwargs["download_config"]
        calls.append((self.name, kwargs["file_format"], str(self.data_dir_root)))
        calls.append((config.manual_dir, config.try_download_gcs))

    monkeypatch.setattr(tfds_source, "_has_tensorflow", lambda: True)
    monkeypatch.setattr(tfds_source, "_unreachable_host", lambda urls: None)
    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", fake_download_and_prepare)
    written = prepare_tfds("mnist", str(tmp_path))
    assert calls == [("mnist", "array_record", str(tmp_path)), (None, False)]
    assert written.startswith(str(tmp_path / "mnist"))

    def needs_tensorflow(self, **kwargs):
        raise ModuleNotFoundError("No module named 'tensorflow'", name="tensorflow")

    monkeypatch.setattr(tfds.core.DatasetBuilder, "download_and_prepare", needs_tensorflow)
    with pytest.raises(PrepareError, match=r"'mnist' in .*pip install -e '\.\[tf\]'\.$"):
        prepare_tfds("mnist", str(tmp_path))


def test_prepare_asks_for_manual_dir(tmp_path, monkeypatch):
    forbid_download(monkeypatch)
    with pytest.raises(PrepareError, match="downloaded by hand.*--manual_dir"):
        prepare_tfds("imagenet2012", str(tmp_path))


def test_launcher_exit_code_and_last_line(tmp_path):
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "experiments.prepare_data",
            "--dataset=mnistt",
            f"--data_dir={tmp_path}",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "Unknown TFDS dataset 'mnistt'" in result.stderr.strip().splitlines()[-1]


def test_shapes_and_augmentation_need_neither_grain_tfds_sklearn_nor_ml_collections():
    """As on accelerator images: the sources import their heavy dependencies lazily."""
    code = """
import sys
for name in ("ml_collections", "grain", "tensorflow_datasets", "sklearn", "tensorflow"):
    sys.modules[name] = None
import numpy as np
import protojax.data.folder, protojax.data.quickdraw, protojax.data.tfds_source
from protojax.data import default_config, load_dataset
from protojax.data.augment import augment_batch
config = default_config()
config.name, config.shapes.num_train = "shapes", 8
batch = load_dataset(config).split("train").get_batch(np.arange(8))
config.augment.hflip = True
out = augment_batch(batch["image"], batch["index"], seed=0, epoch=0, config=config.augment)
print(out.shape)
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.split()[-4:] == ["(8,", "64,", "64,", "3)"]  # shapes' default size


def test_crop_to_box_crops_cub_images_to_their_bird():
    """ProtoPNet's CUB preprocessing: crop to the box (outward to whole pixels), then resize."""
    config = tfds_config("caltech_birds2011", image_size=24, val_split="test", crop_to_box=True)
    with mocked(num_examples=8):
        dataset = load_dataset(config)
        raw = tfds.data_source("caltech_birds2011", split="train")
        batch = dataset.split("train").get_batch(np.arange(4))
        examples = [raw[i] for i in range(4)]
    for image, box, ex in zip(batch["image"], batch["box"], examples):
        h, w = ex["image"].shape[:2]
        y0, x0, y1, x1 = (float(v) for v in ex["bbox"])
        top, left = int(np.floor(y0 * h)), int(np.floor(x0 * w))
        bottom, right = max(int(np.ceil(y1 * h)), top + 1), max(int(np.ceil(x1 * w)), left + 1)
        crop = ex["image"][top:bottom, left:right]
        np.testing.assert_allclose(image, pil_resize(crop, 24) / 255.0, atol=1e-7)
        np.testing.assert_array_equal(box, [0, 0, 24, 24])


def test_crop_to_box_needs_a_bbox_feature():
    with mocked(num_examples=8), pytest.raises(UsageError, match="crop_to_box needs a 'bbox'"):
        load_dataset(tfds_config("mnist", crop_to_box=True, val_split="test"))
