"""The prototype layer that every prototype method shares: class-owned prototypes, the last
layer joining their similarities to the classes, and `prototype_state`.

P = K·M prototypes, M per class; prototype j belongs to class j // M. Where the ProtoPNet
and ProtoVAE files used to differ, the official code of both (`model.py` of ProtoPNet and of
ProtoVAE) decides:

- the last layer is a bias-free linear map `[P, K]` (`last_layer/kernel`), initialised to 1
  from a prototype to its own class and −0.5 to the others (`set_last_layer_incorrect_
  connection` in both repositories);
- it multiplies at `HIGHEST` precision: `torch.nn.Linear` computes in float32, which TF32 or
  bf16 defaults on accelerators would not;
- `prototype_state` (`prototype_class`, `active` and, for methods that push, the push
  bookkeeping) is a plain collection built outside Flax, like the official
  `prototype_class_identity` buffer: the module receives `active` as an argument, and `after`
  operations (push, pruning, elimination) edit the dict without Flax;
- a deactivated prototype leaves the logits, and `mask_updates` freezes its vector and its
  last-layer row (the official pruning deletes both).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.prototypes.projection import ProjectionState

HIGHEST = jax.lax.Precision.HIGHEST
STATE = "prototype_state"


def prototype_classes(num_classes: int, prototypes_per_class: int) -> jax.Array:
    """`[P]` int32: the class of each prototype, j // M."""
    return jnp.arange(num_classes * prototypes_per_class, dtype=jnp.int32) // prototypes_per_class


def initial_prototype_state(
    num_classes: int, prototypes_per_class: int, *, push: bool = False
) -> dict[str, jax.Array]:
    """`prototype_state`: `prototype_class [P]`, `active [P]` (all true) and, with `push`, the
    push bookkeeping: `source_index [P]` (-1 until pushed), `source_location [P, 2]` and
    `push_distance [P]` (-1 until pushed; checkpoints refuse non-finite values)."""
    p = num_classes * prototypes_per_class
    state = {
        "prototype_class": prototype_classes(num_classes, prototypes_per_class),
        "active": jnp.ones((p,), bool),
    }
    if push:
        state |= {
            "source_index": jnp.full((p,), -1, jnp.int32),
            "source_location": jnp.zeros((p, 2), jnp.int32),
            "push_distance": jnp.full((p,), -1.0, jnp.float32),
        }
    return state


def class_connections(prototypes_per_class: int, *, incorrect: float = -0.5):
    """Flax initialiser of the last layer `[P, K]`: 1 from a prototype to its class,
    `incorrect` elsewhere."""

    def init(key, shape, dtype=jnp.float32):
        del key
        num_prototypes, num_classes = shape
        owner = jnp.arange(num_prototypes) // prototypes_per_class
        own = owner[:, None] == jnp.arange(num_classes)[None, :]
        return jnp.where(own, 1.0, incorrect).astype(dtype)

    return init


class LastLayer(nn.Module):
    """Similarities `[B, P]` → logits `[B, K]`: the bias-free class connections, at HIGHEST
    precision, with inactive prototypes left out."""

    num_classes: int
    prototypes_per_class: int
    incorrect: float = -0.5

    @nn.compact
    def __call__(self, similarities: jax.Array, active: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel",
            class_connections(self.prototypes_per_class, incorrect=self.incorrect),
            (self.num_classes * self.prototypes_per_class, self.num_classes),
        )
        kept = jnp.where(active[None, :], similarities, 0.0)
        return jnp.dot(kept, kernel, precision=HIGHEST)


def model_collections(variables: dict[str, Any]) -> dict[str, Any]:
    """The collections a Flax module knows: everything but `prototype_state`."""
    return {k: v for k, v in variables.items() if k != STATE}


def mask_updates(updates: dict[str, Any], active: jax.Array) -> dict[str, Any]:
    """Optimizer updates with the `prototypes` rows and `last_layer/kernel` rows of inactive
    prototypes zeroed: their gradient is zero, but Adam's moments would keep moving them."""
    keep = active[:, None]
    last_layer = {**updates["last_layer"]}
    last_layer["kernel"] = jnp.where(keep, last_layer["kernel"], 0.0)
    return {
        **updates,
        "last_layer": last_layer,
        "prototypes": jnp.where(keep, updates["prototypes"], 0.0),
    }


def with_active(variables: dict[str, Any], active: jax.Array) -> dict[str, Any]:
    """`variables` whose `prototype_state/active` is replaced by `active [P]` (pruning and
    elimination deactivate prototypes this way; shapes never change)."""
    return {**variables, STATE: {**variables[STATE], "active": jnp.asarray(active, bool)}}


def grouped(variables: dict[str, Any], num_classes: int) -> tuple[jax.Array, jax.Array]:
    """Prototypes `[K, M, d]` and their `active` flags `[K, M]`, grouped by class."""
    prototypes = variables["params"]["prototypes"]
    return (
        prototypes.reshape(num_classes, -1, prototypes.shape[-1]),
        variables[STATE]["active"].reshape(num_classes, -1),
    )


@jax.jit
def apply_projection(variables: dict[str, Any], projection: ProjectionState) -> dict[str, Any]:
    """Variables whose active prototypes are replaced by their projected patches, with the
    push bookkeeping (`source_index`, `source_location`, `push_distance`) recorded; a
    prototype whose class has no training image keeps its vector."""
    state = variables[STATE]
    replace = state["active"] & jnp.isfinite(projection.distance)
    params = {**variables["params"]}
    params["prototypes"] = jnp.where(replace[:, None], projection.patch, params["prototypes"])
    state = {
        **state,
        "source_index": jnp.where(replace, projection.index, state["source_index"]),
        "source_location": jnp.where(
            replace[:, None], projection.location, state["source_location"]
        ),
        "push_distance": jnp.where(replace, projection.distance, state["push_distance"]),
    }
    return {**variables, "params": params, STATE: state}
