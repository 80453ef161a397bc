"""How a prototype is shown: its self-activation map on its source image, the box around the
map's 95th percentile, the "this looks like that" contributions, and the PNGs of a push.

Functions of arrays and callables, for notebooks as for the methods and launchers: a method
supplies `self_activations(images, prototype_ids)` (a prototype's similarity map on an image,
upsampled to the image) and the data supplies images; nothing here knows a method.
"""

from __future__ import annotations

import json
import math
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.errors import UsageError
from protojax.imaging import crop, draw_box, overlay_heatmap, save_png, to_rgb

# PNGs of smaller images are enlarged (nearest neighbour) to about this side, so that box
# outlines stay thin.
PNG_MIN_SIDE = 96
RECEPTIVE_FIELD_COLOUR = (0.1, 0.4, 1.0)
ACTIVATION_COLOUR = (1.0, 0.9, 0.0)


def upsample_activation(activation_map: jax.Array, size: tuple[int, int]) -> jax.Array:
    """Bicubic upsampling of a latent activation map to the image size.

    Uses `jax.image.resize(..., "cubic")` (Keys kernel a = −0.5, half-pixel centres). The
    official ProtoPNet uses OpenCV's `INTER_CUBIC` (a = −0.75), so upsampled values differ
    slightly and the boxes of `high_activation_box` can differ from the official ones by a
    pixel.

    Args:
      activation_map: `[h, w]` (for example a prototype's similarity map).
      size: (H, W) of the image.

    Returns:
      `[H, W]` float32.
    """
    return jax.image.resize(jnp.asarray(activation_map, jnp.float32), tuple(size), "cubic")


def high_activation_box(activation_map: np.ndarray, *, percentile: float = 95.0) -> np.ndarray:
    """The tightest box around the pixels at or above the map's `percentile`-th percentile.

    ProtoPNet's `find_high_activation_crop`: the threshold is `np.percentile(map,
    percentile)` (linear interpolation) and the box covers every pixel `>=` it.

    Args:
      activation_map: `[H, W]` upsampled activation.
      percentile: in [0, 100].

    Returns:
      `[4]` int32 (y0, x0, y1, x1) with exclusive ends (the official code returns the
      same box in the order y0, y1, x0, x1).
    """
    activation_map = np.asarray(activation_map)
    if activation_map.ndim != 2:
        raise ValueError(
            f"activation_map must be [H, W], got shape {activation_map.shape}; pass one map."
        )
    mask = activation_map >= np.percentile(activation_map, percentile)
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    return np.array([rows[0], cols[0], rows[-1] + 1, cols[-1] + 1], np.int32)


class PrototypeSources(NamedTuple):
    """Pushed prototypes in their source images.

    Attributes:
      prototypes: `[n]` int prototype indices (those with a source).
      images: `[n, H, W, C]` source images as the data stores them (values in [0, 1]).
      labels: `[n]` int labels of the source images.
      activations: `[n, H, W]` each prototype's self-activation on its source image.
      boxes: `[n, 4]` int (y0, x0, y1, x1), the 95th-percentile box of each activation.
    """

    prototypes: np.ndarray
    images: np.ndarray
    labels: np.ndarray
    activations: np.ndarray
    boxes: np.ndarray

    def row(self, prototype: int) -> int:
        """The row of prototype `prototype` (a KeyError if it has no source)."""
        rows = np.flatnonzero(self.prototypes == prototype)
        if not len(rows):
            raise KeyError(f"Prototype {prototype} has no source image (it was never pushed).")
        return int(rows[0])

    def patch(self, prototype: int) -> np.ndarray:
        """The high-activation crop `[h, w, 3]` of a prototype's source image."""
        row = self.row(prototype)
        return crop(to_rgb(self.images[row]), self.boxes[row])


