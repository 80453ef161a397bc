"""A run as a notebook meets it: `load_workdir` hands back a method that takes images in
[0, 1] (the run's normalisation travels with it), and reading a damaged workdir is a sentence."""

import json

import numpy as np
import pytest

import protojax
from protojax import config as config_lib
from protojax import runs
from protojax.errors import UsageError, WorkdirError


def _tiny_protovae():
    """protovae_digits ([-1, 1] inputs) cut to 5 steps of 256, evaluated on 64 val images."""
    config = config_lib.load_config("protovae_digits")
    config_lib.apply_overrides(
        config,
        [
            ("data.batch_size", 256),
            ("data.eval_batch_size", 128),
            ("data.augment.crop_padding", 0),
            ("data.augment.rotation_degrees", 0.0),
            ("model.latent_dim", 8),
            ("model.prototypes_per_class", 1),
            ("train.epochs", 1),
            ("train.progress", False),
        ],
    )
    return config


@pytest.fixture(scope="module")
def protovae_run(tmp_path_factory):
    """A finished tiny protovae_digits run, started after a failed start on its workdir."""
    workdir = tmp_path_factory.mktemp("protovae")
    config = _tiny_protovae()
    bad = config_lib.from_dict(config_lib.to_dict(config))
    with bad.unlocked():
        bad.data.batch_size = 0
    with pytest.raises(UsageError, match=r"'data.batch_size' must be an integer ≥ 1, got 0"):
        runs.train(bad, workdir)
    assert list(workdir.iterdir()) == []  # validated before the disk
    summary = runs.train(config, workdir)
    return workdir, summary


def test_raw_unit_images_reproduce_the_runs_test_accuracy(protovae_run):
    workdir, summary = protovae_run
    # The README's path: load the run, take a split's images as they come, in [0, 1].
    method, variables, config = protojax.load_workdir(workdir)
    assert config.data.normalization == "symmetric"
    test = protojax.data.load_dataset(config.data).split("test")
    batch = test.get_batch(np.arange(len(test)))
    assert batch["image"].min() >= 0.0 and batch["image"].max() <= 1.0
    logits = np.asarray(method.predict(variables, batch["image"]))
    accuracy = float(np.mean(np.argmax(logits, axis=1) == batch["label"]))
    assert accuracy == summary["test_accuracy"]
    # The trained method takes [-1, 1]: the loaded one is exactly it on 2x - 1, and differs
    # from it on the raw images (what a notebook got before).
    images = batch["image"][:8]
    loaded = np.asarray(method.predict(variables, images))
    np.testing.assert_array_equal(
        loaded, np.asarray(method.trained.predict(variables, images * 2.0 - 1.0))
    )
    raw = np.asarray(method.trained.predict(variables, images))
    assert not np.allclose(raw, loaded, atol=1e-3)
    np.testing.assert_array_equal(
        np.asarray(method.embed(variables, images)),
        np.asarray(method.trained.embed(variables, images * 2.0 - 1.0)),
    )
    # Explainers' score functions take [0, 1] images too.
    score = method.targets(variables)["class_logit"]
    labels = batch["label"][:8]
    np.testing.assert_allclose(
        np.asarray(score(images, labels)),
        loaded[np.arange(8), labels],
        rtol=1e-6,
    )


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_damaged_workdirs_are_one_sentence_and_stay_as_they_were(protovae_run, tmp_path):
    workdir, _ = protovae_run
    text = (workdir / "config.json").read_text()
    no_dataset = tmp_path / "no_dataset"
    no_dataset.mkdir()
    (no_dataset / "config.json").write_text(text)
    truncated = tmp_path / "truncated"
    truncated.mkdir()
    (truncated / "config.json").write_text(text[: len(text) // 2])
    (truncated / "dataset.json").write_text((workdir / "dataset.json").read_text())
    cases = {
        no_dataset: f"{no_dataset} has no dataset.json: its run never loaded its data",
        truncated: f"{truncated / 'config.json'} is not valid JSON",
    }
    for directory, sentence in cases.items():
        before = _snapshot(directory)
        with pytest.raises(WorkdirError) as info:
            protojax.load_workdir(directory)
        message = str(info.value)
        assert message.startswith(sentence) and len(message.splitlines()) == 1
        assert info.value.exit_code == 1
        assert _snapshot(directory) == before
    assert json.loads(text)["method"] == "protovae"
