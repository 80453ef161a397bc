"""The shortcut study's pieces: its configs, the resume rule, the explanations' marker and
object shares on a model that reads only the marker, and the report table."""

import functools
import json
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from experiments import shortcut_study as study
from protojax.config import ConfigDict
from protojax.data import default_config, load_dataset
from protojax.data.shapes import marker_masks
from protojax.methods.common import class_logit
from protojax.train import loop


@pytest.mark.parametrize("arm", study.ARMS)
def test_configs_differ_only_in_the_marker(arm, tmp_path):
    configs = {m: study.study_config(m, arm, tmp_path) for m in study.MODELS}
    for config in configs.values():
        loop.validate_config(config)
        assert config.data.name == "shapes" and config.data.image_size == 32
        assert config.data.shapes.shortcut == (arm == "shortcut")
        assert not config.data.augment.hflip  # a flip moves class k's marker to K−1−k's
        assert config.data.shapes.to_dict() == configs["blackbox"].data.shapes.to_dict()
    assert configs["protopnet"].model.backbone_weights == str(tmp_path / arm / "blackbox")
    assert configs["protovae"].model.arch == "cifar10"


def test_both_arms_explain_the_same_test_images():
    # The control arm's data has no test_marked split: the study reads the shortcut arm's,
    # whose test images must be the control's.
    data = {
        arm: load_dataset(study.study_config("blackbox", arm, pathlib.Path("/x"), smoke=True).data)
        for arm in study.ARMS
    }
    assert "test_marked" not in data["control"].splits
    clean = data["control"].split("test").get_batch(np.arange(4))
    marked = data["shortcut"].split("test_marked").get_batch(np.arange(4))
    outside = ~marked["marker_mask"]
    np.testing.assert_array_equal(marked["image"][outside], clean["image"][outside])
    assert np.all(marked["image"][marked["marker_mask"]] == 1.0)


def test_a_finished_run_is_not_trained_again(tmp_path, monkeypatch):
    from protojax import runs

    (tmp_path / "summary.json").write_text(json.dumps({"test_accuracy": 0.5}))
    monkeypatch.setattr(runs, "train", lambda *a, **k: pytest.fail("trained again"))
    assert study.train_or_resume(ConfigDict({}), tmp_path) == {"test_accuracy": 0.5}


class MarkerReader:
    """A linear model whose logit k sums the pixels of class k's marker: it reads nothing
    else, so every faithful explanation puts its relevance on the marker."""

    def __init__(self, size: int, num_classes: int):
        self.net = nn.Dense(num_classes, use_bias=False)
        markers = marker_masks(size, num_classes).astype(np.float32)  # [K, S, S]
        kernel = np.repeat(markers[..., None], 3, axis=-1).reshape(num_classes, -1).T
        self.variables = {"params": {"kernel": jnp.asarray(kernel)}}

    def predict(self, variables, images):
        return self.net.apply(variables, images.reshape(images.shape[0], -1))

    embed = predict

    def targets(self, variables):
        return {
            "class_logit": study._bound(functools.partial(class_logit, self.predict), variables)
        }


def test_explanations_of_a_marker_reader_land_on_the_marker():
    config = default_config()
    config.name, config.image_size = "shapes", 24
    config.shapes.update(shortcut=True, num_train=1, num_val=1, num_test=4)
    dataset = load_dataset(config)
    batch = dataset.split("test_marked").get_batch(np.arange(4))
    model = MarkerReader(24, dataset.num_classes)
    classes = study.predicted_classes(model, model.variables, batch["image"], batch_size=4)
    np.testing.assert_array_equal(classes, batch["label"])  # the marker gives the class
    maps = study.explanation_maps(
        "blackbox",
        model,
        model.variables,
        study.study_config("blackbox", "shortcut", pathlib.Path("/x")),
        batch["image"],
        classes,
        rng=jax.random.key(0),
    )
    assert set(maps) == set(study.EXPLAINERS) - {"gradcam", "prp", "own"}
    shares = study.relevance_shares(maps, batch)
    # Gradients and LRP are exactly zero off the marker of the explained class.
    for name in ("saliency", "smoothgrad", "integrated_gradients", "lrp"):
        assert shares[name]["marker"] == pytest.approx(1.0, abs=1e-6), name
        assert shares[name]["object"] == 0.0, name
    # Occlusion windows and RISE/RELAX masks also cover pixels around the marker.
    area = np.mean(batch["marker_mask"])
    for name in ("occlusion", "rise", "relax"):
        assert shares[name]["marker"] > 10 * area, (name, shares[name])
        assert shares[name]["marker"] > shares[name]["object"], (name, shares[name])


def test_report_table():
    fractions = {"saliency": {"marker": 0.614, "object": 0.1}, "own": {"marker": 0.0, "object": 1}}
    model = {"clean_accuracy": 0.25, "marked_accuracy": 1.0, "fractions": fractions}
    results = {
        "num_images": 2,
        "area": {"marker": 0.0039, "object": 0.05},
        **{arm: {m: model for m in study.MODELS} for arm in study.ARMS},
    }
    lines = study.report_markdown(results).splitlines()
    assert "| shortcut | protopnet | 0.250 | 1.000 |" in lines
    assert "| saliency | 0.61 / 0.10 | 0.61 / 0.10 | 0.61 / 0.10 |" in lines
    assert "| own | 0.00 / 1.00 | 0.00 / 1.00 | 0.00 / 1.00 |" in lines
    assert "| (area share) | 0.004 / 0.05 | 0.004 / 0.05 | 0.004 / 0.05 |" in lines
    assert not any(line.startswith("| rise") for line in lines)  # no model has it
