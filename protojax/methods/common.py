"""Small pieces every method's loss uses."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import optax

from protojax.metrics.accuracy import accuracy as metrics_accuracy


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of `values [B]` over the rows where `valid [B]` is true (0 if none are)."""
    valid = valid.astype(values.dtype)
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over valid rows; logits `[B, K]`, labels `[B]`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return masked_mean(losses, valid)


def accuracy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """The training metric: `protojax.metrics.accuracy` over the valid rows of a batch."""
    return metrics_accuracy(logits, labels, valid=valid).aggregate


def class_logit(apply_logits, variables, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Score function: the logit of class `targets [B]` for `images [B, H, W, C]`."""
    logits = apply_logits(variables, images)  # [B, K]
    return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=1)[:, 0]


def load_backbone(variables, source: str, *, arch: str, allow_random_init: bool = False):
    """Seeds the `backbone` subtree of `variables` with pretrained weights.

    Args:
      variables: a method's freshly initialised variables, with a `backbone` submodule.
      source: an `.npz` of converted weights (experiments/convert_weights.py), or the workdir
        of a trained run whose model has a `backbone` of the same architecture (for example
        a black box: `workdirs/blackbox_shapes`).
      arch: the backbone's name, for the error message.
      allow_random_init: when the source is missing, warn and keep the random backbone.

    Returns:
      The variables with the backbone's params and batch statistics replaced.
    """
    import logging
    import pathlib

    from protojax.errors import CheckpointError

    path = pathlib.Path(source)
    if (path / "config.json").is_file():
        from protojax import config as config_lib
        from protojax.methods import build_method
        from protojax.train import workdir as wd
        from protojax.train.loop import restore_variables

        donor_config = config_lib.from_dict(json.loads((path / wd.CONFIG).read_text()))
        dataset = wd.read_dataset_info(path)
        method = build_method(donor_config, dataset)
        donor = restore_variables(method, donor_config, dataset, path)
        out = dict(variables)
        for collection, tree in variables.items():
            if not isinstance(tree, dict) or "backbone" not in tree:
                continue
            if "backbone" not in donor.get(collection, {}):
                raise CheckpointError(
                    f"The run in {path} has no '{collection}/backbone'; seed from a run whose "
                    "model has a backbone (a black box, ProtoPNet)."
                )
            expected = jax.tree.map(jnp.shape, tree["backbone"])
            found = jax.tree.map(jnp.shape, donor[collection]["backbone"])
            if expected != found:
                raise CheckpointError(
                    f"The backbone in {path} does not match model.backbone={arch}; train the "
                    "donor run with the same backbone and stem."
                )
            out[collection] = {**tree, "backbone": donor[collection]["backbone"]}
        return out
    if path.is_file():
        from protojax.nn.weights import load_variables

        return load_variables(path, like=variables, scope="backbone")
    if allow_random_init:
        logging.getLogger("protojax").warning(
            "No backbone weights at %s; training from a random backbone.", path
        )
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