def prototype_sources(
    self_activations: Callable[[np.ndarray, np.ndarray], jax.Array],
    get_batch: Callable[[np.ndarray], dict[str, np.ndarray]],
    normalize: Callable[[np.ndarray], np.ndarray],
    source_index: np.ndarray,
    *,
    batch_size: int,
) -> PrototypeSources:
    """Reads every pushed prototype's source image and its self-activation.

    Args:
      self_activations: `(images [n, H, W, C] model input, prototype_ids [n]) -> [n, H, W]`,
        each prototype's similarity map on its image, upsampled to the image.
      get_batch: `indices [n] -> {"image": [n, H, W, C], "label": [n]}` from the training
        split (`Split.get_batch`).
      normalize: stored images → the model's input.
      source_index: `[P]` int, each prototype's source image; -1 for none.
      batch_size: images per call of `self_activations`.
    """
    source_index = np.asarray(source_index)
    pushed = np.flatnonzero(source_index >= 0)
    images, labels, maps = [], [], []
    for start in range(0, len(pushed), batch_size):
        ids = pushed[start : start + batch_size]
        raw = get_batch(source_index[ids])
        maps.append(np.asarray(self_activations(normalize(raw["image"]), ids)))
        images.append(raw["image"])
        labels.append(np.asarray(raw["label"]))
    if not len(pushed):
        empty = np.zeros((0,), np.int64)
        return PrototypeSources(empty, empty, empty, empty, np.zeros((0, 4), np.int32))
    maps = np.concatenate(maps)
    return PrototypeSources(
        prototypes=pushed,
        images=np.concatenate(images),
        labels=np.concatenate(labels),
        activations=maps,
        boxes=np.stack([high_activation_box(m) for m in maps]),
    )


def write_prototype_pngs(
    directory: pathlib.Path,
    prototype: int,
    image: np.ndarray,
    activation: np.ndarray,
    activation_box: np.ndarray,
    receptive_field_box: np.ndarray,
) -> dict[str, str]:
    """Writes a prototype's source image with its receptive-field (blue) and high-activation
    (yellow) boxes, the self-activation overlay, the high-activation crop and the
    receptive-field crop. Images under 96 px are enlarged by an integer factor.

    Args:
      directory: where the PNGs go (it must exist).
      prototype: the prototype's index, for the file names.
      image: `[H, W, C]` source image in [0, 1].
      activation: `[H, W]` self-activation.
      activation_box, receptive_field_box: `[4]` (y0, x0, y1, x1) in image pixels.

    Returns:
      The file names, by kind: `source`, `overlay`, `patch`, `receptive_field`.
    """
    rgb = to_rgb(image)
    names = {
        kind: f"prototype_{prototype:04d}_{kind}.png"
        for kind in ("source", "overlay", "patch", "receptive_field")
    }
    scale = max(1, math.ceil(PNG_MIN_SIDE / min(rgb.shape[:2])))
    big = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
    boxed = draw_box(big(rgb), np.asarray(receptive_field_box) * scale, RECEPTIVE_FIELD_COLOUR)
    boxed = draw_box(boxed, np.asarray(activation_box) * scale, ACTIVATION_COLOUR)
    save_png(directory / names["source"], boxed)
    save_png(directory / names["overlay"], big(overlay_heatmap(rgb, activation)))
    save_png(directory / names["patch"], big(crop(rgb, activation_box)))
    save_png(directory / names["receptive_field"], big(crop(rgb, receptive_field_box)))
    return names


def self_activation_maps(
    similarity_maps: jax.Array, prototype_ids: jax.Array, size: tuple[int, int]
) -> jax.Array:
    """Each image's map of its own prototype, upsampled: `similarity_maps [n, h, w, P]` and
    `prototype_ids [n]` → `[n, H, W]` (jit-able)."""
    ids = jnp.asarray(prototype_ids, jnp.int32)[:, None, None, None]
    own = jnp.take_along_axis(similarity_maps, ids, axis=3)[..., 0]
    return jax.vmap(lambda m: upsample_activation(m, size))(own)


@jax.jit
def upsampled_self_activations(
    similarity_maps: jax.tree_util.Partial, images: jax.Array, prototype_ids: jax.Array
) -> jax.Array:
    """`self_activation_maps` of a model: `similarity_maps(images [n, H, W, C]) -> [n, h, w,
    P]` (a `jax.tree_util.Partial`, traced) and `prototype_ids [n]` → `[n, H, W]`."""
    return self_activation_maps(similarity_maps(images), prototype_ids, tuple(images.shape[1:3]))


