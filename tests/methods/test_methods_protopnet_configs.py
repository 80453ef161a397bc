"""The 224-px ProtoPNet configs (CUB, Cars) run one step per phase under TFDS mock data at
32 px, and stop without their ImageNet weights unless allowed to start from scratch."""

import json

import jax
import pytest
import tensorflow_datasets as tfds

from protojax.config import load_config, set_value
from protojax.runs import train as train_run
from protojax.train import make_data_mesh

BATCH = 16


def one_step_per_phase(name):
    config = load_config(name)
    for key, value in {
        "data.image_size": 32,  # ResNet-34: a 1×1 latent grid
        "data.batch_size": BATCH,
        "data.eval_batch_size": BATCH,
        "model.push_batch_size": BATCH,
        "model.allow_random_init": True,
        "model.passes_per_epoch": 1,
        "model.warm_epochs": 1,
        "model.push_start": 1,
        "model.push_every": 1,
        "model.last_layer_epochs": 1,
        "train.epochs": 2,  # warm, joint, push, last
        "train.progress": False,
    }.items():
        set_value(config, key, value)
    return config


@pytest.mark.parametrize(
    "name, classes, backbone",
    [
        # The default suite swaps the backbone for the small CNN: compiling ResNet training
        # steps for every phase takes minutes on CI's CPUs. The configs as they are, ResNet-34
        # included, run in the slow suite.
        ("protopnet_cub", 200, "small_cnn"),
        pytest.param("protopnet_cub", 200, "", marks=pytest.mark.slow),
        pytest.param("protopnet_cars", 196, "", marks=pytest.mark.slow),
    ],
)
def test_big_config_runs_every_phase_under_mock_data(tmp_path, name, classes, backbone):
    config = one_step_per_phase(name)
    if backbone:  # prototype images are checked on digits; here they would cost compiles
        set_value(config, "model.backbone", backbone)
        set_value(config, "model.save_prototype_images", False)
    # The mock's 16 images cover at most 16 classes: the other classes' prototypes find no
    # image of their class at push and keep their vectors.
    with tfds.testing.mock_data(num_examples=BATCH, policy=tfds.testing.MockPolicy.USE_CODE):
        summary = train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]))
    assert summary["steps"] == 3  # warm, joint, last: one step each
    phases = [
        r["phase"]
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if r["kind"] == "epoch"
    ]
    assert phases == ["warm", "joint", "last"]
    assert 0.0 <= summary["test_accuracy_after_push"] <= 1.0
    assert summary["active_prototypes"] == classes * 10
    if not backbone:
        index = tmp_path / "figures" / "prototypes" / "push_01" / "index.json"
        entries = json.loads(index.read_text())["prototypes"]
        assert 0 < len(entries) <= BATCH * 10
        assert all(e["source_label"] == e["class"] for e in entries)
        # Every ResNet-34 location at 32 px (a 1×1 grid) sees the whole image.
        assert all(e["receptive_field_box"] == [0, 0, 32, 32] for e in entries)


@pytest.mark.parametrize("name", ["protopnet_cub", "protopnet_cars"])
def test_fine_grained_configs_default_to_the_official_augmentor_mix(name):
    augment = load_config(name).data.augment
    assert augment.augmentor_mix and augment.hflip
    assert augment.rotation_degrees == 0.0 and augment.crop_padding == 0
