"""The prototype-removal effect: the accuracy drop when one prototype is switched off."""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics.common import as_partial


class RemovalEffect(NamedTuple):
    """The result of `prototype_removal`.

    Attributes:
      per_example: `[P]` the accuracy drop a − a_j when prototype j alone is switched off
        (NaN for an inactive prototype); positive: the prototype helped.
      aggregate: the mean drop over the active prototypes.
      accuracy: a, the accuracy with every active prototype on.
      accuracy_without: `[P]` a_j (NaN for an inactive prototype).
    """

    per_example: np.ndarray
    aggregate: float
    accuracy: float
    accuracy_without: np.ndarray


@jax.jit
def _accuracies(logits_fn, labels, active, switched):
    def accuracy(flags):
        logits = logits_fn(flags)
        return jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32))

    without = jax.lax.map(lambda j: accuracy(active & (jnp.arange(active.size) != j)), switched)
    return accuracy(active), without


def prototype_removal(logits_fn: Callable[[jax.Array], jax.Array], labels, active) -> RemovalEffect:
    """For each active prototype j, the accuracy with j switched off through `active`.

    The model is left as it is otherwise (no retraining): a_j is the accuracy of
    `logits_fn(active with j false)`, and the effect is a − a_j. A prototype the data never
    rely on has effect 0; a large effect marks a prototype the decisions hinge on. Costs one
    `logits_fn` call per active prototype.

    Args:
      logits_fn: `logits_fn(active [P] bool) -> [N, K]`, the logits of fixed images with
        those prototypes on (for a method, `method.predict` of the variables with that
        `prototype_state.active`); ideally a `jax.tree_util.Partial` over its arrays.
      labels: `[N]` int.
      active: `[P]` bool, the prototypes on in the trained model.

    Returns:
      `RemovalEffect(per_example [P] drop, aggregate mean drop, accuracy, accuracy_without)`.
    """
    active = np.asarray(active, bool)
    if active.ndim != 1:
        raise ValueError(f"active must be [P] bool, got shape {active.shape}.")
    switched = np.flatnonzero(active)
    base, without = _accuracies(
        as_partial(logits_fn), jnp.asarray(labels), jnp.asarray(active), jnp.asarray(switched)
    )
    accuracy_without = np.full(active.shape, np.nan)
    accuracy_without[switched] = np.asarray(without)
    drop = float(base) - accuracy_without
    aggregate = float(np.nanmean(drop)) if switched.size else float("nan")
    return RemovalEffect(drop, aggregate, float(base), accuracy_without)