def save_prototype_pngs(
    directory: pathlib.Path,
    sources: PrototypeSources,
    prototype_state: dict[str, np.ndarray],
    receptive_field_boxes: np.ndarray,
    *,
    class_names: Sequence[str],
    **index_fields,
) -> pathlib.Path:
    """Writes `write_prototype_pngs` for every prototype of `sources` into `directory`
    (created) and `index.json` beside them: `index_fields`, `class_names` and one record per
    prototype (its class, source image and label, latent location, push distance, both boxes
    in image pixels, and its file names).

    Args:
      sources: from `prototype_sources`.
      prototype_state: NumPy `prototype_state` with the push bookkeeping.
      receptive_field_boxes: `[h, w, 4]` image box of each latent location.
      class_names: `[K]`.

    Returns:
      The path of `index.json`.
    """
    directory.mkdir(parents=True, exist_ok=True)
    state = prototype_state
    entries = []
    for row, j in enumerate(sources.prototypes):
        h, w = (int(v) for v in state["source_location"][j])
        box, rf_box = sources.boxes[row], receptive_field_boxes[h, w]
        files = write_prototype_pngs(
            directory, j, sources.images[row], sources.activations[row], box, rf_box
        )
        cls = int(state["prototype_class"][j])
        entries.append(
            {
                "prototype": int(j),
                "class": cls,
                "class_name": class_names[cls],
                "active": bool(state["active"][j]),
                "source_index": int(state["source_index"][j]),
                "source_label": int(sources.labels[row]),
                "location": [h, w],
                "distance": float(state["push_distance"][j]),
                "activation_box": [int(v) for v in box],
                "receptive_field_box": [int(v) for v in rf_box],
                "files": files,
            }
        )
    index = directory / "index.json"
    document = {**index_fields, "class_names": list(class_names), "prototypes": entries}
    index.write_text(json.dumps(document, indent=1) + "\n")
    return index


class Contributions(NamedTuple):
    """The prototypes that add most to a class's logit.

    Attributes:
      prototypes: `[k]` int, in decreasing order of contribution (ties: lower index first).
      similarities: `[k]` their similarities to the image.
      weights: `[k]` their last-layer weights to the class.
      contributions: `[k]` similarity × weight.
    """

    prototypes: np.ndarray
    similarities: np.ndarray
    weights: np.ndarray
    contributions: np.ndarray


def top_contributions(
    similarities: np.ndarray, weights: np.ndarray, active: np.ndarray, *, k: int
) -> Contributions:
    """The `k` active prototypes whose similarity × last-layer weight is largest.

    Args:
      similarities: `[P]` one image's similarity to each prototype.
      weights: `[P]` last-layer weights from each prototype to the class (a kernel column).
      active: `[P]` bool; inactive prototypes are never chosen.
      k: how many.
    """
    similarities, weights = np.asarray(similarities), np.asarray(weights)
    contribution = np.where(np.asarray(active, bool), similarities * weights, -np.inf)
    top = np.argsort(-contribution, kind="stable")[:k]
    return Contributions(top, similarities[top], weights[top], similarities[top] * weights[top])


class Explained(NamedTuple):
    """Images explained by a prototype model, with what the model computed on them.

    Attributes:
      images: `[B, H, W, C]` in [0, 1], as the data stores them.
      indices: `[B]` their indices in the split.
      labels: `[B]` int.
      logits: `[B, K]`.
      similarities: `[B, P]` each image's similarity to each prototype.
      kernel: `[P, K]` the last layer's weights.
      active: `[P]` bool.
      prototype_class: `[P]` int.
    """

    images: np.ndarray
    indices: np.ndarray
    labels: np.ndarray
    logits: np.ndarray
    similarities: np.ndarray
    kernel: np.ndarray
    active: np.ndarray
    prototype_class: np.ndarray


def _heading(e: Explained, row: int, predicted: int, class_names: Sequence[str]) -> str:
    return (
        f"image {int(e.indices[row])}: predicted {class_names[predicted]} (logit "
        f"{e.logits[row, predicted]:.2f}), true {class_names[int(e.labels[row])]}"
    )


