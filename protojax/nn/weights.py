"""Converted weights: the file format, reading torch state dicts without PyTorch, the
torchvision/timm key maps, and loading a backbone from a weight file or a donor run.

File format: an uncompressed NumPy `.npz` whose keys are the flat '/'-joined paths of a
Flax variables dict, one array per key, for example `params/layer1_0/conv1/kernel` and
`batch_stats/layer1_0/bn1/mean`. It needs neither PyTorch nor Orbax to read, and
`numpy.load` shows its contents. Beside it, `NAME.npz.sha256` holds its SHA-256 checksum in
`sha256sum` format; loading verifies it when present. `experiments/convert_weights.py` writes
such files from torchvision and timm checkpoints (`.safetensors`, `.npz`, or `.pth` with the
`torch` extra).

Loading checks every key and shape against the module's own initialisation (`like`, from
`module.init` or `jax.eval_shape(module.init, ...)`), so that weights of another depth or
stem, or with a classifier head left in, stop with one sentence naming the first mismatch and
counting the missing and unexpected keys.
"""

from __future__ import annotations

import hashlib
import logging
import pathlib
import re
import zipfile
from collections.abc import Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from protojax.errors import CheckpointError, UsageError

_SEP = "/"
CHECKSUM_SUFFIX = ".sha256"
_LOG = logging.getLogger("protojax")


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


