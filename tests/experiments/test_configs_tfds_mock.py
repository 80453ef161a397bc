"""TFDS configs run end to end under `tfds.testing.mock_data`, and stop with the
dataset message offline."""

import jax
import pytest
import tensorflow_datasets as tfds

from protojax.config import load_config, set_value
from protojax.errors import DataError
from protojax.runs import train as train_run
from protojax.train import make_data_mesh


def shrink(config, **extra):
    """One training step on 64 mock examples: val takes a stratified 20%, 51 remain."""
    for key, value in {
        "train.epochs": 1,
        "train.progress": False,
        "data.batch_size": 32,
        "data.eval_batch_size": 32,
        "data.val_fraction": 0.2,
        **extra,
    }.items():
        set_value(config, key, value)
    return config


def test_blackbox_cifar_runs_under_mock_data(tmp_path):
    config = shrink(load_config("blackbox_cifar"), **{"data.image_size": 16})
    with tfds.testing.mock_data(num_examples=64, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]))
    assert summary["steps"] == 1
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert (tmp_path / "summary.json").exists()


def test_blackbox_cifar_offline_names_the_dataset_and_the_command(tmp_path):
    config = load_config("blackbox_cifar")
    set_value(config, "data.data_dir", str(tmp_path / "tfds"))
    with pytest.raises(DataError) as info:
        train_run(config, tmp_path / "run")
    message = str(info.value)
    assert "cifar10" in message and str(tmp_path / "tfds") in message
    assert "python -m experiments.prepare_data --dataset=cifar10" in message
