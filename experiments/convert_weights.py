r"""Converts a torchvision or timm checkpoint into a protojax `.npz` weight file.

    python -m experiments.convert_weights --arch=resnet34 \
        --torch_checkpoint=resnet34-b627a593.pth --out=weights/resnet34_imagenet.npz
    python -m experiments.convert_weights --arch=vit_small_patch16_224 \
        --torch_checkpoint=model.safetensors --out=weights/vit_small_patch16_224.npz

The checkpoint is a torchvision or timm `state_dict`: `.safetensors` and `.npz` are read
without PyTorch, `.pth`/`.pt`/`.bin` with the `torch` extra (`pip install -e '.[torch]'`). A
`{'state_dict': ...}` or `{'model': ...}` wrapper and a DataParallel `module.` prefix are
accepted. Conv weights go from OIHW to HWIO, BN running statistics to `batch_stats`, the
family's classifier (`fc`, `classifier`, `head`, `heads`) is dropped, and torchvision's ViT
names map onto timm's. The result is checked key by key and shape by shape against
`backbone_by_name(arch, stem=stem)` before it is written, with its SHA-256 checksum in
`OUT.sha256` beside it, which loading verifies. The file format and the key maps are described
in `protojax/nn/weights.py`; load the file with `config.model.backbone_weights=OUT`.

With `--random_init` (and no checkpoint) the launcher converts the real torchvision or timm
model freshly initialised from `--seed` (`protojax/nn/torch_reference.py`; a ResNet with
randomised BN statistics, as `torch_resnet(arch, stem=stem, seed=seed,
randomize_batch_norm=True)` rebuilds it), for parity checks and benchmarks. It needs PyTorch,
torchvision and, for timm's ViTs, timm.
"""

from __future__ import annotations

import pathlib
import sys
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from protojax.errors import ProtojaxError, UsageError
from protojax.nn import backbone_by_name, backbone_family, backbone_names
from protojax.nn.resnet import RESNET_ARCHS, STEMS
from protojax.nn.weights import (
    check_variables,
    flatten_variables,
    read_state_dict,
    save_variables,
    torch_state_dict_to_variables,
)

ARCHS = [name for name in backbone_names() if backbone_family(name) != "small"]


class Conversion(NamedTuple):
    """What `convert` wrote: the file, its numbers of arrays and of parameters, the number of
    tensors in the torch state_dict, and the file's SHA-256."""

    path: pathlib.Path
    num_arrays: int
    num_params: int
    num_torch_tensors: int
    sha256: str


def _random_state_dict(arch: str, stem: str, seed: int) -> dict[str, np.ndarray]:
    from protojax.nn.torch_reference import import_torch, torch_backbone, torch_resnet

    if arch in RESNET_ARCHS:
        model = torch_resnet(arch, stem=stem, seed=seed, randomize_batch_norm=True)
    else:
        torch = import_torch()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = torch_backbone(arch)
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def convert(
    *,
    arch: str,
    out: str | pathlib.Path,
    torch_checkpoint: str | pathlib.Path | None = None,
    stem: str = "imagenet",
    random_init: bool = False,
    seed: int = 0,
) -> Conversion:
    """Converts a torchvision or timm state_dict (or a random real one) to an `.npz`.

    Args:
      arch: a backbone name (`ARCHS`).
      out: the `.npz` file to write; `OUT.sha256` is written beside it.
      torch_checkpoint: the state_dict to convert (`.safetensors`, `.npz`, `.pth`); exclusive
        with `random_init`.
      stem: `imagenet` or `cifar`, the stem of the model the weights are for (ResNets only).
      random_init: convert the real torch model freshly initialised from `seed` instead.
      seed: the torch seed of `random_init`.

    Returns:
      A `Conversion` describing the file written.

    Raises:
      UsageError: an unknown arch or stem, or not exactly one source.
      CheckpointError: the checkpoint is unreadable or does not match `arch` (nothing is
        written).
    """
    if arch not in ARCHS:
        raise UsageError(f"Unknown --arch '{arch}'; use one of {', '.join(ARCHS)}.")
    if stem not in STEMS:
        raise UsageError(f"Unknown --stem '{stem}'; use one of {', '.join(STEMS)}.")
    if random_init == (torch_checkpoint is not None):
        raise UsageError("Pass exactly one of --torch_checkpoint=PATH and --random_init.")
    if random_init:
        state_dict = _random_state_dict(arch, stem, seed)
        source = f"the random {arch} reference"
    else:
        state_dict = read_state_dict(torch_checkpoint)
        source = str(torch_checkpoint)
    variables = torch_state_dict_to_variables(state_dict, family=backbone_family(arch))
    flat = flatten_variables(variables)
    module = backbone_by_name(arch, stem=stem)
    like = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    check_variables(flat, flatten_variables(like), source=source)
    out = pathlib.Path(out)
    digest = save_variables(out, variables)
    num_params = sum(v.size for k, v in flat.items() if k.startswith("params/"))
    return Conversion(out, len(flat), num_params, len(state_dict), digest)


def _define_flags() -> dict[str, flags.FlagHolder]:
    """Defines the flags when run as a script, so that importing `convert` defines none."""
    return {
        "arch": flags.DEFINE_enum("arch", None, ARCHS, "The backbone to convert."),
        "torch_checkpoint": flags.DEFINE_string(
            "torch_checkpoint",
            None,
            "A torchvision or timm state_dict to convert (.safetensors, .npz, or .pth with torch).",
        ),
        "out": flags.DEFINE_string("out", None, "The .npz file to write."),
        "stem": flags.DEFINE_enum(
            "stem", "imagenet", list(STEMS), "The stem of the model (ResNets)."
        ),
        "random_init": flags.DEFINE_bool(
            "random_init", False, "Convert the freshly initialised real torch model instead."
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
    stem = f" ({options['stem']} stem)" if options["arch"] in RESNET_ARCHS else ""
    print(
        f"Wrote {result.num_arrays} arrays ({result.num_params:,} parameters) of "
        f"{options['arch']}{stem} to {result.path} (sha256 {result.sha256}), from "
        f"{result.num_torch_tensors} torch tensors (the classifier and the "
        "num_batches_tracked counters are dropped)."
    )


if __name__ == "__main__":
    _holders = _define_flags()
    flags.mark_flags_as_required(["arch", "out"])
    app.run(lambda argv: main(argv, _holders))
