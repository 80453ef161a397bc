"""examples/custom_method.py trains a user's own method through the engine, and its workdir
reloads in a fresh process with the same test accuracy."""

import json

RELOAD = """
import json, sys
import numpy as np
import protojax
method, variables, config = protojax.load_workdir(sys.argv[1])
assert type(method).__module__ == "custom_method", type(method).__module__
test = protojax.data.load_dataset(config.data).split("test")
batch = test.get_batch(np.arange(len(test)))
predicted = np.argmax(np.asarray(method.predict(variables, batch["image"])), axis=1)
print(json.dumps({"test_accuracy": float(np.mean(predicted == batch["label"]))}))
"""


def test_custom_method_trains_and_reloads_in_a_fresh_process(python, tmp_path):
    workdir = tmp_path / "custom"
    trained = python("examples/custom_method.py", f"--workdir={workdir}", merged=True)
    assert trained.returncode == 0, trained.stdout[-3000:]
    assert "saliency maps (8, 16, 16, 1)" in trained.stdout
    summary = json.loads((workdir / "summary.json").read_text())
    assert summary["test_accuracy"] >= 0.9
    assert json.loads((workdir / "config.json").read_text())["method"] == "custom_method"

    reloaded = python("-c", RELOAD, str(workdir), env={"PYTHONPATH": "examples"})
    assert reloaded.returncode == 0, reloaded.stderr[-3000:]
    accuracy = json.loads(reloaded.stdout.strip().splitlines()[-1])["test_accuracy"]
    assert abs(accuracy - summary["test_accuracy"]) < 1e-9


def test_an_unknown_method_name_is_a_usage_sentence():
    import pytest

    from protojax.errors import UsageError
    from protojax.methods import method_module

    with pytest.raises(UsageError, match="neither one of blackbox.*nor an importable module"):
        method_module("protovea")
