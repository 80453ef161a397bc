"""The launchers' error contract: the sentence is the last line; exit 2 for usage errors,
1 for data and checkpoint errors. And the benchmark launcher's JSON line."""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


def launch(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "XLA_FLAGS": "", **(env or {})},
        timeout=600,
    )


def last_line(result):
    lines = [ln for ln in (result.stdout + result.stderr).splitlines() if ln.strip()]
    return result.stderr.strip().splitlines()[-1] if result.stderr.strip() else lines[-1]


@pytest.mark.parametrize(
    "args, pattern",
    [
        (
            ["--config=blackbox_digitz"],
            "Unknown config 'blackbox_digitz'; did you mean blackbox_digits",
        ),
        (
            ["--config=blackbox_digits", "--config.train.epoch=2"],
            "Unknown config key 'train.epoch'; closest valid keys: train.epochs",
        ),
        (
            ["--config=blackbox_digits", "--config.train.epochs=two"],
            "Config key 'train.epochs' expects an integer, got 'two'.",
        ),
    ],
)
def test_usage_errors_exit_2_with_the_sentence_last(tmp_path, args, pattern):
    result = launch("experiments.train", *args, f"--workdir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result).startswith(f"error: {pattern}")
    assert not (tmp_path / "config.json").exists()


def test_workdir_of_another_config_exits_1_and_names_keys(tmp_path):
    from protojax import config as config_lib

    other = config_lib.to_dict(config_lib.load_config("blackbox_digits"))
    other["seed"], other["optim"]["lr"] = 5, 0.1
    (tmp_path / "config.json").write_text(json.dumps(other))
    result = launch("experiments.train", "--config=blackbox_digits", f"--workdir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]
    line = last_line(result)
    assert line.startswith(f"error: Workdir {tmp_path} holds a run with another config")
    assert "(differing keys: optim.lr, seed)" in line
    assert json.loads((tmp_path / "config.json").read_text()) == other


def test_benchmark_prints_one_json_line():
    result = launch(
        "experiments.benchmark",
        "--config=blackbox_digits",
        "--steps=2",
        "--warmup=1",
        "--batch_size=16",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    record = json.loads(result.stdout.strip().splitlines()[-1])
    for key in (
        "train_images_per_sec",
        "eval_images_per_sec",
        "compile_s",
        "peak_memory_bytes",
        "device_kind",
        "jax_version",
        "precision",
    ):
        assert key in record
    assert record["batch_size"] == 16 and record["train_images_per_sec"] > 0
