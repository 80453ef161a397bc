"""Projection ("push") of prototypes onto training patches, and nearest-patch search.

The reductions run one batch at a time and carry a running result, so that a pass over a
dataset needs memory proportional to one batch, not to the dataset: jit them, feed the
batches of an ordered pass (sharded along the batch axis if you like), and keep the carry on
device. Ties go to the earliest example, then to the first location in row-major order, as
a sequential NumPy loop would find them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.distances import squared_l2_distances


class ProjectionState(NamedTuple):
    """The nearest latent patch seen so far, per prototype.

    Attributes:
      distance: `[P]` float32 distance to it; +inf while none has been seen.
      index: `[P]` int32 example index (the batch's `index` field) of its image; -1 if none.
      location: `[P, 2]` int32 (h, w) of the patch in that image's latent grid.
      patch: `[P, D]` float32 latent vector at that location (zeros while none is seen).
    """

    distance: jax.Array
    index: jax.Array
    location: jax.Array
    patch: jax.Array


def projection_init(num_prototypes: int, dim: int) -> ProjectionState:
    """The empty running state for `num_prototypes` prototypes of dimension `dim`."""
    return ProjectionState(
        distance=jnp.full((num_prototypes,), jnp.inf, jnp.float32),
        index=jnp.full((num_prototypes,), -1, jnp.int32),
        location=jnp.zeros((num_prototypes, 2), jnp.int32),
        patch=jnp.zeros((num_prototypes, dim), jnp.float32),
    )


def projection_update(
    state: ProjectionState,
    features: jax.Array,
    distance_map: jax.Array,
    *,
    labels: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
    prototype_class: jax.Array | None = None,
) -> ProjectionState:
    """Folds one batch into the running nearest patch of every prototype.

    Args:
      state: the running result (`projection_init` for the first batch).
      features: `[B, H, W, D]` latent maps of the batch.
      distance_map: `[B, H, W, P]` distances between every latent patch and every prototype.
      labels: `[B]` int class of each image.
      indices: `[B]` int example index of each image, reported as `ProjectionState.index`.
      valid: `[B]` bool; padding rows (false) are never selected.
      prototype_class: `[P]` int class of each prototype: a prototype only considers images
        of its own class (ProtoPNet's class-specific push). None: every image.

    Returns:
      The updated state. A prototype's entry changes only where this batch holds a strictly
      nearer patch, so the earliest of equally near patches is kept.
    """
    b, h, w, d = features.shape
    if distance_map.shape[:3] != (b, h, w):
        raise ValueError(
            f"distance_map [B, H, W, P] must match features [B, H, W, D] = {features.shape} in "
            f"its first three axes, got {distance_map.shape}; compute it from these features."
        )
    p = distance_map.shape[-1]
    if state.distance.shape != (p,) or state.patch.shape != (p, d):
        raise ValueError(
            f"The running state holds {state.distance.shape[0]} prototypes of dimension "
            f"{state.patch.shape[1]} but the batch has P={p}, D={d}; start it with "
            "projection_init(P, D)."
        )
    eligible = jnp.broadcast_to(valid[:, None], (b, p))
    if prototype_class is not None:
        eligible = eligible & (labels[:, None] == prototype_class[None, :])
    masked = jnp.where(eligible[:, None, None, :], distance_map.astype(jnp.float32), jnp.inf)
    flat = masked.reshape(b * h * w, p)
    arg = jnp.argmin(flat, axis=0)  # [P], the first minimum in (b, h, w) order
    best = jnp.take_along_axis(flat, arg[None, :], axis=0)[0]
    row, cell = arg // (h * w), arg % (h * w)
    patch = features.reshape(b * h * w, d)[arg].astype(jnp.float32)
    better = best < state.distance
    return ProjectionState(
        distance=jnp.where(better, best, state.distance),
        index=jnp.where(better, indices[row].astype(jnp.int32), state.index),
        location=jnp.where(
            better[:, None],
            jnp.stack([cell // w, cell % w], axis=-1).astype(jnp.int32),
            state.location,
        ),
        patch=jnp.where(better[:, None], patch, state.patch),
    )


class NearestState(NamedTuple):
    """The k nearest images per prototype seen so far, nearest first.

    Attributes:
      distance: `[P, k]` float32 distance of each image's nearest patch; +inf for empty slots.
      label: `[P, k]` int32 class of each image; -1 for empty slots.
      index: `[P, k]` int32 example index of each image; -1 for empty slots.
    """

    distance: jax.Array
    label: jax.Array
    index: jax.Array


def nearest_init(num_prototypes: int, k: int) -> NearestState:
    """The empty running state of the k nearest images of `num_prototypes` prototypes."""
    return NearestState(
        distance=jnp.full((num_prototypes, k), jnp.inf, jnp.float32),
        label=jnp.full((num_prototypes, k), -1, jnp.int32),
        index=jnp.full((num_prototypes, k), -1, jnp.int32),
    )


def nearest_update(
    state: NearestState,
    min_distances: jax.Array,
    *,
    labels: jax.Array,
    indices: jax.Array,
    valid: jax.Array,
) -> NearestState:
    """Folds one batch into the running k nearest images of every prototype.

    Each image counts once per prototype, through its nearest patch (ProtoPNet's
    `find_k_nearest_patches_to_prototypes`, used by pruning).

    Args:
      state: the running result (`nearest_init` for the first batch).
      min_distances: `[B, P]` distance from each prototype to each image's nearest patch.
      labels: `[B]` int class of each image.
      indices: `[B]` int example index of each image.
      valid: `[B]` bool; padding rows (false) are never selected.

    Returns:
      The updated state, sorted by distance; among equal distances earlier images come first.
    """
    b, p = min_distances.shape
    if state.distance.shape[0] != p:
        raise ValueError(
            f"The running state holds {state.distance.shape[0]} prototypes but min_distances "
            f"has P={p}; start it with nearest_init(P, k)."
        )
    k = state.distance.shape[1]
    batch = jnp.where(valid[:, None], min_distances.astype(jnp.float32), jnp.inf).T  # [P, B]
    distance = jnp.concatenate([state.distance, batch], axis=1)
    label = jnp.concatenate([state.label, jnp.broadcast_to(labels.astype(jnp.int32), (p, b))], 1)
    index = jnp.concatenate([state.index, jnp.broadcast_to(indices.astype(jnp.int32), (p, b))], 1)
    # top_k puts the lower position first among equal values: the state, then batch order.
    _, order = jax.lax.top_k(-distance, k)
    pick = lambda a: jnp.take_along_axis(a, order, axis=1)
    return NearestState(pick(distance), pick(label), pick(index))


@jax.jit
def _projection_step(state, latent, prototypes, prototype_class, batch) -> ProjectionState:
    return projection_update(
        state,
        latent,
        squared_l2_distances(latent, prototypes),
        labels=batch["label"],
        indices=batch["index"],
        valid=batch["valid"],
        prototype_class=prototype_class,
    )


def project(
    latent_map: Callable[[jax.Array], jax.Array],
    prototypes: jax.Array,
    prototype_class: jax.Array,
    reduce: Callable,
) -> ProjectionState:
    """The nearest latent patch of its class for every prototype, over an ordered pass.

    Args:
      latent_map: images `[B, H, W, C]` → latent maps `[B, h, w, D]`, jitted. It runs as its
        own program, so that the same callable recomputes the exact patch a prototype got.
      prototypes: `[P, D]`.
      prototype_class: `[P]` int.
      reduce: `(fn, init) -> carry`, a fold over the batches of the pass (a run's
        `ctx.reduce` bound to the training split).
    """

    def step(state, batch):
        return _projection_step(
            state, latent_map(batch["image"]), prototypes, prototype_class, batch
        )

    return reduce(step, projection_init(*prototypes.shape))


@jax.jit
def _nearest_step(min_distances_fn, state: NearestState, batch) -> NearestState:
    return nearest_update(
        state,
        min_distances_fn(batch["image"]),
        labels=batch["label"],
        indices=batch["index"],
        valid=batch["valid"],
    )


def nearest_images(
    min_distances_fn: jax.tree_util.Partial, num_prototypes: int, reduce: Callable, *, k: int
) -> NearestState:
    """The `k` nearest images of every prototype (ProtoPNet's `prune.py`), over an ordered
    pass.

    Args:
      min_distances_fn: images `[B, H, W, C]` → `[B, P]` each prototype's distance to the
        image's nearest patch, a `jax.tree_util.Partial` (it is traced inside the step).
      num_prototypes: P.
      reduce: `(fn, init) -> carry`, a fold over the batches of the pass.
      k: images per prototype.
    """
    step = lambda state, batch: _nearest_step(min_distances_fn, state, batch)
    return reduce(step, nearest_init(num_prototypes, k))


def push_statistics(projection: ProjectionState) -> dict[str, int | float | None]:
    """`prototypes_pushed` (those whose class has a training image) and their
    `mean_push_distance` (None when none was pushed)."""
    distances = np.asarray(projection.distance)
    found = np.isfinite(distances)  # false for classes without a training image
    return {
        "prototypes_pushed": int(found.sum()),
        "mean_push_distance": float(distances[found].mean()) if found.any() else None,
    }


def prune_mask(
    nearest_labels: np.ndarray, prototype_class: np.ndarray, active: np.ndarray, *, threshold: int
) -> np.ndarray:
    """ProtoPNet's pruning rule (`prune.py`): the active prototypes with fewer than `threshold`
    of their nearest training images (`nearest_labels [P, k]`, from `nearest_images`) in their
    own class (`prototype_class [P]`); `[P]` bool."""
    own = np.sum(np.asarray(nearest_labels) == np.asarray(prototype_class)[:, None], axis=1)
    return np.asarray(active) & (own < threshold)