def file_sha256(path: str | pathlib.Path) -> str:
    digest = hashlib.sha256()
    with pathlib.Path(path).open("rb") as file:
        for chunk in iter(lambda: file.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def checksum_path(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.name + CHECKSUM_SUFFIX)


def save_variables(path: str | pathlib.Path, variables: Mapping[str, Any]) -> str:
    """Writes `variables` (nested dicts of arrays) to an `.npz` file of flat '/'-joined keys,
    and its SHA-256 checksum beside it (`PATH.sha256`); returns the checksum."""
    flat = {key: np.asarray(value) for key, value in flatten_variables(variables).items()}
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("wb") as file:
        np.savez(file, **flat)
    digest = file_sha256(path)
    checksum_path(path).write_text(f"{digest}  {path.name}\n")
    return digest


def _verify_checksum(path: pathlib.Path) -> None:
    sidecar = checksum_path(path)
    if not sidecar.is_file():
        return
    expected = sidecar.read_text().split()[0] if sidecar.read_text().strip() else ""
    found = file_sha256(path)
    if found != expected:
        raise CheckpointError(
            f"{path} does not match its checksum in {sidecar.name} (sha256 {found[:12]}…, "
            f"expected {expected[:12]}…); the file is damaged or was replaced: convert the "
            "weights again."
        )


def _read(path: pathlib.Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise CheckpointError(
            f"No weight file at {path}; convert one with "
            "`python -m experiments.convert_weights --arch=ARCH --torch_checkpoint=PTH "
            f"--out={path}`."
        )
    _verify_checksum(path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {key: data[key] for key in data.files}
    except (OSError, ValueError, zipfile.BadZipFile) as err:
        raise CheckpointError(
            f"Cannot read {path} as an .npz weight file ({err}); write it again with "
            "`python -m experiments.convert_weights`."
        ) from err


def _first(keys: Iterable[str], count: int = 3) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:count])
    return shown + (", …" if len(keys) > count else "")


def check_variables(
    flat: Mapping[str, Any],
    flat_like: Mapping[str, Any],
    *,
    source: str,
    allow_missing: bool = False,
) -> None:
    """Raises `CheckpointError` naming the first key (in sorted order) that does not match,
    with the counts and first names of the missing and unexpected keys.

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
    report = "".join(
        f"; {len(keys)} {kind} ({_first(keys)})"
        for kind, keys in (("missing", missing), ("unexpected", extra))
        if keys
    )
    if key in extra:
        raise CheckpointError(
            f"{source} holds '{key}', which the model does not have ({count}{report}); "
            "convert the weights without the classifier head and for the model's "
            "architecture (depth)."
        )
    if key in missing:
        raise CheckpointError(
            f"{source} lacks '{key}', which the model needs ({count}{report}); convert "
            "weights of the model's architecture (depth), or allow missing keys to keep their "
            "fresh initialisation."
        )
    raise CheckpointError(
        f"'{key}' has shape {tuple(flat[key].shape)} in {source} but the model expects "
        f"{tuple(flat_like[key].shape)} ({count}{report}); convert weights of the model's "
        "architecture and stem (the CIFAR stem has a 3×3 conv1, the ImageNet stem a 7×7 one)."
    )


def _inside(flat_like: Mapping[str, Any], scope: str | None) -> dict[str, Any]:
    """The keys of `flat_like` under `scope`, with the scope removed from their paths."""
    if scope is None:
        return dict(flat_like)
    inside = {}
    for key, value in flat_like.items():
        collection, _, rest = key.partition(_SEP)
        if rest.startswith(scope + _SEP):
            inside[f"{collection}{_SEP}{rest[len(scope) + 1 :]}"] = value
    return inside


def _with_scope(key: str, scope: str | None) -> str:
    return key if scope is None else key.replace(_SEP, f"{_SEP}{scope}{_SEP}", 1)


def load_variables(
    path: str | pathlib.Path,
    *,
    like: Mapping[str, Any],
    scope: str | None = None,
    allow_missing: bool = False,
) -> dict[str, Any]:
    """Loads an `.npz` weight file into a variables dict shaped like `like`.

    Args:
      path: an `.npz` file of flat keys such as `params/conv1/kernel` (see the module doc);
        its checksum file, when present, must match.
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
      CheckpointError: the file is missing, unreadable or fails its checksum, or a key or shape
        does not match.
    """
    path = pathlib.Path(path)
    flat = _read(path)
    flat_like = flatten_variables(like)
    inside = _inside(flat_like, scope)
    if not inside:
        raise CheckpointError(
            f"The model has no submodule '{scope}' to load {path} into; pass the scope of "
            "the backbone inside the model's variables."
        )
    check_variables(flat, inside, source=str(path), allow_missing=allow_missing)
    merged = dict(flat_like)
    for key, target in inside.items():
        if key in flat:
            merged[_with_scope(key, scope)] = jnp.asarray(flat[key], dtype=target.dtype)
        elif isinstance(target, jax.ShapeDtypeStruct):
            raise CheckpointError(
                f"{path} lacks '{key}' and `like` holds only shapes; pass variables from "
                "`module.init` to keep a fresh initialisation for missing keys."
            )
    return unflatten_variables(merged)


# --- torch state dicts ----------------------------------------------------------------------

# The classifier each family's torch model carries after the map a backbone returns.
HEAD_PREFIXES: dict[str, tuple[str, ...]] = {
    "resnet": ("fc.",),
    "vgg": ("classifier.",),
    "densenet": ("classifier.",),
    "convnext": ("classifier.",),
    "vit": ("head.", "heads.", "fc_norm."),
    "small": (),
}

# (pattern, replacement) applied in order to each torch key before the generic rule.
_RENAMES: dict[str, tuple[tuple[str, str], ...]] = {
    "densenet": (
        (r"^features\.", ""),
        # torchvision's published files name `norm1` as `norm.1` (its loader maps them too).
        (r"(denselayer\d+\.(?:norm|relu|conv))\.([12])\.", r"\1\2."),
    ),
    "vit": (
        # torchvision's VisionTransformer → timm's names.
        (r"^class_token$", "cls_token"),
        (r"^conv_proj\.", "patch_embed.proj."),
        (r"^encoder\.pos_embedding$", "pos_embed"),
        (r"^encoder\.layers\.encoder_layer_(\d+)\.", r"blocks.\1."),
        (r"\.ln_1\.", ".norm1."),
        (r"\.ln_2\.", ".norm2."),
        (r"\.self_attention\.in_proj_(weight|bias)$", r".attn.qkv.\1"),
        (r"\.self_attention\.out_proj\.", ".attn.proj."),
        (r"\.mlp\.(?:0|linear_1)\.", ".mlp.fc1."),
        (r"\.mlp\.(?:3|linear_2)\.", ".mlp.fc2."),
        (r"^encoder\.ln\.", "norm."),
        # timm's patch embedding is a module of one conv; here it is the conv.
        (r"^patch_embed\.proj\.", "patch_embed_proj."),
    ),
}

_LEAVES = {
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
    "layer_scale": ("params", "layer_scale"),
    "cls_token": ("params", "cls_token"),
    "pos_embed": ("params", "pos_embed"),
}


def torch_to_flax_key(name: str, ndim: int) -> str | None:
    """Maps a torch `state_dict` key (after the family's renames) to a flat Flax variable key,
    or None to drop it.

    A numeric component joins the preceding one with '_' (`layer1.0.downsample.1` →
    `layer1_0/downsample_1`); the last component maps as: a 4-D or 2-D `weight` → `kernel`, a
    1-D `weight` (a norm layer's) → `scale`, `bias` → `bias`, `layer_scale`, `cls_token` and
    `pos_embed` unchanged, all under `params`; `running_mean` and `running_var` → `mean` and
    `var` under `batch_stats`; `num_batches_tracked` → dropped.

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
    if kind == "num_batches_tracked":
        return None
    if kind == "weight":
        collection, leaf = "params", "scale" if ndim == 1 else "kernel"
    elif kind in _LEAVES:
        collection, leaf = _LEAVES[kind]
    else:
        raise CheckpointError(
            f"Cannot map the torch key '{name}' to Flax (unknown kind '{kind}'); only "
            "convolutions, linear layers, norms, layer scales and ViT tokens and position "
            "embeddings are supported."
        )
    return _SEP.join([collection, *parts, leaf])


def _rename(name: str, family: str) -> str:
    for pattern, replacement in _RENAMES.get(family, ()):
        name = re.sub(pattern, replacement, name)
    return name


def torch_state_dict_to_variables(
    state_dict: Mapping[str, np.ndarray],
    *,
    family: str = "resnet",
    drop_prefixes: Iterable[str] | None = None,
) -> dict[str, Any]:
    """Converts a torchvision or timm `state_dict` (as NumPy arrays) to Flax variables.

    Conv weights go from torch's `[O, I, kH, kW]` to Flax's `[kH, kW, I, O]`, linear weights
    from `[O, I]` to `[I, O]`, ConvNeXt's layer scales from `[C, 1, 1]` to `[C]`; keys map by
    the family's renames (DenseNet's `features.` prefix, torchvision's ViT names onto timm's)
    and then `torch_to_flax_key`.

    Args:
      state_dict: torch key → array.
      family: `backbone_family(arch)`: resnet, vgg, densenet, convnext or vit.
      drop_prefixes: keys starting with any of these are left out; default: the family's
        classifier (`HEAD_PREFIXES`), which a backbone does not have.

    Returns:
      Nested dicts `{'params': ..., 'batch_stats': ...}` of NumPy arrays.
    """
    if family not in HEAD_PREFIXES:
        raise UsageError(
            f"Unknown backbone family '{family}'; use one of {', '.join(HEAD_PREFIXES)}."
        )
    drop = tuple(HEAD_PREFIXES[family] if drop_prefixes is None else drop_prefixes)
    flat = {}
    for name, value in state_dict.items():
        if name.startswith(drop):
            continue
        value = np.asarray(value)
        key = torch_to_flax_key(_rename(name, family), value.ndim)
        if key is None:
            continue
        if key.endswith("/kernel") and value.ndim == 4:
            value = value.transpose(2, 3, 1, 0)
        elif key.endswith("/kernel") and value.ndim == 2:
            value = value.T
        elif key.endswith("/layer_scale"):
            value = value.reshape(-1)
        flat[key] = np.ascontiguousarray(value)
    return unflatten_variables(flat)


def _unwrap(loaded: Any) -> Any:
    """A training checkpoint's state dict: `{'state_dict': ...}` or `{'model': ...}`."""
    for wrapper in ("state_dict", "model"):
        if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
            return loaded[wrapper]
    return loaded


def _read_safetensors(path: pathlib.Path) -> dict[str, np.ndarray]:
    import ml_dtypes  # noqa: F401 - registers bfloat16 with NumPy, for BF16 tensors
    import safetensors.numpy

    return safetensors.numpy.load_file(path)


def read_state_dict(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """Reads a torch state dict as NumPy arrays: `.safetensors` and `.npz` without PyTorch,
    anything else (`.pth`, `.pt`, `.bin`) with `torch.load(weights_only=True)`.

    A `{'state_dict': ...}` or `{'model': ...}` wrapper and DataParallel's `module.` prefix
    are removed; floating tensors come over as float32 (NumPy has no bfloat16, and the loader
    casts to the model's param_dtype anyway).

    Raises:
      CheckpointError: the file is missing or is not a state dict of tensors.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise CheckpointError(
            f"No torch checkpoint at {path}; pass an existing .safetensors, .npz or .pth file."
        )
    try:
        if path.suffix == ".safetensors":
            arrays = _read_safetensors(path)
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                arrays = {key: data[key] for key in data.files}
        else:
            arrays = _read_with_torch(path)
    except CheckpointError:
        raise
    except Exception as err:  # each reader raises its own kinds for a damaged file
        raise CheckpointError(
            f"Cannot read {path} as a torch state_dict ({type(err).__name__}); pass a file "
            "saved with torch.save(model.state_dict(), path) or safetensors."
        ) from err
    return {name.removeprefix("module."): _as_float32(value) for name, value in arrays.items()}


def _as_float32(value: np.ndarray) -> np.ndarray:
    floating = np.issubdtype(value.dtype, np.floating) or value.dtype.name == "bfloat16"
    return value.astype(np.float32) if floating else value


def _read_with_torch(path: pathlib.Path) -> dict[str, np.ndarray]:
    from protojax.nn.torch_reference import import_torch

    torch = import_torch()
    loaded = _unwrap(torch.load(path, map_location="cpu", weights_only=True))
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(
            f"{path} is not a state_dict of tensors; pass a file saved with "
            "torch.save(model.state_dict(), path)."
        )
    return {
        name: (t.detach().cpu().float() if t.is_floating_point() else t.cpu()).numpy()
        for name, t in loaded.items()
    }


# --- seeding a backbone -----------------------------------------------------------------------

BACKBONE = "backbone"
_CONFIG = "config.json"
_CHECKPOINTS = "checkpoints"  # protojax.train.workdir.CHECKPOINTS
_STATE = "state"  # the train state's item in each checkpoint (protojax.train.checkpoint)


def read_donor_backbone(workdir: str | pathlib.Path) -> dict[str, Any]:
    """The `backbone` subtrees `{collection: tree}` of a run's newest Orbax checkpoint.

    Reads only those arrays, as NumPy, from `WORKDIR/checkpoints/N/state` (the train state's
    `variables`), without building the run's method or data.

    Raises:
      CheckpointError: the run has no checkpoint or no backbone, or it cannot be read.
    """
    import orbax.checkpoint as ocp

    workdir = pathlib.Path(workdir)
    root = workdir / _CHECKPOINTS
    steps = sorted(
        (int(p.name) for p in root.iterdir() if p.name.isdigit() and (p / _STATE).is_dir())
        if root.is_dir()
        else ()
    )
    if not steps:
        raise CheckpointError(
            f"The run in {workdir} has no checkpoint yet; train it first (python -m "
            f"experiments.train --config=NAME --workdir={workdir})."
        )
    path = root / str(steps[-1]) / _STATE
    handler = ocp.PyTreeCheckpointHandler()
    try:
        metadata = handler.metadata(path)
        tree = getattr(metadata, "tree", metadata)
        variables = tree.get("variables", {}) if isinstance(tree, Mapping) else {}
        item = {
            collection: {BACKBONE: subtree[BACKBONE]}
            for collection, subtree in variables.items()
            if isinstance(subtree, Mapping) and BACKBONE in subtree
        }
        if not item:
            raise CheckpointError(
                f"The run in {workdir} has no '{BACKBONE}'; seed from a run whose model has a "
                "backbone (a black box, ProtoPNet)."
            )
        item = {"variables": item}
        target = jax.tree.map(lambda m: np.zeros(m.shape, m.dtype), item)
        args = jax.tree.map(lambda m: ocp.RestoreArgs(restore_type=np.ndarray), item)
        restored = handler.restore(
            path,
            args=ocp.args.PyTreeRestore(item=target, restore_args=args, partial_restore=True),
        )
    except CheckpointError:
        raise
    except Exception as err:  # Orbax raises many types for damaged files
        raise CheckpointError(
            f"Cannot read the backbone of checkpoint {path} ({type(err).__name__}); point "
            "model.backbone_weights at an intact run or a converted weight file."
        ) from err
    finally:
        handler.close()
    return {c: tree[BACKBONE] for c, tree in restored["variables"].items()}


def load_backbone(
    variables: Mapping[str, Any],
    source: str | pathlib.Path,
    *,
    arch: str,
    allow_random_init: bool = False,
) -> dict[str, Any]:
    """Seeds the `backbone` subtree of a method's variables with pretrained weights.

    The rest (add-ons, prototypes, heads) keeps its fresh initialisation.

    Args:
      variables: a method's freshly initialised variables, with a `backbone` submodule
        (arrays, or shapes from `jax.eval_shape`).
      source: an `.npz` of converted weights (experiments/convert_weights.py; its checksum
        file is verified), or the workdir of a trained run whose model has a `backbone` of the
        same architecture (for example a black box: `workdirs/blackbox_shapes`), whose newest
        checkpoint is read.
      arch: the backbone's name, for the messages.
      allow_random_init: when the source is missing, warn and keep the random backbone.

    Returns:
      The variables with the backbone's params and batch statistics replaced.

    Raises:
      CheckpointError: the source is missing (without `allow_random_init`), unreadable, or
        holds another architecture: one sentence naming the first differing key, with the
        missing and unexpected keys counted.
    """
    path = pathlib.Path(source)
    if (path / _CONFIG).is_file():
        donor = read_donor_backbone(path)
        flat = {
            _SEP.join([collection, key]): value
            for collection, tree in donor.items()
            for key, value in flatten_variables(tree).items()
        }
        flat_like = flatten_variables(variables)
        inside = _inside(flat_like, BACKBONE)
        differ = sorted(
            set(flat) ^ set(inside)
            | {k for k in set(flat) & set(inside) if flat[k].shape != tuple(inside[k].shape)}
        )
        if differ:
            raise CheckpointError(
                f"The backbone in {path} does not match model.backbone={arch} ('{differ[0]}' "
                f"and {len(differ) - 1} more keys differ); train the donor run with the same "
                "backbone and stem."
            )
        merged = dict(flat_like)
        for key, target in inside.items():
            merged[_with_scope(key, BACKBONE)] = jnp.asarray(flat[key], dtype=target.dtype)
        return unflatten_variables(merged)
    if path.is_file():
        return load_variables(path, like=variables, scope=BACKBONE)
    if allow_random_init:
        _LOG.warning("No backbone weights at %s; training from a random backbone.", path)
        return variables
    if path.suffix != ".npz":
        raise CheckpointError(
            f"No trained run at {path} (it has no config.json); train a run with a {arch} "
            f"backbone there first (python -m experiments.train --config=NAME --workdir={path}), "
            "point model.backbone_weights at converted weights (.npz), or set "
            "model.allow_random_init=True to train from scratch."
        )
    raise CheckpointError(
        f"No backbone weights at {path}; convert ImageNet weights with `python -m "
        f"experiments.convert_weights --arch={arch} --torch_checkpoint=PTH --out={path}` (or "
        "point model.backbone_weights at a trained black-box workdir), or set "
        "model.allow_random_init=True to train from scratch."
    )


def load_configured_backbone(
    variables: Mapping[str, Any], model: Mapping[str, Any], source: str | None = None
) -> Mapping[str, Any]:
    """`load_backbone` as a method's `config.model` names it: `source` (by default
    `model.backbone_weights`) into the `model.backbone` backbone, with
    `model.allow_random_init`; the variables unchanged when there is no source."""
    source = model["backbone_weights"] if source is None else source
    if not source:
        return variables
    return load_backbone(
        variables,
        source,
        arch=model["backbone"],
        allow_random_init=model.get("allow_random_init", False),
    )
