"""Converted weights: the file format, loading with a full key and shape check, and the
PyTorch key map.

File format: an uncompressed NumPy `.npz` whose keys are the flat '/'-joined paths of a
Flax variables dict, one array per key, for example `params/layer1_0/conv1/kernel` and
`batch_stats/layer1_0/bn1/mean`. It needs neither PyTorch nor Orbax to read, and
`numpy.load` shows its contents. `experiments/convert_weights.py` writes such files from
torchvision checkpoints.

Loading checks every key and shape against the module's own initialisation (`like`, from
`module.init` or `jax.eval_shape(module.init, ...)`), so that weights of another depth or
stem, or with a classifier head left in, stop with one sentence naming the first mismatch.
"""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protojax.errors import CheckpointError

_SEP = "/"


def flatten_variables(variables: Mapping[str, Any]) -> dict[str, Any]:
    """Nested `{collection: {module: {...: leaf}}}` → flat `{"collection/module/...": leaf}`."""
    flat = {}

    def visit(tree: Mapping[str, Any], prefix: str) -> None:
        for key, value in tree.items():
            path = f"{prefix}{key}"
            if isinstance(value, Mapping):
                visit(value, path + _SEP)
            else:
                flat[path] = value

    visit(variables, "")
    return flat


def unflatten_variables(flat: Mapping[str, Any]) -> dict[str, Any]:
    """The inverse of `flatten_variables`: '/'-joined keys → nested plain dicts."""
    nested: dict[str, Any] = {}
    for path, value in flat.items():
        *parents, leaf = path.split(_SEP)
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def save_variables(path: str | pathlib.Path, variables: Mapping[str, Any]) -> None:
    """Writes `variables` (nested dicts of arrays) to an `.npz` file of flat '/'-joined keys."""
    flat = {key: np.asarray(value) for key, value in flatten_variables(variables).items()}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez(file, **flat)


def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(
            f"No weight file at {path}; convert one with "
            "`python -m experiments.convert_weights --arch=ARCH --torch_checkpoint=PTH "
            f"--out={path}`."
        )
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"Cannot read {path} as an .npz weight file ({err}); write it again with "
            "`python -m experiments.convert_weights`."
        ) from err


def check_variables(
    flat: Mapping[str, Any],
    flat_like: Mapping[str, Any],
    *,
    source: str,
    allow_missing: bool = False,
) -> None:
    """Raises `CheckpointError` naming the first key (in sorted order) that does not match.

    Args:
      flat: the weights offered, flat '/'-joined keys → arrays.
      flat_like: what the model expects, flat keys → arrays or `jax.ShapeDtypeStruct`s.
      source: the weights' origin, for the message (a file path).
      allow_missing: accept keys of `flat_like` that `flat` lacks.
    """
    extra = set(flat) - set(flat_like)
    missing = set() if allow_missing else set(flat_like) - set(flat)
    wrong = {k for k in set(flat) & set(flat_like) if tuple(flat[k].shape) != flat_like[k].shape}
    bad = sorted(extra | missing | wrong)
    if not bad:
        return
    key = bad[0]
    count = f"{len(bad)} of {len(set(flat) | set(flat_like))} keys differ"
    if key in extra:
        raise CheckpointError(
            f"{source} holds '{key}', which the model does not have ({count}); convert the "
            "weights without the classifier head and for the model's architecture (depth)."
        )
    if key in missing:
        raise CheckpointError(
            f"{source} lacks '{key}', which the model needs ({count}); convert weights of the "
            "model's architecture (depth), or allow missing keys to keep their fresh "
            "initialisation."
        )
    raise CheckpointError(
        f"'{key}' has shape {tuple(flat[key].shape)} in {source} but the model expects "
        f"{tuple(flat_like[key].shape)} ({count}); convert weights of the model's architecture "
        "and stem (the CIFAR stem has a 3×3 conv1, the ImageNet stem a 7×7 one)."
    )


