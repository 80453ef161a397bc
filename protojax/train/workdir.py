"""The work directory: config.json, dataset.json, metrics.jsonl, summary.json, figures/ and
checkpoints/ (`protojax.load_workdir` reads one back)."""

from __future__ import annotations

import json
import pathlib
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
    if workdir.exists() and not workdir.is_dir():
        raise WorkdirError(f"--workdir {workdir} is a file; pass a directory.")
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
