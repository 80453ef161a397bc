"""One file per method. `build_method(config, dataset)` builds the one named by
`config.method`; each method module provides `default_model_config()`,
`default_optim_config()` and its `Method` subclass."""

from __future__ import annotations

import importlib
from types import ModuleType

from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.train.protocol import Method

METHODS = ("blackbox", "protopnet", "protovae", "pantypes")


def method_module(name: str) -> ModuleType:
    if name not in METHODS:
        raise UsageError(
            f"Unknown method '{name}' in config.method; use one of {', '.join(METHODS)}."
        )
    return importlib.import_module(f"protojax.methods.{name}")


def build_method(config: ConfigDict, dataset: Dataset) -> Method:
    """The method named by `config.method`, built for `dataset`'s classes and image shape."""
    return method_module(config.method).build(config, dataset)


__all__ = ["METHODS", "build_method", "method_module"]
