"""protojax: prototype-based self-explainable image models in JAX/Flax.

`import protojax` is light: it imports neither TensorFlow nor PyTorch, and the subpackages
(`protojax.prototypes`, `protojax.explain`, ...) load on first attribute access.
"""

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBPACKAGES = (
    "config",
    "data",
    "errors",
    "explain",
    "methods",
    "metrics",
    "nn",
    "prototypes",
    "runs",
    "train",
)


def load_workdir(workdir: str) -> tuple[Any, Any, Any]:
    """Loads a finished or running work directory: returns `(method, variables, config)`.

    The variables are those of the newest checkpoint, on the default device.
    """
    from protojax.runs import load_workdir as _load

    return _load(workdir)


def __getattr__(name: str) -> Any:
    if name in _SUBPACKAGES:
        return importlib.import_module(f"protojax.{name}")
    raise AttributeError(f"module 'protojax' has no attribute {name!r}")


__all__ = ["load_workdir", "__version__", *_SUBPACKAGES]
