"""Experiment configs: loading by name, command-line overrides, JSON round trips and diffs.

A config is a plain `ConfigDict` returned by `get_config()` in
`experiments/configs/NAME.py` (or any path). Configs are locked: an unknown key or a value of
the wrong type is a `UsageError` whose message names the key and the closest valid keys.

Where ml_collections is not installed (accelerator images that carry only jax, flax, optax,
orbax and chex), `ConfigDict` is a small stand-in with the same locking and typing rules, so
that the model code and the benchmark launcher still run.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import inspect
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

from protojax.errors import UsageError

try:
    import ml_collections

    ConfigDict = ml_collections.ConfigDict
except ImportError:  # pragma: no cover - exercised in a subprocess test
    ml_collections = None

    class ConfigDict(dict):  # noqa: D101 - documented in the module docstring
        """A nested dict with attribute access, locking and type-safe assignment."""

        def __init__(self, initial=None):
            super().__init__()
            object.__setattr__(self, "_locked", False)
            for key, value in dict(initial or {}).items():
                self[key] = ConfigDict(value) if isinstance(value, dict) else value

        def __getattr__(self, key):
            try:
                return self[key]
            except KeyError:
                raise AttributeError(key) from None

        def __setattr__(self, key, value):
            self[key] = value

        def __setitem__(self, key, value):
            if key not in self:
                if self._locked:
                    raise AttributeError(f"Key '{key}' does not exist and the config is locked.")
                super().__setitem__(key, ConfigDict(value) if isinstance(value, dict) else value)
                return
            current = self[key]
            if current is not None and value is not None and type(current) is not type(value):
                if isinstance(current, float) and isinstance(value, int):
                    value = float(value)
                elif isinstance(current, tuple | list) and isinstance(value, tuple | list):
                    value = type(current)(value)
                else:
                    raise TypeError(f"Field '{key}' has type {type(current).__name__}.")
            super().__setitem__(key, value)

        def lock(self):
            object.__setattr__(self, "_locked", True)
            for value in self.values():
                if isinstance(value, ConfigDict):
                    value.lock()
            return self

        def unlock(self):
            object.__setattr__(self, "_locked", False)
            for value in self.values():
                if isinstance(value, ConfigDict):
                    value.unlock()
            return self

        def unlocked(self):
            import contextlib

            @contextlib.contextmanager
            def scope():
                was_locked = self._locked
                self.unlock()
                try:
                    yield self
                finally:
                    if was_locked:
                        self.lock()

            return scope()


# Keys that change how a run is carried out but not what it computes. A workdir may be resumed
# with other values of these; any other difference stops the run.
RUNTIME_KEYS = frozenset(
    {
        "train.stop_after_steps",
        "train.log_every_steps",
        "train.checkpoint_every_steps",
        "train.keep_checkpoints",
        "train.progress",
        "data.data_dir",
        "data.download",
        "data.num_workers",
    }
)

CONFIG_DIR = Path(__file__).resolve().parent.parent / "experiments" / "configs"


def available_configs() -> list[str]:
    """Names of the configs shipped in `experiments/configs/`."""
    if not CONFIG_DIR.is_dir():
        return []
    return sorted(
        p.stem for p in CONFIG_DIR.glob("*.py") if not p.stem.startswith("_") and p.stem != "common"
    )


def find_config_file(name_or_path: str) -> Path:
    """Resolves a config name (`blackbox_digits`) or a path to a `.py` file."""
    path = Path(name_or_path)
    if path.suffix == ".py" or path.parent != Path("."):
        if path.is_file():
            return path
        raise UsageError(f"Config file {name_or_path} does not exist; pass an existing .py file.")
    candidate = CONFIG_DIR / f"{name_or_path}.py"
    if candidate.is_file():
        return candidate
    names = available_configs()
    close = difflib.get_close_matches(name_or_path, names, n=3, cutoff=0.4)
    hint = f"did you mean {', '.join(close)}?" if close else f"available: {', '.join(names)}."
    raise UsageError(f"Unknown config '{name_or_path}'; {hint}")


def load_config(name_or_path: str, arg: str | None = None) -> ConfigDict:
    """Imports a config file and returns its locked `get_config()`, or `get_config(arg)`;
    `NAME:ARG` passes ARG as the argument (`protopnet_cub:vgg19`), as ml_collections'
    config flags do."""
    if arg is None and ":" in name_or_path:
        name_or_path, arg = name_or_path.rsplit(":", 1)
    path = find_config_file(name_or_path)
    spec = importlib.util.spec_from_file_location(f"_protojax_config_{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(module, "get_config"):
        raise UsageError(
            f"Config file {path} has no get_config(); define one returning a ConfigDict."
        )
    if arg is not None and not inspect.signature(module.get_config).parameters:
        raise UsageError(f"Config {path.stem} takes no argument; drop ':{arg}'.")
    config = module.get_config() if arg is None else module.get_config(arg)
    if not isinstance(config, ConfigDict):
        raise UsageError(f"get_config() in {path} must return an ConfigDict.")
    config.lock()
    return config


def leaf_keys(config: Mapping[str, Any], prefix: str = "") -> list[str]:
    """All dotted leaf keys of a (nested) config."""
    keys = []
    for key, value in config.items():
        full = f"{prefix}{key}"
        if isinstance(value, Mapping | ConfigDict):
            keys.extend(leaf_keys(value, full + "."))
        else:
            keys.append(full)
    return keys


def _unknown_key(config: ConfigDict, key: str) -> UsageError:
    close = difflib.get_close_matches(key, leaf_keys(config), n=3, cutoff=0.5)
    hint = (
        f"closest valid keys: {', '.join(close)}." if close else "see the config file for its keys."
    )
    return UsageError(f"Unknown config key '{key}'; {hint}")


_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


def _parse(key: str, raw: Any, current: Any) -> Any:
    """Parses a command-line string into the type of the current value."""
    if not isinstance(raw, str):
        return raw
    if isinstance(current, bool):
        if raw.lower() in _TRUE:
            return True
        if raw.lower() in _FALSE:
            return False
        raise UsageError(f"Config key '{key}' expects true or false, got '{raw}'.")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            raise UsageError(f"Config key '{key}' expects an integer, got '{raw}'.") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise UsageError(f"Config key '{key}' expects a number, got '{raw}'.") from None
    if isinstance(current, str):
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        if current is None:
            return raw
        raise UsageError(
            f"Config key '{key}' expects a {type(current).__name__}, got '{raw}'."
        ) from None
    if isinstance(current, tuple | list):
        if not isinstance(value, tuple | list):
            value = (value,)
        return type(current)(value)
    return value


def set_value(config: ConfigDict, key: str, raw: Any) -> None:
    """Sets a dotted key, parsing strings by the type the config already has there."""
    *groups, leaf = key.split(".")
    node = config
    for group in groups:
        if group not in node or not isinstance(node[group], ConfigDict):
            raise _unknown_key(config, key)
        node = node[group]
    if leaf not in node:
        raise _unknown_key(config, key)
    current = node[leaf]
    if isinstance(current, ConfigDict):
        sub = ", ".join(f"{key}.{k}" for k in current.keys())
        raise UsageError(f"Config key '{key}' is a group; set one of {sub}.")
    value = _parse(key, raw, current)
    if (
        isinstance(current, int | float)
        and not isinstance(current, bool)
        and isinstance(value, bool)
    ):
        raise UsageError(f"Config key '{key}' expects a number, got '{raw}'.")
    try:
        with node.unlocked():
            node[leaf] = value
    except TypeError:
        raise UsageError(
            f"Config key '{key}' expects a {type(current).__name__}, got {value!r}."
        ) from None


def apply_overrides(config: ConfigDict, overrides: Iterable[tuple[str, Any]]) -> None:
    for key, raw in overrides:
        set_value(config, key, raw)


def to_dict(config: ConfigDict | Mapping[str, Any]) -> dict[str, Any]:
    """A JSON-ready nested dict (tuples become lists)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, Mapping | ConfigDict):
            out[key] = to_dict(value)
        elif isinstance(value, tuple):
            out[key] = list(value)
        else:
            out[key] = value
    return out


