"""Score functions built from a model's outputs: each maps images `[B, H, W, C]` and one
target per image to `[B]`, the form every explainer differentiates or perturbs."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def pick(values: jax.Array, targets: jax.Array) -> jax.Array:
    """`values [B, N]` at column `targets [B]` of each row → `[B]`."""
    return jnp.take_along_axis(values, targets[:, None].astype(jnp.int32), axis=1)[:, 0]


def class_logit(apply_logits, variables, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Score function: the logit of class `targets [B]` for `images [B, H, W, C]`."""
    return pick(apply_logits(variables, images), targets)  # logits [B, K]


def class_probability(apply_logits, variables, images: jax.Array, targets: jax.Array) -> jax.Array:
    """Score function: the softmax probability of class `targets [B]`; unlike logits that may
    all be negative (ProtoVAE's), it is positive, so sampled maps keep a sign one can read."""
    logits = apply_logits(variables, images).astype(jnp.float32)  # [B, K]
    return pick(jax.nn.softmax(logits, axis=-1), targets)
