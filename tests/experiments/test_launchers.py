"""The launchers' error contract: the sentence is the last line; exit 2 for usage errors,
1 for data and checkpoint errors. And the benchmark launcher's JSON line."""

import json
import pathlib
import shutil
import socket

import pytest


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
        (
            ["--config=protopnet_cub:vgg17"],
            "Unknown ProtoPNet backbone 'vgg17' in the config argument; use one of vgg16, vgg19",
        ),
    ],
)
def test_usage_errors_exit_2_with_the_sentence_last(python, tmp_path, args, pattern):
    result = python("-m", "experiments.train", *args, f"--workdir={tmp_path}")
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result).startswith(f"error: {pattern}")
    assert not (tmp_path / "config.json").exists()


def test_workdir_of_another_config_exits_1_and_names_keys(python, tmp_path):
    from protojax import config as config_lib

    other = config_lib.to_dict(config_lib.load_config("blackbox_digits"))
    other["seed"], other["optim"]["lr"] = 5, 0.1
    (tmp_path / "config.json").write_text(json.dumps(other))
    (tmp_path / "checkpoints" / "0").mkdir(parents=True)  # the workdir holds a run
    result = python("-m", "experiments.train", "--config=blackbox_digits", f"--workdir={tmp_path}")
    assert result.returncode == 1, result.stderr[-2000:]
    line = last_line(result)
    assert line.startswith(f"error: Workdir {tmp_path} holds a run with another config")
    assert "(differing keys: optim.lr, seed)" in line
    assert json.loads((tmp_path / "config.json").read_text()) == other


# A tiny blackbox_digits run: 8-px digits, 3 steps, then stop (resumable).
TINY = [
    "--config=blackbox_digits",
    "--config.data.image_size=8",
    "--config.data.batch_size=32",
    "--config.train.stop_after_steps=3",
    "--config.train.progress=False",
    "--config.train.log_every_steps=3",
]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def distributed_run(python, tmp_path_factory):
    """The tiny run through the --distributed path: one process, its own coordinator."""
    workdir = tmp_path_factory.mktemp("distributed")
    result = python(
        "-m",
        "experiments.train",
        *TINY,
        f"--workdir={workdir}",
        "--distributed",
        f"--coordinator_address=127.0.0.1:{_free_port()}",
        "--num_processes=1",
        "--process_id=0",
        merged=True,
    )
    return workdir, result


def test_distributed_flag_initializes_jax_distributed_and_trains(distributed_run):
    workdir, result = distributed_run
    assert result.returncode == 0, result.stdout[-3000:]
    assert "jax.distributed: process 0 of 1, 1 devices in all." in result.stdout
    assert result.stdout.strip().splitlines()[-1] == (
        f"Stopped early; rerun the same command to resume from {workdir}."
    )
    records = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in records] == [("train", 3)]
    assert (workdir / "checkpoints" / "0").is_dir()


def _snapshot(directory: pathlib.Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


def test_truncated_checkpoint_exits_1_with_the_sentence_last_and_deletes_nothing(
    python, distributed_run, tmp_path
):
    source, _ = distributed_run
    workdir = tmp_path / "run"
    shutil.copytree(source, workdir)
    data = [p for p in (workdir / "checkpoints").rglob("*") if p.is_file() and "ocdbt" in str(p)]
    victim = max(data, key=lambda p: p.stat().st_size)
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    before = _snapshot(workdir / "checkpoints")
    result = python(
        "-m",
        "experiments.train",
        *TINY,
        "--config.train.stop_after_steps=6",
        f"--workdir={workdir}",
        merged=True,
    )
    assert result.returncode == 1, result.stdout[-3000:]
    lines = [line for line in result.stdout.splitlines() if line.strip()]
    checkpoint = workdir / "checkpoints" / "0"
    tail = result.stdout[-3000:]
    sentence = f"error: Checkpoint {checkpoint} is corrupt or does not match"
    assert lines[-1].startswith(sentence), tail
    assert lines[-1].endswith("Nothing was deleted."), tail
    assert sum("error:" in line for line in lines) == 1
    assert _snapshot(workdir / "checkpoints") == before


_LATE_WRITERS = """
import atexit, os, sys, threading, time
from experiments import cli
from protojax.errors import CheckpointError

def late():
    time.sleep(0.2)
    os.write(2, b"native noise\\n")
    print("python noise", file=sys.stderr)

atexit.register(lambda: print("atexit noise", file=sys.stderr))
threading.Thread(target=late).start()
with cli.error_contract():
    raise CheckpointError("Checkpoint x is corrupt.")
"""


def test_nothing_written_after_the_sentence_reaches_the_output(python):
    # Stands in for TensorStore threads and finalizers that outlive a failed restore.
    result = python("-c", _LATE_WRITERS, merged=True)
    assert result.returncode == 1, result.stdout
    assert result.stdout.strip().splitlines() == ["error: Checkpoint x is corrupt."]


@pytest.mark.parametrize(
    "flag, pattern",
    [
        ("--workdirr=x", "Unknown flag --workdirr; closest valid flags: --workdir "),
        (
            "--profile_step=1:3",
            "Unknown flag --profile_step; closest valid flags: --profile_steps ",
        ),
        ("--num_processes=two", "flag --num_processes=two: invalid literal for int()"),
    ],
)
def test_bad_flags_exit_2_with_the_sentence_last(python, tmp_path, flag, pattern):
    result = python(
        "-m", "experiments.train", "--config=blackbox_digits", flag, f"--workdir={tmp_path}"
    )
    assert result.returncode == 2, result.stderr[-2000:]
    assert last_line(result).startswith(f"error: {pattern}")
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "config.json").exists()


# Runs the benchmark launcher where the packages beyond jax, flax, optax, orbax and chex (and
# their own dependencies) are absent, as on the accelerator machines: a None entry in
# sys.modules makes `import NAME` fail as for a missing package, and find_spec return None.
STRIPPED = """
import runpy, sys
ABSENT = ("grain", "tensorflow_datasets", "tensorflow", "torch", "sklearn", "matplotlib", "PIL",
          "scipy", "ml_collections")
for name in ABSENT:
    sys.modules[name] = None
sys.argv = ["benchmark", *sys.argv[1:]]
try:
    runpy.run_module("experiments.benchmark", run_name="__main__", alter_sys=True)
finally:
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in ABSENT and sys.modules[m])
    print("loaded:", ",".join(loaded), file=sys.stderr)
"""


def test_benchmark_prints_one_json_line_with_only_the_accelerator_packages(python):
    result = python(
        "-c",
        STRIPPED,
        "--config=blackbox_digits",
        "--steps=2",
        "--warmup=1",
        "--batch_size=16",
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == "loaded:"
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
    assert record["image_shape"] == [28, 28, 1]
