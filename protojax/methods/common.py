"""Small pieces every method uses: its loss's means and the classifier's score functions
(`class_logit`, `class_probability` and `pick` come from `protojax.explain.targets`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from protojax.explain.targets import class_logit, class_probability, pick
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


def accuracy_on_test(ctx, variables) -> float | None:
    """The run's test accuracy, or None when the data has no test split (the `after`
    operations report it before and after they change a model)."""
    return ctx.evaluate(variables, "test") if "test" in ctx.dataset.splits else None


class ClassTargets:
    """The score functions of every classifier, for a `Method` with `predict` and `embed`:
    `class_targets(variables)` gives `class_logit(images, classes [B])`,
    `class_probability(images, classes [B])` and `embedding(images) -> [B, d]`."""

    def class_targets(self, variables) -> dict[str, jax.tree_util.Partial]:
        partial = jax.tree_util.Partial
        return {
            "class_logit": partial(self._class_logit, variables),
            "class_probability": partial(self._class_probability, variables),
            "embedding": partial(self.embed, variables),
        }

    # The bound `predict` sits in the Partial's function, not its arguments: the explainers
    # pass targets through `jit`, where every argument must be an array.
    def _class_logit(self, variables, images, classes):
        return class_logit(self.predict, variables, images, classes)

    def _class_probability(self, variables, images, classes):
        return class_probability(self.predict, variables, images, classes)


__all__ = [
    "ClassTargets",
    "accuracy",
    "class_logit",
    "class_probability",
    "cross_entropy",
    "masked_mean",
    "pick",
    "accuracy_on_test",
]
