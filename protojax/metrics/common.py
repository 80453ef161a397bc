"""What every metric returns, and the input checks the metrics share."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


class MetricResult(NamedTuple):
    """A metric's value per example and over the batch.

    Attributes:
      per_example: `[B]` (or `[B, ...]` where a metric says so) values, one per example.
      aggregate: the batch-level value, usually a scalar (the mean of `per_example` over the
        examples where it is defined); a NamedTuple where a metric says so.
    """

    per_example: Any
    aggregate: Any


def as_partial(fn: Callable[..., Any]) -> jax.tree_util.Partial:
    """Wraps a callable as a `jax.tree_util.Partial` so that it can cross a `jax.jit` boundary.

    A `Partial` whose leaves are parameters is traced, not baked into the compiled code, so new
    parameters do not recompile.
    """
    if isinstance(fn, jax.tree_util.Partial):
        return fn
    if not callable(fn):
        raise TypeError(f"Expected a callable score or explain function, got {type(fn).__name__}.")
    return jax.tree_util.Partial(fn)


def check_maps(maps: Any, name: str, *, batch: int | None = None) -> jax.Array:
    """Returns `maps` as a `[B, H, W]` array; a trailing channel axis of size 1 is dropped.

    Raises:
      ValueError: if `maps` is not `[B, H, W]` or `[B, H, W, 1]`, or its batch size is not `batch`.
    """
    maps = jnp.asarray(maps)
    if maps.ndim == 4 and maps.shape[-1] == 1:
        maps = maps[..., 0]
    if maps.ndim != 3:
        raise ValueError(
            f"{name} must be [B, H, W] (or [B, H, W, 1]), got shape {tuple(maps.shape)}; "
            "reduce channels first with protojax.explain.reduce_channels."
        )
    if batch is not None and maps.shape[0] != batch:
        raise ValueError(
            f"{name} has batch size {maps.shape[0]} but the other inputs have {batch}; "
            "pass one map per example."
        )
    return maps


def check_same_grid(a: jax.Array, a_name: str, b: jax.Array, b_name: str) -> None:
    """Raises a ValueError unless the `[B, H, W]` arrays `a` and `b` have the same shape."""
    if a.shape != b.shape:
        raise ValueError(
            f"{a_name} {tuple(a.shape)} and {b_name} {tuple(b.shape)} must have the same "
            "[B, H, W] shape; resize one of them to the other's grid."
        )


def check_pixel_removal(
    images: Any, maps: Any, maps_name: str, fill: Any, targets: Any
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array | None]:
    """The checked inputs of a metric that changes the pixels of `images` in the order of
    `maps`: images `[B, H, W, C]`, maps `[B, H, W]` float32 on the images' grid (see
    `check_maps`), `fill` broadcast to the images' shape and dtype, and `targets` `[B]` (None
    stays None).

    Raises:
      ValueError: naming the input that does not fit.
    """
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be [B, H, W, C], got shape {tuple(images.shape)}.")
    maps = check_maps(maps, maps_name, batch=images.shape[0])
    check_same_grid(maps, maps_name, images[..., 0], "images")
    try:
        fill = jnp.broadcast_to(jnp.asarray(fill, images.dtype), images.shape)
    except ValueError:
        raise ValueError(
            f"fill of shape {jnp.shape(fill)} cannot broadcast to images {images.shape}; pass a "
            "scalar, a per-channel [C] value or a [B, H, W, C] array."
        ) from None
    if targets is not None:
        targets = jnp.asarray(targets)
        if targets.shape[:1] != images.shape[:1]:
            raise ValueError(
                f"targets must have one entry per image ({images.shape[0]}), "
                f"got shape {targets.shape}."
            )
    return images, maps.astype(jnp.float32), fill, targets


def descending_ranks(values: jax.Array) -> jax.Array:
    """Rank of each entry of `values [B, N]` in decreasing order, ties to the lower index.

    Returns:
      `[B, N]` int32: 0 for the largest value of each row. Equal values (including 0.0 and
      -0.0) are ranked by their index, the first one first, so the order is deterministic.
    """
    order = jnp.argsort(values, axis=-1, descending=True, stable=True)
    return jnp.argsort(order, axis=-1).astype(jnp.int32)
