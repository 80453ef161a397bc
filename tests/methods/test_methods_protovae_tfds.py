"""`protovae_cifar` end to end: one epoch under `tfds.testing.mock_data`, and the
launcher's dataset message when CIFAR-10 is not prepared (always the case offline)."""

import json
from pathlib import Path

import jax
import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from protojax.config import load_config, set_value
from protojax.runs import train as train_run
from protojax.train import make_data_mesh
from protojax.train.workdir import read_metrics


def test_protovae_cifar_runs_one_epoch_under_mock_data(tmp_path):
    config = load_config("protovae_cifar")
    # 20 mock examples per split, the mock test split as validation: a batch of 16 and, as
    # the official loader keeps it (data.drop_last=False), a last one of 4 padded to 16.
    for key, value in [
        ("data.val_split", "test"),
        ("data.batch_size", 16),
        ("data.eval_batch_size", 16),
        ("train.epochs", 1),
        ("train.progress", False),
    ]:
        set_value(config, key, value)
    # Non-partitionable threefry compiles the ~30 random initialisers about 5× faster on CPU;
    # only the random values differ, which this wiring test does not look at.
    with (
        jax.threefry_partitionable(False),
        tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE),
    ):
        summary = train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]))
    assert summary["steps"] == 2
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert np.isfinite(summary["prototype_log_volume"])
    assert [k for k in summary if "volume" in k] == ["prototype_log_volume"]
    saved = json.loads((tmp_path / "summary.json").read_text())
    assert saved["prototype_log_volume"] == summary["prototype_log_volume"]
    (train,) = [r for r in read_metrics(tmp_path) if r["kind"] == "train"]
    assert {"cross_entropy", "reconstruction", "kl", "orthonormality"} <= set(train)
    np.testing.assert_allclose(
        train["loss"],
        train["cross_entropy"] + train["reconstruction"] + train["kl"] + train["orthonormality"],
        rtol=1e-5,
    )
    figures = {Path(f).name for f in summary["figures"]}
    assert {"prototypes.png", "reconstructions.png", "latent_pca.png"} <= figures
    with Image.open(tmp_path / "figures" / "prototypes.png") as image:
        assert min(image.size) > 1000  # a 10 × 10 grid of decoded prototypes


def test_unprepared_cifar_stops_with_the_dataset_message(python, tmp_path):
    result = python(
        "-m",
        "experiments.train",
        "--config=protovae_cifar",
        f"--workdir={tmp_path / 'run'}",
        f"--config.data.data_dir={tmp_path / 'data'}",
    )
    assert result.returncode == 1
    last = result.stderr.strip().splitlines()[-1]
    assert "'cifar10' is not prepared" in last
    assert f"--dataset=cifar10 --data_dir={tmp_path / 'data'}" in last