def to_json(config: ConfigDict) -> str:
    return json.dumps(to_dict(config), indent=2, sort_keys=True)


def from_dict(data: Mapping[str, Any]) -> ConfigDict:
    """Rebuilds a locked ConfigDict from `to_dict` output."""

    def convert(value):
        if isinstance(value, Mapping):
            return ConfigDict({k: convert(v) for k, v in value.items()})
        if isinstance(value, list):
            return tuple(convert(v) for v in value)
        return value

    config = convert(data)
    config.lock()
    return config


def _flat(data: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    flat = {}
    for key, value in data.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def differing_keys(old: Mapping[str, Any], new: Mapping[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two config dicts, runtime keys excluded."""
    a, b = _flat(json.loads(json.dumps(old))), _flat(json.loads(json.dumps(new)))
    return sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k) and k not in RUNTIME_KEYS)


class Rule(NamedTuple):
    """A range or choice that a config key's value must satisfy.

    Attributes:
      key: the dotted key; a config without it (a user's own section layout) skips the rule.
      holds: `holds(value) -> bool`.
      expects: what a valid value is, completing "must be ...", e.g. "an integer ≥ 1".
    """

    key: str
    holds: Callable[[Any], bool]
    expects: str


def at_least(key: str, low: float, what: str = "an integer") -> Rule:
    return Rule(key, lambda value: value >= low, f"{what} ≥ {low}")


def between(key: str, low: float, high: float) -> Rule:
    """`low < value < high`."""
    return Rule(
        key, lambda value: low < value < high, f"a number strictly between {low} and {high}"
    )


def one_of(key: str, choices: Sequence[str]) -> Rule:
    return Rule(key, lambda value: value in choices, f"one of {', '.join(choices)}")


def _lookup(config: Mapping[str, Any], key: str) -> tuple[bool, Any]:
    node: Any = config
    for part in key.split("."):
        if not isinstance(node, Mapping | ConfigDict) or part not in node:
            return False, None
        node = node[part]
    return True, node


def validate(config: ConfigDict, rules: Iterable[Rule]) -> None:
    """Checks `config` against `rules` (each layer contributes those of its own section:
    `protojax.data.CONFIG_RULES`, `protojax.train.loop.CONFIG_RULES`), before anything
    touches the disk or the data.

    Raises:
      UsageError: naming the first key whose value breaks its rule.
    """
    for rule in rules:
        present, value = _lookup(config, rule.key)
        if not present or value is None:
            continue
        if not rule.holds(value):
            raise UsageError(
                f"Config key '{rule.key}' must be {rule.expects}, got {value!r}; set "
                f"--config.{rule.key}=VALUE."
            )


def compute_dtype(config: ConfigDict):
    """The dtype of a run's activations: `config.train.precision`, float32 or bfloat16."""
    import jax.numpy as jnp

    precision = config.train.precision
    if precision not in ("float32", "bfloat16"):
        raise UsageError(f"train.precision must be float32 or bfloat16, got '{precision}'.")
    return jnp.bfloat16 if precision == "bfloat16" else jnp.float32
