"""What a run may do to a workdir before it trains: nothing until its config is valid, and
nothing but take the lock until its data has loaded; a workdir that is a file, cannot be
written, or is held by another process stops the run with one sentence."""

import errno
import json
import os
import signal
import socket
import subprocess
import sys

import pytest

from protojax import config as config_lib
from protojax import runs
from protojax.errors import DataError, UsageError, WorkdirError
from protojax.train import workdir as wd


def _config(**overrides):
    config = config_lib.load_config("blackbox_digits")
    config_lib.apply_overrides(config, overrides.items())
    return config


def _snapshot(directory):
    return {
        str(p.relative_to(directory)): p.read_bytes() for p in directory.rglob("*") if p.is_file()
    }


@pytest.fixture
def earlier_run(tmp_path):
    """A workdir holding another config's run (config.json and a checkpoint)."""
    workdir = tmp_path / "run"
    (workdir / "checkpoints" / "0").mkdir(parents=True)
    (workdir / "checkpoints" / "0" / "state").write_bytes(b"\x00\x01")
    other = config_lib.to_dict(_config(seed=7))
    (workdir / "config.json").write_text(json.dumps(other))
    (workdir / "metrics.jsonl").write_text('{"kind": "train", "step": 1}\n')
    return workdir


@pytest.mark.parametrize(
    "key, value, expects",
    [
        ("data.image_size", -3, "an integer ≥ 0"),
        ("data.batch_size", 0, "an integer ≥ 1"),
        ("data.eval_batch_size", -1, "an integer ≥ 1"),
        (
            "data.val_fraction",
            1.5,
            "a number from 0 (no validation split) up to, not including, 1",
        ),
        ("data.test_fraction", 0.0, "a number strictly between 0 and 1"),
        ("data.normalization", "unit", "one of none, symmetric, imagenet, cifar10"),
        ("train.log_every_steps", 0, "an integer ≥ 1"),
        ("train.keep_checkpoints", 0, "an integer ≥ 1"),
        ("train.grad_accum_steps", 0, "an integer ≥ 1"),
    ],
)
def test_out_of_range_values_stop_before_the_disk(earlier_run, key, value, expects):
    before = _snapshot(earlier_run)
    with pytest.raises(UsageError) as info:
        runs.train(_config(**{key: value}), earlier_run)
    assert str(info.value) == (
        f"Config key '{key}' must be {expects}, got {value!r}; set --config.{key}=VALUE."
    )
    assert info.value.exit_code == 2
    assert _snapshot(earlier_run) == before
    with pytest.raises(UsageError):  # a fresh workdir is not even created
        runs.train(_config(**{key: value}), earlier_run.parent / "fresh")
    assert not (earlier_run.parent / "fresh").exists()


def test_a_failed_start_does_not_claim_the_workdir(tmp_path):
    workdir = tmp_path / "run"
    missing = tmp_path / "no_images"
    with pytest.raises(DataError, match=f"Image folder {missing} does not exist"):
        runs.train(_config(**{"data.name": f"folder:{missing}"}), workdir)
    assert sorted(p.name for p in workdir.iterdir()) == [wd.LOCK]  # no config.json
    # A config.json without a checkpoint (a start that failed before its first) holds no run.
    (workdir / "config.json").write_text(json.dumps(config_lib.to_dict(_config(seed=3))))
    wd.check_config(workdir, _config())
    (workdir / "checkpoints" / "0").mkdir(parents=True)
    with pytest.raises(WorkdirError, match=r"holds a run with another config \(.*: seed\)"):
        wd.check_config(workdir, _config())


def test_a_workdir_that_is_a_file_is_a_sentence(tmp_path):
    path = tmp_path / "notes.txt"
    path.write_text("mine")
    for workdir, where in ((path, ""), (path / "run", f" (its parent {path} is)")):
        with pytest.raises(WorkdirError) as info:
            runs.train(_config(), workdir)
        assert str(info.value) == (
            f"--workdir {workdir} is a file{where}, not a directory; pass a directory (a new "
            "one, or that of the run to resume)."
        )
        assert info.value.exit_code == 1
    assert path.read_text() == "mine"


def test_a_read_only_workdir_is_a_sentence(earlier_run, monkeypatch):
    before = _snapshot(earlier_run)
    real_open = os.open

    def read_only(path, flags, *args):
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_CREAT):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(WorkdirError) as info:
        runs.train(_config(**{"seed": 7}), earlier_run)
    assert str(info.value) == (
        f"Workdir {earlier_run} cannot be written (Read-only file system); make it writable or "
        "pass another --workdir."
    )
    monkeypatch.undo()
    assert _snapshot(earlier_run) == before


HOLDER = """
import pathlib, sys, time
from protojax.train import workdir
with workdir.locked(pathlib.Path(sys.argv[1])):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    workdir = tmp_path / "run"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(workdir)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(WorkdirError) as info, wd.locked(workdir):
            pass
        assert str(info.value) == (
            f"Workdir {workdir} is in use by the run of process {holder.pid} on host "
            f"{socket.gethostname()}; wait for that run to end (or stop it), or pass another "
            "--workdir."
        )
        assert info.value.exit_code == 1
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    # SIGKILL runs no clean-up: the kernel released the lock with the process.
    with wd.locked(workdir), wd.locked(workdir):  # and this process may re-enter its own
        assert (workdir / wd.LOCK).read_text() == f"{socket.gethostname()} {os.getpid()}\n"
