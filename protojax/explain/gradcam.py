"""Grad-CAM (Selvaraju et al. 2017): gradient-weighted class activation maps.

`gradcam` takes the model split in two (a feature map and a head); `layer_gradcam` takes any
score function built on Flax modules and the path of the layer to explain (such as `backbone`
or `encoder/BatchNorm_1`), reached through `flax.linen.intercept_methods`: the model needs no
`return_layers` or split of its own. `default_gradcam_layer` picks the backbone's final map.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.explain.common import as_pytree_callable, call_score, check_images, check_targets
from protojax.nn import ResNet, SmallCNN

# The protojax backbones, whose output is the standard Grad-CAM layer (the last conv map).
_BACKBONES = (ResNet, SmallCNN)


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
    return _cam(features, grads, (h, w))


def _cam(features: jax.Array, grads: jax.Array, size: tuple[int, int]) -> jax.Array:
    """ReLU(Σ_k α_k A_k) with α the spatial mean of the gradients, resized to `size`."""
    channel_weights = jnp.mean(grads, axis=(1, 2), keepdims=True)  # α [B, 1, 1, K]
    cam = jax.nn.relu(jnp.sum(channel_weights * features, axis=-1))  # [B, h, w]
    return jax.image.resize(cam, (features.shape[0], *size), method="linear")


class LayerOutput(NamedTuple):
    """A module call seen while scoring: its path (`a/b/c`), class name and output shape."""

    path: str
    module: str
    shape: tuple[int, ...]


def _path(module: nn.Module) -> str:
    return "/".join(module.path)


def layer_outputs(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
) -> list[LayerOutput]:
    """The `[B, h, w, K]` outputs of every Flax module called while scoring, in the order the
    calls return (inner modules before the modules holding them), computed abstractly.

    Args:
      score_fn: as in `layer_gradcam`.
      images: `[B, H, W, C]`.
      targets: optional `[B]` indices passed to `score_fn`.

    Returns:
      A `LayerOutput` per module call whose output is a 4-D array.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    seen: list[LayerOutput] = []

    def record(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name == "__call__" and getattr(out, "ndim", 0) == 4:
            name = type(context.module).__name__
            seen.append(LayerOutput(_path(context.module), name, tuple(out.shape)))
            if isinstance(context.module, _BACKBONES):
                seen[-1] = seen[-1]._replace(module=f"{name} (backbone)")
        return out

    def score(images, targets):
        with nn.intercept_methods(record):
            return call_score(score_fn, images, targets)

    jax.eval_shape(score, images, targets)
    return seen


def default_gradcam_layer(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
) -> str:
    """The layer Grad-CAM explains by default: the final map of the first protojax backbone
    (ResNet, small CNN) the score calls, as Grad-CAM uses the last convolutional layer; for a
    model without one (ProtoVAE's encoder), the last `[B, h, w, K]` module output with
    h·w > 1.

    Raises:
      ValueError: the score calls no Flax module with a spatial output.
    """
    outputs = layer_outputs(score_fn, images, targets=targets)
    for output in outputs:
        if output.module.endswith("(backbone)"):
            return output.path
    spatial = [o for o in outputs if o.shape[1] * o.shape[2] > 1]
    if not spatial:
        raise ValueError(
            "The score calls no Flax module with a [B, h, w, K] output (h·w > 1), so Grad-CAM "
            "has no layer to explain; use gradcam(features_fn, head_fn, ...) instead."
        )
    return spatial[-1].path


def layer_gradcam(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    layer: str,
    targets: jax.Array | None = None,
) -> jax.Array:
    """Grad-CAM at a named layer of any model built from Flax modules.

    A is the output of the module at path `layer` (as `layer_outputs` lists them, for example
    `backbone`), captured while `score_fn` runs; ∂score/∂A comes from running the score again
    with that output replaced by A. The map is then as in `gradcam`: ReLU(Σ_k α_k A_k), α_k the
    spatial mean of ∂score/∂A_k, upsampled bilinearly to the image size, not normalised. With
    the model split at that layer, it equals `gradcam(features_fn, head_fn, ...)`.

    Args:
      score_fn: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)` when
        `targets` is given, whose model is called through Flax's `apply`; ideally a
        `jax.tree_util.Partial` whose leaves are the parameters.
      images: `[B, H, W, C]`.
      layer: the module path, its names joined by `/`; the module must be called once per
        score and return a `[B, h, w, K]` map.
      targets: optional `[B]` class or prototype indices passed to `score_fn`.

    Returns:
      `[B, H, W]` non-negative maps.
    """
    score_fn = as_pytree_callable(score_fn, "score_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    if not isinstance(layer, str) or not layer:
        raise ValueError(f"layer must be a module path such as 'backbone'; got {layer!r}.")
    return _layer_gradcam(score_fn, images, targets, layer=layer)


def _score_at_layer(score_fn, images, targets, layer: str, replacement: Any):
    """(Σ scores, the layer's output) with that output replaced by `replacement` (if given)."""
    captured = []

    def intercept(next_fun, args, kwargs, context):
        out = next_fun(*args, **kwargs)
        if context.method_name != "__call__" or _path(context.module) != layer:
            return out
        captured.append(out)
        return out if replacement is None else replacement

    with nn.intercept_methods(intercept):
        scores = call_score(score_fn, images, targets)
    if len(captured) != 1:
        paths = [o.path for o in layer_outputs(score_fn, images, targets=targets)]
        if captured:
            raise ValueError(
                f"layer {layer!r} is called {len(captured)} times per score; Grad-CAM needs a "
                "layer called once."
            )
        raise ValueError(
            f"layer {layer!r} is not a module the score calls; layers with [B, h, w, K] "
            f"outputs: {', '.join(paths) or 'none'}."
        )
    features = captured[0]
    if getattr(features, "ndim", 0) != 4 or features.shape[0] != images.shape[0]:
        shape = getattr(features, "shape", type(features).__name__)
        raise ValueError(
            f"layer {layer!r} returns {shape}, not a [B, h, w, K] map with B = "
            f"{images.shape[0]}; pick another layer (see layer_outputs)."
        )
    return jnp.sum(scores), features


@partial(jax.jit, static_argnames=("layer",))
def _layer_gradcam(score_fn, images, targets, *, layer):
    _, features = _score_at_layer(score_fn, images, targets, layer, None)
    grads = jax.grad(lambda a: _score_at_layer(score_fn, images, targets, layer, a)[0])(features)
    return _cam(features, grads, images.shape[1:3])
