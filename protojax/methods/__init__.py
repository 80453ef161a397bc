"""One file per method, and the registry that finds a method by name.

`config.method` is a built-in name (`blackbox`, `protopnet`, `protovae`, `pantypes`, `flint`) or the
name of any importable module (`mypackage.my_sem`) that follows `MethodModule`; see
examples/custom_method.py for a complete one.
"""

from __future__ import annotations

import importlib
from typing import Protocol, runtime_checkable

from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.train.protocol import Method

BUILTIN = ("blackbox", "protopnet", "protovae", "pantypes", "flint", "infodisent")


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


def build_method(config: ConfigDict, dataset: Dataset) -> Method:
    """The method named by `config.method`, built for `dataset`'s classes and image shape."""
    return method_module(config.method).build(config, dataset)


__all__ = ["BUILTIN", "MethodModule", "build_method", "method_module"]
