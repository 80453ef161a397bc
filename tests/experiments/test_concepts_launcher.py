"""The concept-maps launcher on a briefly trained black box: one figure with a column per k,
and label maps with at most k concepts per image."""

import jax
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.runs import train as train_run
from protojax.train import make_data_mesh


@pytest.mark.slow  # a training run and a launcher subprocess: 92 s on 2 cores at load 18
def test_concepts_launcher_writes_a_column_per_k(python, tmp_path):
    config = load_config("blackbox_digits")
    for key, value in [
        ("data.image_size", 8),
        ("train.epochs", 1),
        ("train.stop_after_steps", 2),
        ("train.progress", False),
    ]:
        set_value(config, key, value)
    run = tmp_path / "run"
    train_run(config, run, make_data_mesh(jax.devices()[:1]), dataset=load_digits(image_size=8))
    result = python(
        "-m",
        "experiments.concepts",
        f"--workdir={run}",
        "--layers=stage1,stage2",
        "--k=3,2",
        "--num_images=3",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    out = run / "concepts"
    assert (out / "concepts.png").stat().st_size > 0
    saved = np.load(out / "concepts.npz")
    np.testing.assert_array_equal(saved["indices"], [0, 1, 2])
    for k in (2, 3):
        labels = saved[f"labels_k{k}"]
        assert labels.shape == (3, 8, 8)
        assert all(len(np.unique(image)) <= k for image in labels)
