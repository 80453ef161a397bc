r"""Converts a torchvision ResNet checkpoint into a protojax `.npz` weight file.

    python -m experiments.convert_weights --arch=resnet34 \
        --torch_checkpoint=resnet34-b627a593.pth --out=weights/resnet34_imagenet.npz

The checkpoint is a torchvision `state_dict` (a `{'state_dict': ...}` wrapper and a
DataParallel `module.` prefix are accepted). Conv weights go from OIHW to HWIO, BN running
statistics to `batch_stats`, and the `fc` classifier is dropped; the result is checked key by
key and shape by shape against `backbone_by_name(arch, stem=stem)` before it is written. The
file format and the key map are described in `protojax/nn/weights.py`; load the file with
`protojax.nn.weights.load_variables`.

With `--random_init` (and no checkpoint) the launcher builds the reference torch ResNet of
`protojax/nn/torch_reference.py` from `--seed`, with randomised BN statistics, for parity
tests and benchmarks; `torch_resnet(arch, stem=stem, seed=seed, randomize_batch_norm=True)`
rebuilds the same torch model. PyTorch is needed (`pip install -e '.[torch]'`); it takes a
few seconds.
"""

from __future__ import annotations

import pathlib
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from protojax.errors import CheckpointError, ProtojaxError, UsageError
from protojax.nn import backbone_by_name
from protojax.nn.resnet import RESNET_ARCHS, STEMS
from protojax.nn.torch_reference import import_torch, torch_resnet
from protojax.nn.weights import (
    check_variables,
    flatten_variables,
    save_variables,
    torch_state_dict_to_variables,
)


class Conversion(NamedTuple):
    """What `convert` wrote: the file, its numbers of arrays and of parameters, and the number
    of tensors in the torch state_dict."""

    path: pathlib.Path
    num_arrays: int
    num_params: int
    num_torch_tensors: int


def _read_state_dict(path: pathlib.Path) -> dict[str, np.ndarray]:
    torch = import_torch()
    if not path.is_file():
        raise CheckpointError(f"No torch checkpoint at {path}; pass an existing .pth file.")
    try:
        loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises many kinds (pickle, zip, runtime) for bad files
        raise CheckpointError(
            f"Cannot read {path} as a torch state_dict ({type(err).__name__}); pass a file "
            "saved with torch.save(model.state_dict(), path)."
        ) from err
    if isinstance(loaded, dict) and isinstance(loaded.get("state_dict"), dict):
        loaded = loaded["state_dict"]
    if not isinstance(loaded, dict) or not all(torch.is_tensor(v) for v in loaded.values()):
        raise CheckpointError(
            f"{path} is not a state_dict of tensors; pass a file saved with "
            "torch.save(model.state_dict(), path)."
        )
    # NumPy has no bfloat16: floating tensors come over as float32 (the loader casts them to
    # the model's param_dtype anyway).
    return {
        name.removeprefix("module."): (
            tensor.detach().cpu().float() if tensor.is_floating_point() else tensor.cpu()
        ).numpy()
        for name, tensor in loaded.items()
    }


def convert(
    *,
    arch: str,
    out: str | pathlib.Path,
    torch_checkpoint: str | pathlib.Path | None = None,
    stem: str = "imagenet",
    random_init: bool = False,
    seed: int = 0,
) -> Conversion:
    """Converts a torchvision ResNet state_dict (or a random reference one) to an `.npz`.

    Args:
      arch: `resnet18` … `resnet152`.
      out: the `.npz` file to write.
      torch_checkpoint: the `.pth` state_dict to convert; exclusive with `random_init`.
      stem: `imagenet` or `cifar`, the stem of the model the weights are for.
      random_init: convert `torch_resnet(arch, stem=stem, seed=seed,
        randomize_batch_norm=True)` instead of a checkpoint.
      seed: the torch seed of `random_init`.

    Returns:
      A `Conversion` describing the file written.
    """
    if arch not in RESNET_ARCHS:
        raise UsageError(f"Unknown --arch '{arch}'; use one of {', '.join(RESNET_ARCHS)}.")
    if random_init == (torch_checkpoint is not None):
        raise UsageError("Pass exactly one of --torch_checkpoint=PATH.pth and --random_init.")
    if random_init:
        model = torch_resnet(arch, stem=stem, seed=seed, randomize_batch_norm=True)
        state_dict = {k: v.detach().numpy() for k, v in model.state_dict().items()}
        source = f"the random {arch} reference"
    else:
        state_dict = _read_state_dict(pathlib.Path(torch_checkpoint))
        source = str(torch_checkpoint)
    variables = torch_state_dict_to_variables(state_dict)
    flat = flatten_variables(variables)
    module = backbone_by_name(arch, stem=stem)
    like = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    check_variables(flat, flatten_variables(like), source=source)
    out = pathlib.Path(out)
    save_variables(out, variables)
    num_params = sum(v.size for k, v in flat.items() if k.startswith("params/"))
    return Conversion(out, len(flat), num_params, len(state_dict))


def _define_flags() -> dict[str, flags.FlagHolder]:
    """Defines the flags when run as a script, so that importing `convert` defines none."""
    return {
        "arch": flags.DEFINE_enum("arch", None, list(RESNET_ARCHS), "The ResNet to convert."),
        "torch_checkpoint": flags.DEFINE_string(
            "torch_checkpoint", None, "A torchvision state_dict (.pth) to convert."
        ),
        "out": flags.DEFINE_string("out", None, "The .npz file to write."),
        "stem": flags.DEFINE_enum("stem", "imagenet", list(STEMS), "The stem of the model."),
        "random_init": flags.DEFINE_bool(
            "random_init", False, "Convert a freshly initialised reference torch ResNet instead."
        ),
        "seed": flags.DEFINE_integer("seed", 0, "The torch seed of --random_init."),
    }


def main(argv: list[str], holders: dict[str, flags.FlagHolder]) -> None:
    del argv
    options = {name: holder.value for name, holder in holders.items()}
    try:
        result = convert(**options)
    except ProtojaxError as err:
        print(err, file=sys.stderr)
        sys.exit(err.exit_code)
    print(
        f"Wrote {result.num_arrays} arrays ({result.num_params:,} parameters) of "
        f"{options['arch']} ({options['stem']} stem) to {result.path}, from "
        f"{result.num_torch_tensors} torch tensors (the fc classifier and the "
        "num_batches_tracked counters are dropped)."
    )


if __name__ == "__main__":
    _holders = _define_flags()
    flags.mark_flags_as_required(["arch", "out"])
    app.run(lambda argv: main(argv, _holders))
