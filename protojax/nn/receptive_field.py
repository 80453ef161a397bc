"""Receptive fields of any feature extractor, computed from its gradients.

The receptive field of latent location (h, w) is the set of input pixels x whose change can
change z_hw: the support of ∂z_hw/∂x. It is found with one backward pass per latent location
(vectorised in chunks), so it needs no table of kernel sizes, strides and paddings and works
for any backbone, including residual and dense ones. Padding is handled for free: pixels
outside the image do not exist, so the boxes are the arithmetic receptive fields clipped to the
image, as ProtoPNet's `compute_rf_prototype` clips them.

ReLUs and max-pools make a gradient data-dependent: a pixel can have a zero gradient at one
input although it lies in the receptive field. The support is therefore the union over
`num_probes` random inputs and random weights on the latent channels; a pixel is missed only
if every path from it is dead for all of them.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Hashable

import jax
import jax.numpy as jnp
import numpy as np

_CACHE: dict[tuple[Hashable, tuple[int, ...]], np.ndarray] = {}


@functools.partial(jax.jit, static_argnames=("chunk_size",))
def _support(features_fn, probes, channel_weights, *, chunk_size):
    """`[h*w, H, W]` bool: pixels with a nonzero gradient for some probe and channel."""

    def one_probe(image):  # [1, H, W, C]
        latent, pullback = jax.vjp(features_fn, image)
        _, h, w, d = latent.shape

        def one_location(location):
            cotangent = (
                jnp.zeros((h * w, d), latent.dtype)
                .at[location]
                .set(channel_weights[location].astype(latent.dtype))
            )
            (grad,) = pullback(cotangent.reshape(1, h, w, d))
            return jnp.any(grad[0] != 0, axis=-1)  # [H, W]

        return jax.lax.map(one_location, jnp.arange(h * w), batch_size=chunk_size)

    return jnp.any(jax.vmap(one_probe)(probes), axis=0)


def _boxes(support: np.ndarray) -> np.ndarray:
    """`[n, H, W]` bool → `[n, 4]` (y0, x0, y1, x1) bounding boxes with exclusive ends."""
    n, height, width = support.shape
    rows, cols = support.any(axis=2), support.any(axis=1)
    empty = ~rows.any(axis=1)
    y0 = np.argmax(rows, axis=1)
    y1 = height - np.argmax(rows[:, ::-1], axis=1)
    x0 = np.argmax(cols, axis=1)
    x1 = width - np.argmax(cols[:, ::-1], axis=1)
    boxes = np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)
    # A location no pixel influences (a dead unit) is shown with the whole image.
    boxes[empty] = (0, 0, height, width)
    return boxes


def receptive_field_boxes(
    features_fn: Callable[[jax.Array], jax.Array],
    image_shape: tuple[int, int, int],
    *,
    cache_key: Hashable | None = None,
    num_probes: int = 2,
    chunk_size: int = 16,
    seed: int = 0,
) -> np.ndarray:
    """The receptive-field box of every latent location.

    Args:
      features_fn: `images [1, H, W, C] → latent [1, h, w, D]`, differentiable (for example
        a backbone applied in inference mode). A `jax.tree_util.Partial` is traced, so that
        its parameters are not compiled in as constants.
      image_shape: (H, W, C).
      cache_key: identifies the architecture (say, the backbone name and the layers on top);
        results are cached per (cache_key, image_shape). None: no caching.
      num_probes: random inputs whose supports are united.
      chunk_size: latent locations differentiated at once (memory grows with it).
      seed: seeds the random inputs and channel weights.

    Returns:
      `[h, w, 4]` int32 boxes (y0, x0, y1, x1), ends exclusive, in input pixels.
    """
    image_shape = tuple(int(s) for s in image_shape)
    if len(image_shape) != 3:
        raise ValueError(f"image_shape must be (H, W, C), got {image_shape}.")
    key = (cache_key, image_shape)
    if cache_key is not None and key in _CACHE:
        return _CACHE[key].copy()
    fn = features_fn
    if not isinstance(fn, jax.tree_util.Partial):
        fn = jax.tree_util.Partial(features_fn)
    latent = jax.eval_shape(fn, jax.ShapeDtypeStruct((1, *image_shape), jnp.float32))
    if latent.ndim != 4 or latent.shape[0] != 1:
        raise ValueError(
            f"features_fn must map [1, H, W, C] to [1, h, w, D], got {latent.shape}; return "
            "the latent map of the batch."
        )
    _, h, w, d = latent.shape
    rng = np.random.default_rng(seed)
    probes = rng.standard_normal((num_probes, 1, *image_shape)).astype(np.float32)
    channel_weights = rng.standard_normal((h * w, d)).astype(np.float32)
    support = np.asarray(_support(fn, probes, channel_weights, chunk_size=chunk_size))
    boxes = _boxes(support).reshape(h, w, 4)
    if cache_key is not None:
        _CACHE[key] = boxes
    return boxes.copy()
