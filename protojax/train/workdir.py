"""The work directory: config.json, dataset.json, metrics.jsonl, summary.json, figures/,
checkpoints/ — and `load_workdir` to read one back from a notebook."""

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


def prepare(workdir: pathlib.Path, config: ConfigDict) -> bool:
    """Creates the workdir or checks that it belongs to this config; True if it existed.

    Raises:
      WorkdirError: the workdir's config.json differs in a non-runtime key.
    """
    path = workdir / CONFIG
    new = config_lib.to_dict(config)
    existed = path.exists()
    if existed:
        try:
            old = json.loads(path.read_text())
        except json.JSONDecodeError as error:
            raise WorkdirError(
                f"{path} is not valid JSON ({error.msg}); restore it or use a new --workdir."
            ) from None
        keys = config_lib.differing_keys(old, new)
        if keys:
            shown = ", ".join(keys[:8]) + (", ..." if len(keys) > 8 else "")
            raise WorkdirError(
                f"Workdir {workdir} holds a run with another config (differing keys: {shown}); "
                "use a new --workdir, or rerun with the same config to resume."
            )
    if is_main_process():
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / FIGURES).mkdir(exist_ok=True)
        path.write_text(config_lib.to_json(config) + "\n")
    return existed


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


def load_workdir(workdir: str | pathlib.Path):
    """`(method, variables, config)` from a finished or running workdir's newest checkpoint."""
    from protojax.methods import build_method
    from protojax.train.loop import restore_variables

    workdir = pathlib.Path(workdir)
    if not (workdir / CONFIG).exists():
        raise WorkdirError(f"{workdir} has no {CONFIG}; pass the --workdir of a training run.")
    stored = json.loads((workdir / CONFIG).read_text())
    config = config_lib.from_dict(_with_library_defaults(stored))
    dataset = read_dataset_info(workdir)
    method = build_method(config, dataset)
    variables = restore_variables(method, config, dataset, workdir)
    return method, variables, config


def _with_library_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys the library gained since the run was written (such as
    `data.download`) at their defaults; stored values always win."""
    from protojax.data import default_config as data_config
    from protojax.methods import method_module
    from protojax.train.loop import default_config as train_config

    module = method_module(stored.get("method", ""))
    defaults = {
        "data": data_config(),
        "model": module.default_model_config(),
        "optim": module.default_optim_config(),
        "train": train_config(),
    }

    def merge(default: dict, value: dict) -> dict:
        out = dict(value)
        for key, fallback in default.items():
            if key not in out:
                out[key] = fallback
            elif isinstance(fallback, dict) and isinstance(out[key], dict):
                out[key] = merge(fallback, out[key])
        return out

    return merge({name: config_lib.to_dict(d) for name, d in defaults.items()}, stored)
