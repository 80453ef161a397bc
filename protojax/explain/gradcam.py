"""Grad-CAM (Selvaraju et al. 2017): gradient-weighted class activation maps."""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

from protojax.explain.common import as_pytree_callable, call_score, check_images, check_targets


def gradcam(
    features_fn: Callable[..., jax.Array],
    head_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
) -> jax.Array:
    """Grad-CAM maps, ReLU(Σ_k α_k A_k) upsampled to the image size.

    A = features_fn(images) is the feature map explained and α_k the spatial mean of
    ∂score/∂A_k, with score = head_fn(A). The `[B, h, w]` map is upsampled bilinearly with
    half-pixel centres (`jax.image.resize`, as OpenCV's and PyTorch's `align_corners=False`)
    and is not normalised.

    Args:
      features_fn: `features_fn(images [B, H, W, C]) -> A [B, h, w, K]`; ideally a
        `jax.tree_util.Partial` whose leaves are the parameters.
      head_fn: `head_fn(A) -> [B]`, or `head_fn(A, targets) -> [B]` when `targets` is given.
      images: `[B, H, W, C]`.
      targets: optional `[B]` class or prototype indices passed to `head_fn`.

    Returns:
      `[B, H, W]` non-negative maps.
    """
    features_fn = as_pytree_callable(features_fn, "features_fn")
    head_fn = as_pytree_callable(head_fn, "head_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    return _gradcam(features_fn, head_fn, images, targets)


@jax.jit
def _gradcam(features_fn, head_fn, images, targets):
    b, h, w, _ = images.shape
    features = features_fn(images)
    if features.ndim != 4 or features.shape[0] != b:
        raise ValueError(
            f"features_fn must return a [B, h, w, K] feature map with B = {b}; got shape "
            f"{features.shape}."
        )
    grads = jax.grad(lambda a: jnp.sum(call_score(head_fn, a, targets, name="head_fn")))(features)
    channel_weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # α [B, 1, 1, K]
    cam = jax.nn.relu(jnp.sum(channel_weights * features, axis=-1))  # [B, h, w]
    return jax.image.resize(cam, (b, h, w), method="linear")
