"""Runs as a user meets them: train from a config, and load a work directory back.

This module sits above `methods/` and `train/`: it builds the method that `config.method`
names (a built-in name or a dotted module path) and hands it to the engine. `default_config`,
`read_config` and `read_dataset` live in `protojax.methods` (a method that builds on another
run, such as KMEx, reads that run's config there) and are re-exported here.

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
from protojax.methods import build_method, default_config, read_config, read_dataset
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


__all__ = [
    "LoadedMethod",
    "default_config",
    "load_workdir",
    "read_config",
    "read_dataset",
    "train",
    "write_run_report",
]
