"""Small pieces every method's loss uses."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax


def masked_mean(values: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean of `values [B]` over the rows where `valid [B]` is true (0 if none are)."""
    valid = valid.astype(values.dtype)
    return jnp.sum(values * valid) / jnp.maximum(jnp.sum(valid), 1.0)


def cross_entropy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    """Mean softmax cross-entropy over valid rows; logits `[B, K]`, labels `[B]`."""
    losses = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)
    return masked_mean(losses, valid)


def accuracy(logits: jax.Array, labels: jax.Array, valid: jax.Array) -> jax.Array:
    return masked_mean((jnp.argmax(logits, -1) == labels).astype(jnp.float32), valid)


def class_logit(apply_logits, variables, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Score function: the logit of class `targets [B]` for `images [B, H, W, C]`."""
    logits = apply_logits(variables, images)  # [B, K]
    return jnp.take_along_axis(logits, targets[:, None].astype(jnp.int32), axis=1)[:, 0]
