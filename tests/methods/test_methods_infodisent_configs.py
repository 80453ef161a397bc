"""The 224-px InfoDisent configs (CUB, Cars, Dogs) run end to end under TFDS mock data at
32 px from a random backbone, and stop without their ImageNet weights unless allowed to."""

import jax
import pytest
import tensorflow_datasets as tfds

from protojax.config import load_config, set_value
from protojax.runs import train as train_run
from protojax.train import make_data_mesh

BATCH = 16


@pytest.mark.parametrize(
    "name, classes, backbone",
    [
        # About a minute even with the small CNN in place of ResNet-50 (TFDS, 200 classes,
        # the explanation figure), so every one is in the slow suite.
        pytest.param("infodisent_cub", 200, "small_cnn", marks=pytest.mark.slow),
        pytest.param("infodisent_cub", 200, "", marks=pytest.mark.slow),
        pytest.param("infodisent_cars", 196, "", marks=pytest.mark.slow),
        pytest.param("infodisent_dogs", 120, "", marks=pytest.mark.slow),
    ],
)
def test_big_config_runs_under_mock_data(tmp_path, name, classes, backbone):
    config = load_config(name)
    for key, value in {
        "data.image_size": 32,
        "data.batch_size": BATCH,
        "data.eval_batch_size": BATCH,
        "model.allow_random_init": True,
        "model.figure_images": 1 if not backbone else 0,
        "model.explain_patches": 2,
        "train.epochs": 1,
        "train.progress": False,
    }.items():
        set_value(config, key, value)
    if backbone:
        set_value(config, "model.backbone", backbone)
    with tfds.testing.mock_data(num_examples=BATCH, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]))
    assert summary["feature_cache"] and summary["head_steps"] == 1
    assert summary["blackbox_test_accuracy"] is None
    assert summary["source"].startswith("pretrained weights")
    assert 0.0 <= summary["test_accuracy"] <= 1.0
    assert summary["head_weight_min"] >= 0.0
    assert (tmp_path / "checkpoints").is_dir()
