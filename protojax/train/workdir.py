"""The work directory: config.json, dataset.json, metrics.jsonl, summary.json, figures/ and
checkpoints/ (`protojax.load_workdir` reads one back), and `lock`, which the main process of
the run training in it holds."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import pathlib
import socket
from collections.abc import Iterator
from typing import Any

import jax

from protojax import config as config_lib
from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import WorkdirError

CONFIG = "config.json"
DATASET = "dataset.json"
METRICS = "metrics.jsonl"
SUMMARY = "summary.json"
CHECKPOINTS = "checkpoints"
FIGURES = "figures"
LOCK = "lock"


def is_main_process() -> bool:
    return jax.process_index() == 0


def check_config(workdir: pathlib.Path, config: ConfigDict) -> None:
    """Checks that the workdir is free for this config; writes nothing.

    A workdir holds a run once it has a checkpoint: until then (a start that failed on its
    data, say) a new config may take it over.

    Raises:
      WorkdirError: the workdir holds a run whose config.json differs in a non-runtime key.
    """
    path = workdir / CONFIG
    _check_not_a_file(workdir)
    if not path.exists() or not has_checkpoint(workdir):
        return
    try:
        old = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WorkdirError(
            f"{path} is not valid JSON ({error.msg}); restore it or use a new --workdir."
        ) from None
    keys = config_lib.differing_keys(old, config_lib.to_dict(config))
    if keys:
        shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
        raise WorkdirError(
            f"Workdir {workdir} holds a run with another config (differing keys: {shown}); "
            "use a new --workdir, or rerun with the same config to resume."
        )


def _check_not_a_file(workdir: pathlib.Path) -> None:
    for path in (workdir, *workdir.parents):
        if path.exists() and not path.is_dir():
            where = "" if path == workdir else f" (its parent {path} is)"
            raise WorkdirError(
                f"--workdir {workdir} is a file{where}, not a directory; pass a directory "
                "(a new one, or that of the run to resume)."
            )


# The workdirs this process holds: flock belongs to an open file, so a second open of the
# same lock file in one process would refuse its own run (runs.train locks around the data
# loading, and the engine again).
_HELD: dict[str, int] = {}


@contextlib.contextmanager
def locked(workdir: pathlib.Path) -> Iterator[None]:
    """Creates the workdir and holds `workdir/lock` (an exclusive `fcntl.flock`) for the block,
    on the main process; the kernel releases it on every exit, SIGKILL included, so it
    never goes stale. The file records the holder's host and process id.

    Raises:
      WorkdirError: the workdir is a file or cannot be written, or another process holds it.
    """
    if not is_main_process():
        yield
        return
    key = str(workdir.absolute())
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield
        finally:
            _HELD[key] -= 1
        return
    fd = _open_lock(workdir)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise WorkdirError(
                f"Workdir {workdir} is in use by {_holder(fd)}; wait for that run to end "
                "(or stop it), or pass another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{socket.gethostname()} {os.getpid()}\n".encode(), 0)
        _HELD[key] = 1
        try:
            yield
        finally:
            del _HELD[key]
    finally:
        os.close(fd)  # releases the lock


def _open_lock(workdir: pathlib.Path) -> int:
    _check_not_a_file(workdir)
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        return os.open(workdir / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise WorkdirError(
            f"Workdir {workdir} cannot be written ({error.strerror}); make it writable or "
            "pass another --workdir."
        ) from None


def _holder(fd: int) -> str:
    """Who holds the lock, from what it wrote into the file."""
    fields = os.pread(fd, 256, 0).decode(errors="replace").split()
    if len(fields) != 2:
        return "another process"
    host, pid = fields
    return f"the run of process {pid} on host {host}"


def has_checkpoint(workdir: pathlib.Path) -> bool:
    directory = workdir / CHECKPOINTS
    return directory.is_dir() and any(p.name.isdigit() for p in directory.iterdir())


def write_config(workdir: pathlib.Path, config: ConfigDict) -> None:
    """Creates the workdir and writes config.json (main process only)."""
    if is_main_process():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / FIGURES).mkdir(exist_ok=True)
        (workdir / CONFIG).write_text(config_lib.to_json(config) + "\n")


def write_dataset_info(workdir: pathlib.Path, dataset: Dataset) -> None:
    if is_main_process():
        info = {
            "name": dataset.name,
            "num_classes": dataset.num_classes,
            "class_names": list(dataset.class_names),
            "image_shape": list(dataset.image_shape),
            "split_sizes": {name: len(split) for name, split in dataset.splits.items()},
        }
        (workdir / DATASET).write_text(json.dumps(info, indent=2) + "\n")


def read_dataset_info(workdir: pathlib.Path) -> Dataset:
    """The dataset's description (without its splits) as written by `write_dataset_info`."""
    info = json.loads((workdir / DATASET).read_text())
    return Dataset(
        name=info["name"],
        num_classes=info["num_classes"],
        class_names=tuple(info["class_names"]),
        image_shape=tuple(info["image_shape"]),
        splits={},
    )


class MetricWriter:
    """Appends one JSON object per line to metrics.jsonl (main process only)."""

    def __init__(self, workdir: pathlib.Path):
        self.path = workdir / METRICS
        self._file = open(self.path, "a") if is_main_process() else None  # noqa: SIM115

    def write(self, record: dict[str, Any]) -> None:
        if self._file is not None:
            self._file.write(json.dumps(record, default=float) + "\n")
            self._file.flush()

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


def read_metrics(workdir: str | pathlib.Path) -> list[dict[str, Any]]:
    """The records of metrics.jsonl; where an interrupted run logged a step twice, the
    later record wins."""
    path = pathlib.Path(workdir) / METRICS
    if not path.exists():
        return []
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    keyed: dict[tuple, dict] = {}
    for record in records:
        keyed[(record.get("step"), record.get("kind"), record.get("phase"))] = record
    return list(keyed.values())


def write_summary(workdir: pathlib.Path, summary: dict[str, Any]) -> None:
    if is_main_process():
        (workdir / SUMMARY).write_text(json.dumps(summary, indent=2, default=float) + "\n")