def load_variables(
    path: str | pathlib.Path,
    *,
    like: Mapping[str, Any],
    scope: str | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Loads an `.npz` weight file into a variables dict shaped like `like`.

    Args:
      path: an `.npz` file of flat keys such as `params/conv1/kernel` (see the module doc).
      like: the module's variables `{collection: {...}}` from `module.init` (concrete
        arrays), or their shapes from `jax.eval_shape(module.init, ...)`. Arrays are cast to
        its dtypes.
      scope: a '/'-joined submodule path (e.g. `backbone`) under which the file's weights
        belong inside `like`; each collection's subtree at `scope` is replaced and the rest of
        `like` is kept. None: the file covers the whole of `like`.
      allow_missing: keep `like`'s value for keys that the file lacks (then `like` must hold
        arrays, not shapes). Without it, every key must be present.

    Returns:
      Nested plain dicts of `jax.Array`s with the keys, shapes and dtypes of `like`.

    Raises:
      CheckpointError: the file is missing or unreadable, or a key or shape does not match.
    """
    path = pathlib.Path(path)
    flat = _read(path)
    flat_like = flatten_variables(like)
    if scope is None:
        inside = flat_like
    else:
        inside = {}
        for key, value in flat_like.items():
            collection, _, rest = key.partition(_SEP)
            if rest.startswith(scope + _SEP):
                inside[f"{collection}{_SEP}{rest[len(scope) + 1 :]}"] = value
        if not inside:
            raise CheckpointError(
                f"The model has no submodule '{scope}' to load {path} into; pass the scope of "
                "the backbone inside the model's variables."
            )
    check_variables(flat, inside, source=str(path), allow_missing=allow_missing)
    merged = dict(flat_like)
    for key, target in inside.items():
        full = key if scope is None else key.replace(_SEP, f"{_SEP}{scope}{_SEP}", 1)
        if key in flat:
            merged[full] = jnp.asarray(flat[key], dtype=target.dtype)
        elif isinstance(target, jax.ShapeDtypeStruct):
            raise CheckpointError(
                f"{path} lacks '{key}' and `like` holds only shapes; pass variables from "
                "`module.init` to keep a fresh initialisation for missing keys."
            )
    return unflatten_variables(merged)


def torch_to_flax_key(name: str, ndim: int) -> str | None:
    """Maps a torchvision `state_dict` key to a flat Flax variable key, or None to drop it.

    A numeric component joins the preceding one with '_' (`layer1.0.downsample.1` →
    `layer1_0/downsample_1`); the last component maps as: a 4-D or 2-D `weight` → `kernel`, a
    1-D `weight` (a norm layer's) → `scale`, `bias` → `bias`, all under `params`;
    `running_mean` and `running_var` → `mean` and `var` under `batch_stats`;
    `num_batches_tracked` → dropped.

    Args:
      name: a torch key such as `layer1.0.bn1.running_mean`.
      ndim: the rank of its tensor.

    Raises:
      CheckpointError: for a parameter kind the map does not know.
    """
    *modules, kind = name.split(".")
    parts: list[str] = []
    for part in modules:
        if part.isdigit() and parts:
            parts[-1] = f"{parts[-1]}_{part}"
        else:
            parts.append(part)
    leaves = {
        "weight": ("params", "scale" if ndim == 1 else "kernel"),
        "bias": ("params", "bias"),
        "running_mean": ("batch_stats", "mean"),
        "running_var": ("batch_stats", "var"),
    }
    if kind == "num_batches_tracked":
        return None
    if kind not in leaves:
        raise CheckpointError(
            f"Cannot map the torch key '{name}' to Flax (unknown kind '{kind}'); only "
            "convolutions, linear layers and batch norms are supported."
        )
    collection, leaf = leaves[kind]
    return _SEP.join([collection, *parts, leaf])


def torch_state_dict_to_variables(
    state_dict: Mapping[str, np.ndarray], *, drop_prefixes: Iterable[str] = ("fc.",)
) -> dict[str, Any]:
    """Converts a torchvision `state_dict` (as NumPy arrays) to Flax variables.

    Conv weights go from torch's `[O, I, kH, kW]` to Flax's `[kH, kW, I, O]`, linear weights
    from `[O, I]` to `[I, O]`; keys map by `torch_to_flax_key`.

    Args:
      state_dict: torch key → array.
      drop_prefixes: keys starting with any of these are left out (the classifier `fc.` of a
        torchvision ResNet, which a backbone does not have).

    Returns:
      Nested dicts `{'params': ..., 'batch_stats': ...}` of NumPy arrays.
    """
    drop_prefixes = tuple(drop_prefixes)
    flat = {}
    for name, value in state_dict.items():
        if name.startswith(drop_prefixes):
            continue
        value = np.asarray(value)
        key = torch_to_flax_key(name, value.ndim)
        if key is None:
            continue
        if key.endswith("/kernel") and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif key.endswith("/kernel") and value.ndim == 2:
            value = value.T
        flat[key] = np.ascontiguousarray(value)
    return unflatten_variables(flat)