def _record(e: Explained, row: int, top: Contributions) -> dict:
    predicted = int(np.argmax(e.logits[row]))
    return {
        "index": int(e.indices[row]),
        "label": int(e.labels[row]),
        "predicted": predicted,
        "logit": float(e.logits[row, predicted]),
        "prototypes": [
            {
                "prototype": int(j),
                "class": int(e.prototype_class[j]),
                "similarity": float(sim),
                "weight": float(weight),
                "contribution": float(contribution),
            }
            for j, sim, weight, contribution in zip(*top, strict=True)
        ],
    }


def write_this_looks_like_that(
    out: pathlib.Path,
    explained: Explained,
    similarity_maps: np.ndarray,
    sources: PrototypeSources,
    *,
    class_names: Sequence[str],
    prototypes_per_class: int,
    top_k: int = 3,
) -> list[pathlib.Path]:
    """ProtoPNet's own explanation: `out/image_NNN/this_looks_like_that.png` per image (the
    `top_k` prototypes adding most to the predicted logit: activation and its 95th-percentile
    box, source patch and image, similarity × weight), each class's gallery under
    `out/gallery/`, and `out/this_looks_like_that.json`, the numbers shown. Returns the figure
    paths.

    Args:
      out: the folder (created if missing).
      explained: the images and the model's outputs on them.
      similarity_maps: `[B, h, w, P]` each prototype's similarity at each latent patch.
      sources: the pushed prototypes' source images (`prototype_sources`).
      class_names, prototypes_per_class: prototype j belongs to class j // prototypes_per_class.
      top_k: prototypes per image.
    """
    from protojax.explain import figures

    e = explained
    paths, records = [], []
    for row in range(len(e.images)):
        predicted = int(np.argmax(e.logits[row]))
        top = top_contributions(e.similarities[row], e.kernel[:, predicted], e.active, k=top_k)
        size = e.images.shape[1:3]
        evidence, record = [], _record(e, row, top)
        for shown, j in zip(record["prototypes"], top.prototypes, strict=True):
            activation = np.asarray(upsample_activation(similarity_maps[row, :, :, j], size))
            box = high_activation_box(activation)
            shown["activation_box"] = [int(v) for v in box]
            source = sources.row(int(j))
            text = (
                f"prototype {int(j)} ({class_names[int(e.prototype_class[j])]})\n"
                f"similarity {shown['similarity']:.3f}\n"
                f"weight to {class_names[predicted]}: {shown['weight']:.3f}\n"
                f"contribution {shown['contribution']:.3f}"
            )
            evidence.append(
                figures.Evidence(
                    activation, box, sources.patch(int(j)), sources.images[source],
                    sources.boxes[source], text,
                )
            )  # fmt: skip
        title = _heading(e, row, predicted, class_names)
        fig = figures.this_looks_like_that(e.images[row], evidence, title=title)
        paths.append(
            figures.save(fig, out / f"image_{int(e.indices[row]):03d}" / "this_looks_like_that.png")
        )
        records.append(record)
    for k in range(len(class_names)):
        ids = [j for j in range(k * prototypes_per_class, (k + 1) * prototypes_per_class)
               if j in sources.prototypes]  # fmt: skip
        if not ids:
            continue
        rows = [sources.row(j) for j in ids]
        fig = figures.class_gallery(
            [sources.patch(j) for j in ids],
            sources.images[rows],
            sources.boxes[rows],
            [f"p{j}" + ("" if e.active[j] else " (pruned)") for j in ids],
            title=f"class {class_names[k]}: prototypes (patch above, source below)",
        )
        paths.append(figures.save(fig, out / "gallery" / f"class_{k:03d}.png"))
    (out / "this_looks_like_that.json").write_text(json.dumps({"images": records}, indent=1))
    return paths


