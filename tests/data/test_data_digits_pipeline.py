"""The digits source and the input pipeline: splits, resizing, the deterministic training
stream and ordered passes."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import Mesh

from protojax.data import pipeline
from protojax.data.base import ArraySplit
from protojax.data.digits import load_digits, resize_bilinear
from protojax.errors import UsageError


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=28)


def test_digits_splits_are_the_standard_stratified_ones(digits):
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    sizes = {name: len(split) for name, split in digits.splits.items()}
    assert sizes == {"train": 1293, "val": 144, "test": 360}
    x, y = sk_digits(return_X_y=True)
    _, _, _, y_test = train_test_split(x, y, test_size=0.2, stratify=y, random_state=0)
    np.testing.assert_array_equal(digits.split("test").labels, y_test)
    for split in digits.splits.values():
        counts = np.bincount(split.labels, minlength=10)
        assert counts.min() >= 0.8 * counts.mean()
    batch = digits.split("train").get_batch(np.arange(5))
    assert batch["image"].shape == (5, 28, 28, 1) and batch["image"].dtype == np.float32
    assert 0.0 <= batch["image"].min() and batch["image"].max() <= 1.0


def test_bilinear_resize_matches_jax_image_resize():
    images = np.random.default_rng(0).uniform(size=(3, 8, 8, 2)).astype(np.float32)
    ours = resize_bilinear(images, 28)
    reference = jax.image.resize(images, (3, 28, 28, 2), "bilinear", antialias=False)
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def _split(n=50):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (n, 4, 4, 3), dtype=np.uint8)
    return ArraySplit(images, np.arange(n) % 5)


def test_training_stream_is_a_pure_function_of_seed_and_step():
    split = _split()
    full = list(pipeline.train_batches(split, seed=3, batch_size=8, start_step=0, end_step=12))
    tail = list(pipeline.train_batches(split, seed=3, batch_size=8, start_step=7, end_step=12))
    for a, b in zip(full[7:], tail, strict=True):
        for key in a:
            np.testing.assert_array_equal(a[key], b[key])
    # 50 // 8 = 6 steps per epoch; epoch e visits permutation(fold_in(key(3), e)).
    for step, batch in enumerate(full):
        epoch, position = divmod(step, 6)
        order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(3), epoch), 50))
        np.testing.assert_array_equal(batch["index"], order[position * 8 : (position + 1) * 8])
        expected = split.images[batch["index"]].astype(np.float32) / np.float32(255.0)
        np.testing.assert_array_equal(batch["image"], expected)
    epoch0 = np.concatenate([b["index"] for b in full[:6]])
    assert len(set(epoch0)) == 48


def test_collect_returns_the_valid_rows_in_order():
    split = _split(21)
    rows = pipeline.collect(
        split,
        lambda batch: {"twice": 2 * batch["index"], "label": batch["label"]},
        batch_size=8,
        indices=np.array([20, 3, 7]),
    )
    np.testing.assert_array_equal(rows["twice"], [40, 6, 14])
    np.testing.assert_array_equal(rows["label"], split.labels[[20, 3, 7]])
    whole = pipeline.collect(split, lambda batch: batch["index"], batch_size=8)
    np.testing.assert_array_equal(whole, np.arange(21))


def test_ordered_pass_covers_every_example_once_with_padding():
    split = _split(21)
    batches = list(pipeline.ordered_batches(split, batch_size=8, normalization="symmetric"))
    assert [b["image"].shape[0] for b in batches] == [8, 8, 8]
    valid = np.concatenate([b["valid"] for b in batches])
    index = np.concatenate([b["index"] for b in batches])[valid]
    np.testing.assert_array_equal(index, np.arange(21))
    assert valid.sum() == 21 and not valid[21:].any()
    np.testing.assert_allclose(
        batches[0]["image"], (split.images[:8] / 255.0 - 0.5) / 0.5, atol=1e-6
    )


def test_normalize_round_trip():
    images = np.random.default_rng(0).uniform(size=(2, 3, 3, 3)).astype(np.float32)
    mean = np.array([0.485, 0.456, 0.406], np.float32)
    std = np.array([0.229, 0.224, 0.225], np.float32)
    np.testing.assert_allclose(
        pipeline.normalize(images, "imagenet"), (images - mean) / std, rtol=1e-6
    )
    for mode in ("none", "symmetric", "imagenet"):
        back = pipeline.denormalize(pipeline.normalize(images, mode), mode)
        np.testing.assert_allclose(back, images, atol=1e-6)


def test_to_global_shards_along_data(digits):
    from protojax.train import make_data_mesh

    mesh = make_data_mesh(jax.devices()[:4])
    local = next(pipeline.ordered_batches(digits.split("val"), batch_size=8))
    batch = pipeline.to_global(local, mesh)
    assert batch["image"].sharding.spec == jax.sharding.PartitionSpec("data")
    assert len(batch["image"].addressable_shards) == 4
    np.testing.assert_array_equal(jnp.asarray(batch["label"]), local["label"])


def permuted_mesh(order=(2, 0, 3, 1)):
    devices = jax.devices()[:4]
    return Mesh(np.array([devices[i] for i in order]), ("data",)), devices


def test_device_rows_follow_the_mesh_order_not_the_process_index():
    mesh, devices = permuted_mesh()
    # A process owning devices 0 and 1, at mesh positions 1 and 3: rows 2-3 and 6-7 of 8.
    np.testing.assert_array_equal(pipeline.device_rows(8, mesh, devices[:2]), [2, 3, 6, 7])
    positions = list(mesh.devices.flat)
    for owned in ([devices[2]], devices[2:], [devices[3], devices[0]], devices):
        expected = []
        for position, device in enumerate(positions):  # a naive walk over the mesh
            if device in owned:
                expected += range(3 * position, 3 * position + 3)
        np.testing.assert_array_equal(pipeline.device_rows(12, mesh, owned), expected)
    np.testing.assert_array_equal(pipeline.local_rows(12, mesh), np.arange(12))
    with pytest.raises(UsageError, match="10 does not divide by the 4 devices"):
        pipeline.device_rows(10, mesh, devices)


def test_to_global_places_each_row_on_the_device_at_its_mesh_position():
    mesh, _ = permuted_mesh()
    split = _split(16)
    local = next(pipeline.ordered_batches(split, batch_size=8, mesh=mesh))
    batch = pipeline.to_global(local, mesh)
    positions = list(mesh.devices.flat)
    assert len(batch["index"].addressable_shards) == 4
    for shard in batch["index"].addressable_shards:
        position = positions.index(shard.device)
        np.testing.assert_array_equal(np.asarray(shard.data), [2 * position, 2 * position + 1])


def test_pipeline_outpaces_the_blackbox_digits_train_step():
    """The input pipeline alone delivers more images/s than the train step consumes.

    Both rates are measured back to back in this process (medians of a few steps), so the
    comparison holds on any machine; recorded figures are in benchmarks/.
    """
    from experiments.benchmark import benchmark, pipeline_throughput
    from protojax.config import load_config, set_value

    config = load_config("blackbox_digits")
    set_value(config, "data.batch_size", 64)
    feed = pipeline_throughput(config, steps=10)["pipeline_images_per_sec"]
    step = benchmark(config, steps=3, warmup=1)["train_images_per_sec"]
    assert feed > step, (feed, step)


def test_val_fraction_zero_trains_on_the_whole_training_split():
    dataset = load_digits(image_size=8, val_fraction=0)
    assert {name: len(split) for name, split in dataset.splits.items()} == {
        "train": 1437,
        "test": 360,
    }


def test_kept_last_batch_is_padded_with_invalid_rows():
    split = _split(21)
    assert pipeline.steps_per_epoch(split, 8) == 2
    assert pipeline.steps_per_epoch(split, 8, drop_last=False) == 3
    args = dict(seed=3, batch_size=8, start_step=0, end_step=6, drop_last=False)
    batches = list(pipeline.train_batches(split, **args))
    assert [b["image"].shape[0] for b in batches] == [8] * 6
    for epoch in (0, 1):
        order = np.asarray(jax.random.permutation(jax.random.fold_in(jax.random.key(3), epoch), 21))
        three = batches[3 * epoch : 3 * epoch + 3]
        valid = np.concatenate([b["valid"] for b in three])
        np.testing.assert_array_equal(valid, np.arange(24) < 21)
        index = np.concatenate([b["index"] for b in three])
        np.testing.assert_array_equal(index[:21], order)
        # The padding repeats the last batch's first example.
        np.testing.assert_array_equal(index[21:], [order[16]] * 3)
    # The full batches are those of the default stream.
    dropped = list(pipeline.train_batches(split, **{**args, "drop_last": True, "end_step": 2}))
    np.testing.assert_array_equal(dropped[1]["index"], batches[1]["index"])
