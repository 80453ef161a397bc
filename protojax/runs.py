"""Runs as a user meets them: train from a config, and load a work directory back.

This module sits above `methods/` and `train/`: it builds the method that `config.method`
names (a built-in name or a dotted module path) and hands it to the engine.
"""

from __future__ import annotations

import json
import pathlib
from typing import Any

from jax.sharding import Mesh

from protojax import config as config_lib
from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import WorkdirError
from protojax.methods import build_method, method_module
from protojax.train import loop
from protojax.train import workdir as wd


def train(config: ConfigDict, workdir: str | pathlib.Path, mesh: Mesh | None = None, **options):
    """Loads the data, builds the method that `config.method` names and trains it with
    `protojax.train.run` (whose keyword `options`, `dataset` and `profile_steps`, it passes
    on); returns the summary, or None if the run stopped early."""
    from protojax.data import load_dataset

    dataset = options.pop("dataset", None) or load_dataset(config.data)
    method = build_method(config, dataset)
    return loop.run(method, config, workdir, mesh, dataset=dataset, **options)


def load_workdir(workdir: str | pathlib.Path):
    """`(method, variables, config)` from a finished or running workdir's newest checkpoint,
    for any method, a user's own (`config.method = "mypackage.my_sem"`) included.

    Raises:
      WorkdirError: the directory holds no readable run.
      CheckpointError: its checkpoint is missing, corrupt or of another model.
    """
    workdir = pathlib.Path(workdir)
    config = read_config(workdir)
    dataset = read_dataset(workdir)
    method = build_method(config, dataset)
    variables = loop.restore_variables(method, config, dataset, workdir)
    return method, variables, config


def read_config(workdir: pathlib.Path) -> ConfigDict:
    """The run's config.json, with keys the library gained since at their defaults."""
    path = workdir / wd.CONFIG
    if not path.is_file():
        raise WorkdirError(f"{workdir} has no {wd.CONFIG}; pass the --workdir of a training run.")
    try:
        stored = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise WorkdirError(
            f"{path} is not valid JSON ({error.msg}); restore it from a copy or retrain into a "
            "new --workdir."
        ) from None
    return config_lib.from_dict(_with_library_defaults(stored))


def read_dataset(workdir: pathlib.Path) -> Dataset:
    """The dataset description (classes, image shape) the run was trained on."""
    if not (workdir / wd.DATASET).is_file():
        raise WorkdirError(
            f"{workdir} has no {wd.DATASET}: its run never loaded its data; rerun the training "
            "command on this workdir to start it."
        )
    return wd.read_dataset_info(workdir)


def default_config(method: str) -> ConfigDict:
    """A complete config for `method` (a built-in name or a dotted module path) at the
    library's defaults: the engine's `train`, the data layer's `data` (the digits), and the
    method's `model` and `optim` sections. Configs start from it and change what they need."""
    from protojax.data import default_config as data_config

    module = method_module(method)
    return ConfigDict(
        {
            "method": method,
            "seed": 0,
            "data": data_config(),
            "model": module.default_model_config(),
            "optim": module.default_optim_config(),
            "train": loop.default_config(),
        }
    )


def _with_library_defaults(stored: dict[str, Any]) -> dict[str, Any]:
    """A stored config with the keys the library gained since the run was written (such as
    `data.download`) at their defaults; stored values always win."""
    defaults = config_lib.to_dict(default_config(stored.get("method", "")))

    def merge(default: dict, value: dict) -> dict:
        out = dict(value)
        for key, fallback in default.items():
            if key not in out:
                out[key] = fallback
            elif isinstance(fallback, dict) and isinstance(out[key], dict):
                out[key] = merge(fallback, out[key])
        return out

    return merge(defaults, stored)
