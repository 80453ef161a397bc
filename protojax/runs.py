"""Runs as a user meets them: train from a config, and load a work directory back.

This module sits above `methods/` and `train/`: it builds the method that `config.method`
names (a built-in name or a dotted module path) and hands it to the engine.

A loaded run takes images as `Dataset.split(...).get_batch` returns them, in [0, 1]: its
`predict`, `embed` and `targets` apply the run's `config.data.normalization` themselves.
"""

from __future__ import annotations

import functools
import json
import pathlib
from typing import Any

import jax
from jax.sharding import Mesh

from protojax import config as config_lib
from protojax.config import ConfigDict
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import WorkdirError
from protojax.methods import build_method, method_module
from protojax.train import loop
from protojax.train import workdir as wd


def train(config: ConfigDict, workdir: str | pathlib.Path, mesh: Mesh | None = None, **options):
    """Loads the data, builds the method that `config.method` names and trains it with
    `protojax.train.run` (whose keyword `options`, `dataset` and `profile_steps`, it passes
    on); returns the summary, or None if the run stopped early.

    The config is validated and the workdir checked and locked before the data loads (see
    `protojax.train.run` for the errors); nothing is written to the workdir but its lock
    until the data has loaded.
    """
    from protojax.data import load_dataset

    workdir = pathlib.Path(workdir)
    loop.validate_config(config)
    wd.check_config(workdir, config)
    with wd.locked(workdir):
        dataset = options.pop("dataset", None) or load_dataset(config.data)
        method = build_method(config, dataset)
        return loop.run(method, config, workdir, mesh, dataset=dataset, **options)


def load_workdir(workdir: str | pathlib.Path):
    """`(method, variables, config)` from a finished or running workdir's newest checkpoint,
    for any method, a user's own (`config.method = "mypackage.my_sem"`) included.

    The method takes images in [0, 1], as `Dataset.split(...).get_batch` returns them: where
    the run trained on normalised images (`config.data.normalization` other than "none"), it
    is a `LoadedMethod` whose `predict`, `embed` and `targets` normalise inside, so that
    explainers' gradients are with respect to [0, 1] pixels.

    Raises:
      WorkdirError: the directory holds no readable run.
      CheckpointError: its checkpoint is missing, corrupt or of another model.
    """
    workdir = pathlib.Path(workdir)
    config = read_config(workdir)
    dataset = read_dataset(workdir)
    method = build_method(config, dataset)
    variables = loop.restore_variables(method, config, dataset, workdir)
    if config.data.normalization != "none":
        method = LoadedMethod(method, config.data.normalization)
    return method, variables, config


@functools.lru_cache
def _on_unit_images(normalization: str):
    """`score(fn, images, *args)`: `fn` on normalised images; one function per mode, so that a
    `Partial` over it compiles once."""

    def score(fn, images, *args):
        return fn(pipeline.normalize(images, normalization), *args)

    return score


class LoadedMethod:
    """A trained method whose public entry points take images `[B, H, W, C]` in [0, 1].

    `predict`, `embed` and `targets` apply the run's normalisation (`normalize`) and call the
    trained method, `trained`. Every other attribute is the trained method's own: functions
    such as ProtoPNet's `activations` take normalised images (`normalize`).
    """

    def __init__(self, trained, normalization: str):
        self.trained = trained
        self.normalization = normalization

    def normalize(self, images: jax.Array) -> jax.Array:
        """Images in [0, 1] as the trained model takes them."""
        return pipeline.normalize(images, self.normalization)

    def predict(self, variables, images: jax.Array) -> jax.Array:
        """Logits `[B, K]` for images `[B, H, W, C]` in [0, 1]."""
        return self.trained.predict(variables, self.normalize(images))

    def embed(self, variables, images: jax.Array) -> jax.Array:
        """The trained method's embedding `[B, d]` of images in [0, 1]."""
        return self.trained.embed(variables, self.normalize(images))

    def targets(self, variables) -> dict[str, jax.tree_util.Partial]:
        """The trained method's score functions, each taking images in [0, 1]."""
        return {
            name: jax.tree_util.Partial(_on_unit_images(self.normalization), fn)
            for name, fn in self.trained.targets(variables).items()
        }

    def __getattr__(self, name: str) -> Any:
        return getattr(self.trained, name)


def write_run_report(workdir: str | pathlib.Path) -> pathlib.Path:
    """Rewrites WORKDIR/report/ (`protojax.explain.report.write_report`) from the run's config,
    summary and every figure under the workdir; returns the path of its index.html."""
    from protojax.explain.report import write_report

    workdir = pathlib.Path(workdir)
    config = read_config(workdir)
    summary_path = workdir / wd.SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    title = f"{config.method} on {config.data.name}: {workdir.resolve().name}"
    return write_report(workdir, title=title, config=config_lib.to_dict(config), summary=summary)


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
