"""Small pieces every method's loss uses."""

from __future__ import annotations

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


def class_probability(apply_logits, variables, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Score function: the softmax probability of class `targets [B]`; unlike logits that may
    all be negative (ProtoVAE's), it is positive, so sampled maps keep a sign one can read."""
    logits = apply_logits(variables, images).astype(jnp.float32)  # [B, K]
    probabilities = jax.nn.softmax(logits, axis=-1)
    return jnp.take_along_axis(probabilities, targets[:, None].astype(jnp.int32), axis=1)[:, 0]
