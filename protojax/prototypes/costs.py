"""ProtoPNet's prototype costs (Chen et al. 2019; the official `train_and_test.py`), shared by
every part-prototype method: cluster and separation over the per-prototype minimum distances,
and the L1 penalty on last-layer weights to the wrong classes.

Rows of a batch are averaged over the valid rows only; inactive prototypes (pruned or
eliminated, `prototype_state/active`) are ignored.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def _masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    valid = valid.astype(values.dtype)
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def _class_masks(labels, prototype_class, active):
    """`[B, P]` bool masks of the active prototypes of each row's class and of the others."""
    own = labels[:, None] == prototype_class[None, :]
    on = jnp.ones_like(prototype_class, bool) if active is None else active.astype(bool)
    return own & on[None, :], ~own & on[None, :]


def _masked_min_mean(min_distances, mask, valid):
    masked = jnp.where(mask, min_distances, jnp.inf)
    # argmin and a gather send a row's whole gradient to its first minimum, as the official
    # torch.max(dim=1) does (train_and_test.py); jnp.min would split it between tied
    # prototypes (two pushed onto one patch), giving them equal updates.
    first = jnp.argmin(masked, axis=1)
    per_row = jnp.take_along_axis(masked, first[:, None], axis=1)[:, 0]
    has = jnp.any(mask, axis=1)
    rows = has if valid is None else has & valid
    return _masked_mean(jnp.where(has, per_row, 0.0), rows)


def cluster_cost(
    min_distances: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Mean over rows of the distance to the nearest active prototype of the row's class.

    Args:
      min_distances: `[B, P]` per-prototype minimum (over patches) squared distances.
      labels: `[B]` int classes.
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; inactive prototypes are ignored.
      valid: optional `[B]` bool; only valid rows are averaged. Rows whose class has no
        active prototype are left out as well.

    Returns:
      A float32 scalar.
    """
    own, _ = _class_masks(labels, prototype_class, active)
    return _masked_min_mean(min_distances.astype(jnp.float32), own, valid)


def separation_cost(min_distances, labels, prototype_class, active=None, *, valid=None):
    """Mean over rows of the distance to the nearest active prototype of another class.

    Positive; the total loss subtracts it (its coefficient is −0.08). Arguments as
    `cluster_cost`.
    """
    _, other = _class_masks(labels, prototype_class, active)
    return _masked_min_mean(min_distances.astype(jnp.float32), other, valid)


def average_separation(min_distances, labels, prototype_class, active=None, *, valid=None):
    """Mean over rows of the mean distance to the active prototypes of other classes (logged,
    not optimised). Arguments as `cluster_cost`."""
    _, other = _class_masks(labels, prototype_class, active)
    other = other.astype(jnp.float32)
    count = jnp.sum(other, axis=1)
    per_row = jnp.sum(min_distances.astype(jnp.float32) * other, axis=1) / jnp.maximum(count, 1)
    rows = count > 0 if valid is None else (count > 0) & valid
    return _masked_mean(per_row, rows)


def l1_wrong_class(
    last_layer_kernel: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
) -> jax.Array:
    """Sum of |w| over the last-layer weights joining a prototype to the other classes.

    Args:
      last_layer_kernel: `[P, K]`, as Flax stores the Dense kernel (torch's W transposed).
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; the rows of inactive prototypes are ignored.

    Returns:
      A float32 scalar.
    """
    p, k = last_layer_kernel.shape
    if prototype_class.shape != (p,):
        raise ValueError(
            f"last_layer_kernel is [P, K] = {last_layer_kernel.shape} but prototype_class has "
            f"shape {prototype_class.shape}; pass one class per prototype (row)."
        )
    wrong = prototype_class[:, None] != jnp.arange(k)[None, :]
    if active is not None:
        wrong = wrong & active.astype(bool)[:, None]
    return jnp.sum(jnp.abs(last_layer_kernel.astype(jnp.float32)) * wrong)
