"""Channel explanations, as InfoDisent gives them: the channels that contribute most to a class,
each read through its strongest positive and strongest negative location, and shown by the
training patches that activate it most.

Functions of arrays, for notebooks as for the methods and launchers: a model supplies its
channel values v `[B, D]` with their argmax and argmin locations (`prototypes.channels.mx_pool`
with `return_locations`), its non-negative head W `[D, K]`, and the receptive-field box of each
feature-map location (`nn.receptive_field.receptive_field_boxes`); nothing here knows a method.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.figures import pyplot, show
from protojax.imaging import crop, to_rgb


class TopChannels(NamedTuple):
    """The channels with the largest contributions W_ck·v_k to class c, largest first.

    Attributes:
      channels: `[B, k]` int32 channel indices.
      contributions: `[B, k]` W_ck·v_k.
      values: `[B, k]` v_k.
      weights: `[B, k]` W_ck.
      positive_locations: `[B, k, 2]` the (h, w) of each channel's maximum.
      negative_locations: `[B, k, 2]` the (h, w) of each channel's minimum.
    """

    channels: np.ndarray
    contributions: np.ndarray
    values: np.ndarray
    weights: np.ndarray
    positive_locations: np.ndarray
    negative_locations: np.ndarray


def top_channels(
    values: np.ndarray,
    positive_locations: np.ndarray,
    negative_locations: np.ndarray,
    weights: np.ndarray,
    classes: np.ndarray,
    *,
    k: int,
) -> TopChannels:
    """The `k` channels with the largest contribution W[d, c]·v_d to each image's class c.

    Args:
      values: `[B, D]` channel values v.
      positive_locations, negative_locations: `[B, D, 2]` (h, w) of each channel's maximum and
        minimum.
      weights: `[D, K]` the linear head (InfoDisent's is non-negative).
      classes: `[B]` the class explained (the predicted one, say).
      k: channels per image; ties keep the lower channel index first.

    Returns:
      `TopChannels`, each field `[B, k, ...]`.
    """
    values = np.asarray(values, np.float32)
    weights = np.asarray(weights, np.float32)
    if values.ndim != 2 or weights.ndim != 2 or weights.shape[0] != values.shape[1]:
        raise ValueError(
            f"values must be [B, D] and weights [D, K], got {values.shape} and {weights.shape}."
        )
    if not 1 <= k <= values.shape[1]:
        raise ValueError(f"k must be in [1, {values.shape[1]}] (the channels), got {k}.")
    class_weights = weights[:, np.asarray(classes)].T  # [B, D]
    contributions = values * class_weights
    order = np.argsort(-contributions, axis=1, kind="stable")[:, :k]

    def take(x):
        x = np.asarray(x)
        index = order.reshape(order.shape + (1,) * (x.ndim - 2))
        return np.take_along_axis(x, index, axis=1)

    return TopChannels(
        order.astype(np.int32),
        take(contributions),
        take(values),
        take(class_weights),
        take(positive_locations).astype(np.int32),
        take(negative_locations).astype(np.int32),
    )


class ChannelExtremes(NamedTuple):
    """Each channel's strongest positive and negative response on each image.

    Attributes:
      positive: `[B, S]` max over (h, w) of ReLU(z).
      negative: `[B, S]` max over (h, w) of ReLU(−z).
      positive_locations: `[B, S, 2]` (h, w) of the maximum of z.
      negative_locations: `[B, S, 2]` (h, w) of the minimum of z.
    """

    positive: jax.Array
    negative: jax.Array
    positive_locations: jax.Array
    negative_locations: jax.Array


def channel_extremes(channel_maps: jax.Array, channels: np.ndarray) -> ChannelExtremes:
    """`ChannelExtremes` of channels `channels [S]` of maps `[B, h, w, D]` (jit-able; run it
    in a pass over a dataset to find each channel's top-activating images)."""
    b, h, w, _ = channel_maps.shape
    maps = jnp.take(channel_maps, jnp.asarray(channels, jnp.int32), axis=-1).reshape(b, h * w, -1)
    top, bottom = jnp.argmax(maps, axis=1), jnp.argmin(maps, axis=1)  # [B, S]
    highest = jnp.take_along_axis(maps, top[:, None], axis=1)[:, 0]
    lowest = jnp.take_along_axis(maps, bottom[:, None], axis=1)[:, 0]

    def to_hw(index):
        return jnp.stack([index // w, index % w], axis=-1).astype(jnp.int32)

    return ChannelExtremes(jax.nn.relu(highest), jax.nn.relu(-lowest), to_hw(top), to_hw(bottom))


class Gallery(NamedTuple):
    """Each channel's top-activating images.

    Attributes:
      indices: `[S, k]` dataset indices, most activating first.
      locations: `[S, k, 2]` the (h, w) of the channel's maximum on each.
      activations: `[S, k]` max ReLU(z) on each.
    """

    indices: np.ndarray
    locations: np.ndarray
    activations: np.ndarray


def top_activating(extremes: ChannelExtremes, *, k: int, negative: bool = False) -> Gallery:
    """The `k` images (rows of `extremes`, `[N, S]` leaves) on which each channel responds
    most strongly: positively (max ReLU(z)), or with `negative` negatively (max ReLU(−z)).
    Ties keep the lower row first."""
    strength = np.asarray(extremes.negative if negative else extremes.positive)  # [N, S]
    locations = np.asarray(extremes.negative_locations if negative else extremes.positive_locations)
    k = min(k, strength.shape[0])
    order = np.argsort(-strength, axis=0, kind="stable")[:k].T  # [S, k]
    columns = np.arange(strength.shape[1])[:, None]
    return Gallery(order.astype(np.int64), locations[order, columns], strength[order, columns])


def location_boxes(locations: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """Image boxes `[..., 4]` (y0, x0, y1, x1) of feature-map locations `[..., 2]` (h, w), from
    the box of every location `boxes [h, w, 4]`."""
    locations = np.asarray(locations)
    return np.asarray(boxes)[locations[..., 0], locations[..., 1]]


def channel_explanation(
    image: np.ndarray,
    chosen: TopChannels,
    boxes: np.ndarray,
    gallery: Gallery,
    gallery_images: Mapping[int, np.ndarray],
    gallery_channels: np.ndarray,
    *,
    title: str,
):
    """One image's explanation, one row per channel of `chosen` (a `TopChannels` row, fields
    `[k, ...]`): the image with the positive location's receptive field, with the negative
    one's, the channel's top-activating training patches, and the channel's v, W and W·v.

    Args:
      image: `[H, W, C]` in [0, 1].
      chosen: the channels to show.
      boxes: `[h, w, 4]` receptive-field box of every feature-map location.
      gallery: `top_activating` over the channels `gallery_channels [S]`.
      gallery_images: training images `[H, W, C]` in [0, 1] by dataset index.

    Returns:
      The matplotlib figure.
    """
    plt = pyplot()
    image = to_rgb(np.asarray(image))
    k = len(chosen.channels)
    patches = gallery.indices.shape[1]
    fig, axes = plt.subplots(
        k,
        3 + patches,
        figsize=(1.9 * (2 + patches) + 2.6, 2.1 * k + 0.6),
        squeeze=False,
        gridspec_kw={"width_ratios": [1, 1, *([1] * patches), 1.5]},
    )
    fig.suptitle(title, fontsize=10)
    column = {int(c): i for i, c in enumerate(np.asarray(gallery_channels))}
    for r in range(k):
        channel = int(chosen.channels[r])
        first = r == 0
        positive = location_boxes(chosen.positive_locations[r], boxes)
        negative = location_boxes(chosen.negative_locations[r], boxes)
        show(axes[r, 0], image, "positive part" if first else "", positive)
        show(axes[r, 1], image, "negative part" if first else "", negative)
        row = column[channel]
        for j in range(patches):
            index = int(gallery.indices[row, j])
            box = location_boxes(gallery.locations[row, j], boxes)
            patch = to_rgb(crop(np.asarray(gallery_images[index]), box))
            show(axes[r, 2 + j], patch, f"top train #{j + 1}" if first else "")
        axes[r, -1].axis("off")
        text = (
            f"channel {channel}\n"
            f"v   = {float(chosen.values[r]):+.3f}\n"
            f"W   = {float(chosen.weights[r]):.3f}\n"
            f"W·v = {float(chosen.contributions[r]):+.3f}"
        )
        axes[r, -1].text(0.0, 0.5, text, fontsize=9, va="center", family="monospace")
    fig.tight_layout()
    return fig


def training_images(
    collect: Callable, denormalize: Callable[[np.ndarray], np.ndarray], indices: np.ndarray
) -> dict[int, np.ndarray]:
    """Training images `[H, W, C]` in [0, 1] by dataset index, read through an ordered pass
    (`collect(fn, indices=...)`, as `RunContext.collect` over the training split)."""
    wanted = np.unique(indices)
    rows = collect(lambda batch: batch["image"], indices=wanted)
    return {int(i): denormalize(np.asarray(r)) for i, r in zip(wanted, rows)}


def write_channel_explanations(
    out: pathlib.Path,
    images: np.ndarray,
    logits: np.ndarray,
    pooled,
    kernel: np.ndarray,
    boxes: np.ndarray,
    channel_maps: Callable[[jax.Array], jax.Array],
    collect: Callable,
    denormalize: Callable[[np.ndarray], np.ndarray],
    *,
    channels: int,
    patches: int,
) -> list[pathlib.Path]:
    """Writes `out/image_NNN.png`, the `channel_explanation` of each image for its predicted
    class, and returns the paths.

    Args:
      out: the folder (created if missing).
      images: `[B, H, W, C]` model inputs.
      logits: `[B, K]` the model's logits on them.
      pooled: their channel values with locations (`values [B, D]`,
        `positive_locations` and `negative_locations` `[B, D, 2]`, as `mx_pool` gives them).
      kernel: `[D, K]` the non-negative head W.
      boxes: `[h, w, 4]` receptive-field box of every feature-map location.
      channel_maps: model inputs `[n, H, W, C]` → channel maps `[n, h, w, D]` (a pytree
        callable such as `jax.tree_util.Partial`).
      collect: `collect(fn, indices=None)` runs `fn(batch)` over an ordered pass of the
        training split and returns its rows (`RunContext.collect`), for the channels'
        top-activating training patches.
      denormalize: model inputs → images in [0, 1].
      channels: channels shown per image; patches: training patches shown per channel.
    """
    predicted = np.argmax(logits, axis=-1)
    chosen = top_channels(
        pooled.values,
        pooled.positive_locations,
        pooled.negative_locations,
        kernel,
        predicted,
        k=min(channels, kernel.shape[0]),
    )
    shown = np.unique(chosen.channels)
    # The callable is an argument, so that a Partial's arrays are inputs, not constants.
    maps = jax.jit(lambda fn, x: fn(x))
    gallery = top_activating(
        collect(lambda batch: channel_extremes(maps(channel_maps, batch["image"]), shown)),
        k=patches,
    )
    gallery_images = training_images(collect, denormalize, gallery.indices)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, image in enumerate(images):
        fig = channel_explanation(
            denormalize(image),
            jax.tree.map(lambda x, i=i: x[i], chosen),
            boxes,
            gallery,
            gallery_images,
            shown,
            title=f"image {i}: predicted class {predicted[i]}",
        )
        path = out / f"image_{i:03d}.png"
        fig.savefig(path, dpi=100)
        pyplot().close(fig)
        paths.append(path)
    return paths


__all__ = [
    "ChannelExtremes",
    "Gallery",
    "TopChannels",
    "channel_explanation",
    "channel_extremes",
    "location_boxes",
    "top_activating",
    "top_channels",
    "training_images",
    "write_channel_explanations",
]
