"""Every launcher's --help and error path, with real processes: out-of-range config values and
a workdir that is a file stop with the sentence last and the disk untouched; a second run on a
workdir is refused while the first trains; Ctrl-C is one line that says where the run stands."""

import json
import os
import pathlib
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]

# The tiny run of test_launchers.py: 8-px digits, batch 32, 3 steps.
TINY = [
    "--config=blackbox_digits",
    "--config.data.image_size=8",
    "--config.data.batch_size=32",
    "--config.train.stop_after_steps=3",
    "--config.train.progress=False",
    "--config.train.log_every_steps=3",
]


def last_line(result):
    return [line for line in result.stderr.splitlines() if line.strip()][-1]


@pytest.mark.parametrize(
    "launcher, first_line, flag",
    [
        ("train", "Trains an experiment config.", "--workdir"),
        ("explain", "Explains a trained model's predictions", "--num_images"),
        ("benchmark", "Measures a config's train step", "--warmup"),
        ("prepare_data", "Prepares a TFDS dataset as ArrayRecord", "--manual_dir"),
    ],
)
def test_every_launcher_prints_its_help(python, launcher, first_line, flag):
    result = python("-m", f"experiments.{launcher}", "--help")
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.startswith(first_line)
    assert flag in result.stdout and result.stderr == ""


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_out_of_range_value_exits_2_with_the_sentence_last_and_the_run_untouched(python, tmp_path):
    (tmp_path / "checkpoints" / "0").mkdir(parents=True)
    (tmp_path / "config.json").write_text("{}")
    before = _snapshot(tmp_path)
    result = python(
        "-m", "experiments.train", *TINY, "--config.data.image_size=-3", f"--workdir={tmp_path}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result) == (
        "error: Config key 'data.image_size' must be an integer ≥ 0, got -3; set "
        "--config.data.image_size=VALUE."
    )
    assert "Traceback" not in result.stderr
    assert _snapshot(tmp_path) == before


def test_a_workdir_that_is_a_file_exits_1_with_the_sentence_last(python, tmp_path):
    path = tmp_path / "run"
    path.write_text("mine")
    result = python("-m", "experiments.train", *TINY, f"--workdir={path}")
    assert result.returncode == 1, result.stderr[-2000:]
    assert last_line(result).startswith(f"error: --workdir {path} is a file, not a directory;")
    assert path.read_text() == "mine"


def _wait_for(condition, process, timeout=300.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert process.poll() is None, process.communicate()[0][-3000:]
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def test_a_second_run_is_refused_and_ctrl_c_is_one_line(python, tmp_path):
    workdir = tmp_path / "run"
    command = [
        *TINY,
        "--config.train.stop_after_steps=0",
        "--config.train.epochs=1000",  # runs until interrupted
        "--config.train.checkpoint_every_steps=2",
        "--config.train.log_every_steps=1",
        f"--workdir={workdir}",
    ]
    first = subprocess.Popen(
        [sys.executable, "-m", "experiments.train", *command],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "XLA_FLAGS": ""},
    )
    try:
        holder = f"{socket.gethostname()} {first.pid}\n"
        lock = workdir / "lock"
        _wait_for(lambda: lock.exists() and lock.read_text() == holder, first)
        second = python("-m", "experiments.train", *command)
        assert second.returncode == 1, second.stderr[-2000:]
        assert last_line(second) == (
            f"error: Workdir {workdir} is in use by the run of process {first.pid} on host "
            f"{socket.gethostname()}; wait for that run to end (or stop it), or pass another "
            "--workdir."
        )
        checkpoints = workdir / "checkpoints"
        _wait_for(
            lambda: checkpoints.is_dir() and any(p.name.isdigit() for p in checkpoints.iterdir()),
            first,
        )
        first.send_signal(signal.SIGINT)
        output = first.communicate(timeout=120)[0]
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    assert first.returncode == 130, output[-3000:]
    lines = [line for line in output.splitlines() if line.strip()]
    match = re.fullmatch(
        r"interrupted at step (\d+); the last checkpoint is step (\d+); rerun the same "
        r"command to resume",
        lines[-1],
    )
    assert match, output[-3000:]
    step, saved = int(match[1]), int(match[2])
    # A first Ctrl-C stops at the next step boundary with a checkpoint: no step is lost.
    assert "Traceback" not in output and saved == step >= 2
    # The checkpoint named is complete, and the run logged each step once, in order.
    steps_saved = [
        json.loads((p / "meta" / "metadata").read_text())["step"]
        for p in checkpoints.iterdir()
        if p.name.isdigit()
    ]
    assert max(steps_saved) == saved
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if r["kind"] == "train"]
    assert steps == list(range(1, saved + 1))


_RAISES = """
import sys
from experiments import cli
with cli.error_contract():
    if sys.argv[1] == "file":
        open("/nonexistent/protojax/config.json")
    raise KeyboardInterrupt
"""


@pytest.mark.parametrize(
    "case, code, line",
    [
        (
            "file",
            1,
            "error: No such file or directory (/nonexistent/protojax/config.json); check the "
            "path and its permissions.",
        ),
        ("interrupt", 130, "interrupted; rerun the same command to resume"),
    ],
)
def test_failed_file_operations_and_ctrl_c_outside_training_are_one_line(python, case, code, line):
    result = python("-c", _RAISES, case, merged=True)
    assert result.returncode == code, result.stdout[-2000:]
    assert result.stdout.strip().splitlines() == [line]