def explain_images(
    out: pathlib.Path,
    activations: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray, np.ndarray]],
    images: np.ndarray,
    indices: np.ndarray,
    labels: np.ndarray,
    kernel: np.ndarray,
    prototype_state: dict[str, np.ndarray],
    sources: PrototypeSources,
    *,
    class_names: Sequence[str],
    prototypes_per_class: int,
    batch_size: int,
) -> list[pathlib.Path]:
    """`write_this_looks_like_that` for images as the data stores them.

    Args:
      out: the folder (created if missing).
      activations: stored images `[n, H, W, C]` → (logits `[n, K]`, similarities `[n, P]`,
        similarity maps `[n, h, w, P]`), normalising them for the model; called on chunks of
        `batch_size` images.
      images, indices, labels: `[B, H, W, C]` in [0, 1], their indices in the split, `[B]`.
      kernel: `[P, K]` the last layer; prototype_state: NumPy `prototype_state`.
      sources: the pushed prototypes' source images (`prototype_sources`).

    Raises:
      UsageError: no prototype has been pushed yet.
    """
    if not len(sources.prototypes):
        raise UsageError(
            "This run has not pushed its prototypes yet, so they are not training patches; "
            "explain a run that has passed its first push epoch."
        )
    parts = [activations(images[i : i + batch_size]) for i in range(0, len(images), batch_size)]
    logits, sims, maps = (np.concatenate([np.asarray(p[n]) for p in parts]) for n in range(3))
    explained = Explained(
        images,
        np.asarray(indices),
        labels,
        logits,
        sims,
        np.asarray(kernel),
        prototype_state["active"],
        prototype_state["prototype_class"],
    )
    return write_this_looks_like_that(
        out,
        explained,
        maps,
        sources,
        class_names=class_names,
        prototypes_per_class=prototypes_per_class,
    )


def write_decoded_explanations(
    out: pathlib.Path,
    explained: Explained,
    reconstructions: np.ndarray,
    decoded: np.ndarray,
    *,
    class_names: Sequence[str],
    top_k: int = 3,
) -> list[pathlib.Path]:
    """ProtoVAE's and Pantypes' own explanation: `out/image_NNN/decoded_prototypes.png` per
    image (the image, its reconstruction, then the `top_k` prototypes adding most to the
    predicted logit, decoded, each with similarity × weight = contribution), and
    `out/decoded_prototypes.json`, the numbers shown. Returns the figure paths.

    Args:
      out: the folder (created if missing).
      explained: the images and the model's outputs on them.
      reconstructions: `[B, H, W, C]` in [0, 1].
      decoded: `[P, H, W, C]` the decoded prototypes, in [0, 1].
    """
    from protojax.explain import figures

    e = explained
    plt = figures.pyplot()
    paths, records = [], []
    for row in range(len(e.images)):
        predicted = int(np.argmax(e.logits[row]))
        top = top_contributions(e.similarities[row], e.kernel[:, predicted], e.active, k=top_k)
        record = _record(e, row, top)
        fig, axes = plt.subplots(1, 2 + len(top.prototypes), figsize=(1.9 * (2 + top_k), 2.7))
        figures.show(axes[0], e.images[row], "image")
        figures.show(axes[1], reconstructions[row], "reconstruction")
        for ax, shown in zip(axes[2:], record["prototypes"], strict=True):
            j = shown["prototype"]
            figures.show(ax, decoded[j], f"p{j} ({class_names[shown['class']]})")
            ax.set_xlabel(
                f"sim {shown['similarity']:.2f} × w {shown['weight']:.2f}\n"
                f"= {shown['contribution']:.2f}",
                fontsize=7,
            )
        fig.suptitle(_heading(e, row, predicted, class_names) + "; decoded prototypes", fontsize=9)
        fig.tight_layout()
        paths.append(
            figures.save(fig, out / f"image_{int(e.indices[row]):03d}" / "decoded_prototypes.png")
        )
        records.append(record)
    (out / "decoded_prototypes.json").write_text(json.dumps({"images": records}, indent=1))
    return paths


__all__ = [
    "Contributions",
    "Explained",
    "PrototypeSources",
    "explain_images",
    "high_activation_box",
    "prototype_sources",
    "save_prototype_pngs",
    "self_activation_maps",
    "top_contributions",
    "upsample_activation",
    "upsampled_self_activations",
    "write_decoded_explanations",
    "write_prototype_pngs",
    "write_this_looks_like_that",
]
