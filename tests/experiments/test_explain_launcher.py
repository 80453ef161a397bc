"""The explain launcher's usage and workdir errors: exit 2 for usage, 1 for a workdir holding
no readable run, the sentence last, and nothing written. (Its end-to-end run on a trained
ProtoPNet is in tests/methods/test_methods_protopnet_train.py; every explainer on every
method is in tests/explain/test_explain_methods.py.)"""

import json

import pytest

from protojax import config as config_lib


def _workdir(tmp_path, name="protovae_digits"):
    config = config_lib.to_dict(config_lib.load_config(name))
    (tmp_path / "config.json").write_text(json.dumps(config))
    return tmp_path


@pytest.mark.parametrize(
    "flags, code, sentence",
    [
        (
            ["--explainers=saliency,lime"],
            2,
            "Unknown explainer 'lime' in --explainers; use names among saliency, smoothgrad, "
            "integrated_gradients, gradcam, occlusion, rise, relax, lrp, prp.",
        ),
        (
            ["--prp_composite=zplus"],
            2,
            "--prp_composite: Unknown LRP composite 'zplus'; choose one of ['epsilon', "
            "'epsilon_alpha2_beta1', 'epsilon_alpha2_beta1_flat', 'epsilon_plus', "
            "'epsilon_plus_box', 'epsilon_plus_flat', 'prp', 'prp_zplus'].",
        ),
        (
            ["--config=protovae_digits"],
            2,
            "experiments.explain reads the run's config from --workdir; drop --config.",
        ),
        (
            [],
            1,
            "{workdir} has no dataset.json: its run never loaded its data; rerun the training "
            "command on this workdir to start it.",
        ),
    ],
    ids=["unknown_explainer", "unknown_prp_composite", "config_flag", "no_dataset"],
)
def test_errors_end_in_one_sentence_and_write_nothing(python, tmp_path, flags, code, sentence):
    workdir = _workdir(tmp_path)
    result = python("-m", "experiments.explain", f"--workdir={workdir}", *flags)
    assert result.returncode == code, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last == "error: " + sentence.format(workdir=workdir)
    assert "Traceback" not in result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
