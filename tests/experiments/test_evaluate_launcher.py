"""The evaluate launcher on tiny finished runs: a ProtoPNet on shapes (masks: localisation;
similarity maps: spatial misalignment; pushed prototypes), a black box beside it, and the
several-run table."""

import json

import numpy as np
import pytest

from protojax import config as config_lib
from protojax import runs


def _tiny(name, overrides):
    config = config_lib.load_config(name)
    config_lib.apply_overrides(
        config,
        [
            ("data.image_size", 32),
            ("data.batch_size", 32),
            ("data.eval_batch_size", 32),
            ("data.augment.hflip", False),
            ("data.shapes.num_train", 64),
            ("data.shapes.num_val", 8),
            ("data.shapes.num_test", 16),
            ("model.backbone", "small_cnn"),
            ("train.progress", False),
            *overrides,
        ],
    )
    return config


@pytest.fixture(scope="module")
def shapes_runs(tmp_path_factory):
    """(protopnet workdir, blackbox workdir), each a few steps on 64 shapes images."""
    root = tmp_path_factory.mktemp("evaluate")
    blackbox = _tiny("blackbox_shapes", [("train.epochs", 1)])
    runs.train(blackbox, root / "blackbox")
    protopnet = _tiny(
        "protopnet_shapes",
        [
            ("model.backbone_weights", ""),
            ("model.prototypes_per_class", 2),
            ("model.prototype_dim", 8),
            ("model.push_batch_size", 32),
            ("model.warm_epochs", 1),
            ("model.push_start", 0),
            ("model.push_every", 1),
            ("model.last_layer_epochs", 1),
            ("model.save_prototype_images", False),
            ("train.epochs", 1),
        ],
    )
    runs.train(protopnet, root / "protopnet")
    return root / "protopnet", root / "blackbox"


@pytest.mark.slow
def test_one_run_writes_every_predicate(shapes_runs):
    from experiments import evaluate

    protopnet, blackbox = shapes_runs
    record = evaluate.evaluate_run(
        protopnet, blackbox_workdir=str(blackbox), explainers="saliency", num_images=4,
        batch_size=64,
    )  # fmt: skip
    out = protopnet / "evaluation"
    saved = json.loads((out / "evaluation.json").read_text())
    assert {"transparency", "trustworthiness", "diversity", "localisation"} <= set(saved)
    trust = saved["trustworthiness"]
    assert trust["gap_to_blackbox"] == pytest.approx(
        trust["blackbox_top1_accuracy"] - trust["top1_accuracy"]
    )
    summary = json.loads((protopnet / "summary.json").read_text())
    assert trust["top1_accuracy"] == pytest.approx(summary["test_accuracy"])
    # Every explainer and the method's own map are judged by every faithfulness metric.
    assert set(trust["deletion_auc"]) == {"saliency", "own"}
    assert set(saved["localisation"]) == {"saliency", "own"}
    assert set(saved["localisation"]["own"]) >= {"pointing_game", "maxboxacc@0.5"}
    t = saved["transparency"]
    assert t["prototypes"] == 12 and len(t["usage_counts"]) == 12
    assert sum(t["usage_counts"]) == 16  # every test image has one nearest prototype
    assert t["push_source_purity"] == 1.0  # ProtoPNet pushes within the class
    s = trust["spatial_misalignment"]
    assert 0.0 <= s["accuracy_after"] <= 1.0 and s["PAC"] is not None
    assert trust["ad_ai"]["pairs"] == 4 * 2  # each image with its class's 2 prototypes
    assert len(trust["prototype_removal"]["drop_per_prototype"]) == 12
    assert list(trust["randomisation_spearman"]["saliency"])[0] == "last_layer"
    assert np.isfinite(saved["diversity"]["entropy"])
    text = (out / "evaluation.md").read_text()
    for heading in ("## Transparency", "## Trustworthiness", "## Diversity", "## Localisation"):
        assert heading in text
    assert "`metrics.misalignment.spatial_misalignment`" in text
    for name in ("deletion_insertion.png", "prototype_usage.png", "diversity.png"):
        assert (out / name).stat().st_size > 0
    assert record["run"]["split"] == "test"


def test_several_runs_table_is_mean_and_std_per_config():
    from experiments import evaluate

    run = {"workdir": "a", "method": "protovae", "dataset": "digits", "config": "protovae_digits",
           "config_hash": "h1", "seed": 0, "code_hash": "c0ffee", "split": "test"}  # fmt: skip
    record = {"run": run, "trustworthiness": {"top1_accuracy": 0.9, "deletion_auc": {"own": 0.2}},
              "diversity": {"entropy": 0.01, "log_volume": [1.0, 3.0]}}  # fmt: skip
    other = json.loads(json.dumps(record))
    other["run"].update(seed=1, workdir="b")
    other["trustworthiness"]["top1_accuracy"] = 0.8
    box = {"run": {**run, "config": "blackbox_digits", "config_hash": "x"},
           "trustworthiness": {"top1_accuracy": 0.5}}  # fmt: skip
    markdown, payload = evaluate.several_runs([record, other, box])
    cell = payload["table"]["protovae_digits (h1)"]
    assert cell["trustworthiness/top1_accuracy"]["mean"] == pytest.approx(0.85)
    assert cell["trustworthiness/top1_accuracy"]["std"] == pytest.approx(0.1 / np.sqrt(2))
    assert cell["trustworthiness/top1_accuracy"]["n"] == 2
    assert cell["trustworthiness/deletion_auc/own"]["mean"] == pytest.approx(0.2)
    assert cell["diversity/log_volume (mean over entries)"]["mean"] == pytest.approx(2.0)
    assert payload["table"]["blackbox_digits (x)"]["trustworthiness/top1_accuracy"]["n"] == 1
    assert "| protovae_digits | h1 | c0ffee | test | 0, 1 | a, b |" in markdown
    assert "0.85 ± 0.071 (n=2)" in markdown


def test_usage_errors_are_one_sentence(python, tmp_path):
    result = python("-m", "experiments.evaluate", f"--workdir={tmp_path}", "--workdirs=a,b")
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: Pass either --workdir=DIR (one run) or --workdirs=D1,D2,... --out=DIR."
    )
