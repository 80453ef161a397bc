"""One file per method, and the registry that finds a method by name.

`config.method` is a built-in name (`blackbox`, `protopnet`, `protovae`, `pantypes`, `flint`) or the
name of any importable module (`mypackage.my_sem`) that follows `MethodModule`; see
examples/custom_method.py for a complete one.
"""

from __future__ import annotations

import importlib
import json
import pathlib
from typing import Any, Protocol, runtime_checkable

from protojax import config as config_lib
from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError, WorkdirError
from protojax.train import loop
from protojax.train import workdir as wd
from protojax.train.protocol import Method

BUILTIN = ("blackbox", "protopnet", "protovae", "pantypes", "flint", "kmex", "infodisent")


@runtime_checkable
class MethodModule(Protocol):
    """What a method's module provides."""

    def build(self, config: ConfigDict, dataset: Dataset) -> Method:
        """The method for `config`, sized for `dataset`'s classes and image shape."""

    def default_model_config(self) -> ConfigDict:
        """The `config.model` section with every key the method reads."""

    def default_optim_config(self) -> ConfigDict:
        """The `config.optim` section with every key the method reads."""


def method_module(name: str) -> MethodModule:
    """The module of a built-in method name or of an importable module's name."""
    if name in BUILTIN:
        return importlib.import_module(f"protojax.methods.{name}")
    try:
        module = importlib.import_module(name) if name else None
    except ModuleNotFoundError as error:
        if error.name != name.split(".")[0] and not name.startswith(f"{error.name}."):
            raise  # the module exists but one of its own imports is missing
        module = None
    if module is None:
        raise UsageError(
            f"Unknown method '{name}' in config.method: it is neither one of "
            f"{', '.join(BUILTIN)} nor an importable module; for your own method, install its "
            "package or add its folder to PYTHONPATH."
        )
    missing = [
        f
        for f in ("build", "default_model_config", "default_optim_config")
        if not callable(getattr(module, f, None))
    ]
    if missing:
        raise UsageError(
            f"Module '{name}' (config.method) lacks {', '.join(missing)}; a method module "
            "defines build(config, dataset), default_model_config() and default_optim_config()."
        )
    return module


def read_config(workdir: str | pathlib.Path) -> ConfigDict:
    """The run's config.json, with keys the library gained since at their defaults."""
    workdir = pathlib.Path(workdir)
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


def read_dataset(workdir: str | pathlib.Path) -> Dataset:
    """The dataset description (classes, image shape) the run was trained on."""
    workdir = pathlib.Path(workdir)
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


def build_method(config: ConfigDict, dataset: Dataset) -> Method:
    """The method named by `config.method`, built for `dataset`'s classes and image shape."""
    return method_module(config.method).build(config, dataset)


__all__ = [
    "BUILTIN",
    "MethodModule",
    "build_method",
    "default_config",
    "method_module",
    "read_config",
    "read_dataset",
]
