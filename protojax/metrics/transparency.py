"""Transparency: how prototypes, embedding and prediction relate, and which prototypes are used.

- `class_usage`: per class, the share of its prototypes that are ever the most similar one
  for an image, with the unused ones listed (built on `prototypes.diversity.prototype_usage`);
- `near_duplicates`: identical or near-duplicate prototypes (two pushes onto one patch);
- `last_layer_structure`: the sparsity and sign structure of the last layer;
- `source_purity`: the share of prototypes whose source image (ProtoPNet's push) or nearest
  images are of the prototype's own class.

They run eagerly on the host and return NumPy values (lists of data-dependent length).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from protojax.prototypes.diversity import prototype_usage


class ClassUsage(NamedTuple):
    """The result of `class_usage`.

    Attributes:
      fraction_used: share of the active prototypes that are the most similar prototype of
        at least one image (over all classes).
      per_class: `[K]` float, the same share among each class's active prototypes (NaN for a
        class without active prototypes).
      counts: `[P]` int, the images whose most similar prototype each one is.
      unused: `[U]` int, the flat indices of the active prototypes never the most similar.
    """

    fraction_used: float
    per_class: np.ndarray
    counts: np.ndarray
    unused: np.ndarray


def class_usage(similarities, prototype_class, *, num_classes: int, active=None) -> ClassUsage:
    """Which prototypes the data use, per class.

    Each image is assigned to its most similar active prototype over all classes (the first
    on ties), as Pantypes assigns; a prototype is used if at least one image is assigned to
    it. Only the order of each row matters, so all-negative similarities are handled like
    any other. Inactive prototypes are neither used nor unused.

    Args:
      similarities: `[N, P]` similarity of each image to each prototype.
      prototype_class: `[P]` int, each prototype's class in [0, K).
      num_classes: K.
      active: optional `[P]` bool.

    Returns:
      `ClassUsage(fraction_used, per_class [K], counts [P], unused [U])`.
    """
    similarities = np.asarray(similarities, np.float32)
    classes = np.asarray(prototype_class).astype(np.int64)
    p = similarities.shape[-1]
    active = np.ones(p, bool) if active is None else np.asarray(active, bool)
    usage = prototype_usage(similarities, classes, active)
    used = active & (usage.counts > 0)
    per_class = np.full(num_classes, np.nan)
    for k in range(num_classes):
        mine = active & (classes == k)
        if mine.any():
            per_class[k] = used[mine].mean()
    return ClassUsage(usage.fraction_used, per_class, usage.counts, usage.unused)


class NearDuplicates(NamedTuple):
    """The result of `near_duplicates`.

    Attributes:
      count: the active prototypes that duplicate another: the number of active prototypes
        minus the number of groups they form when near-duplicate pairs are joined.
      identical: the same count for exactly equal vectors.
      pairs: `[n, 2]` int, the near-duplicate pairs (i < j).
    """

    count: int
    identical: int
    pairs: np.ndarray


def _redundant(num: int, pairs: np.ndarray) -> int:
    """`num` minus the number of connected components of the graph with edges `pairs`."""
    parent = list(range(num))

    def root(i):
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    merged = 0
    for i, j in pairs:
        a, b = root(int(i)), root(int(j))
        if a != b:
            parent[b] = a
            merged += 1
    return merged


def near_duplicates(prototypes, *, active=None, rtol: float = 1e-3) -> NearDuplicates:
    """Identical or near-duplicate prototypes.

    Prototypes i and j are near duplicates when ‖p_i − p_j‖ ≤ rtol · max(‖p_i‖, ‖p_j‖) (all
    zeros match each other); identical when p_i = p_j exactly. Duplicates are grouped
    transitively, and a group of g prototypes counts g − 1 (the redundant ones).

    Args:
      prototypes: `[P, D]` (flatten patch or class-grouped prototypes first).
      active: optional `[P]` bool; inactive prototypes are left out.
      rtol: the relative tolerance.

    Returns:
      `NearDuplicates(count, identical, pairs [n, 2])`, pairs in the original indices.
    """
    vectors = np.asarray(prototypes, np.float64)
    if vectors.ndim != 2:
        raise ValueError(f"prototypes must be [P, D], got shape {vectors.shape}.")
    keep = np.arange(len(vectors)) if active is None else np.flatnonzero(np.asarray(active, bool))
    v = vectors[keep]
    gaps = np.sqrt(np.maximum(np.sum((v[:, None] - v[None]) ** 2, axis=-1), 0.0))
    norms = np.linalg.norm(v, axis=1)
    scale = np.maximum(norms[:, None], norms[None, :])
    upper = np.triu(np.ones(gaps.shape, bool), k=1)
    near = np.argwhere(upper & (gaps <= rtol * scale))
    same = np.argwhere(upper & np.all(v[:, None] == v[None], axis=-1))
    return NearDuplicates(
        _redundant(len(v), near), _redundant(len(v), same), keep[near].reshape(-1, 2)
    )


class LastLayerStructure(NamedTuple):
    """The result of `last_layer_structure` (NaN where a part is undefined).

    Attributes:
      sparsity: share of the weights with |w| ≤ tol · max |w|.
      own_positive: share of the own-class weights that are > 0.
      other_negative: share of the other-class weights that are < 0.
      other_zero: share of the other-class weights with |w| ≤ tol · max |w|.
      own_mean: mean own-class weight.
      other_mean: mean other-class weight.
    """

    sparsity: float
    own_positive: float
    other_negative: float
    other_zero: float
    own_mean: float
    other_mean: float


def last_layer_structure(
    weights, prototype_class=None, *, active=None, tol: float = 1e-3
) -> LastLayerStructure:
    """The sparsity and sign structure of a last layer `[P, K]` (rows: prototypes or attributes).

    A weight counts as zero when |w| ≤ tol · max |w| over the active rows. With
    `prototype_class`, the weights split into own-class (w_{j, class(j)}) and other-class
    ones: ProtoPNet starts at +1 / −0.5 and its L1 term drives the other-class weights to
    0, so `other_zero` near 1 and `own_positive` = 1 mean "this looks like that" and nothing
    else; a negative other-class weight is evidence against a class. Without classes (FLINT's
    attributes) only `sparsity` is defined.

    Args:
      weights: `[P, K]`.
      prototype_class: optional `[P]` int.
      active: optional `[P]` bool; inactive rows are left out.
      tol: relative zero tolerance.

    Returns:
      `LastLayerStructure`.
    """
    w = np.asarray(weights, np.float64)
    if w.ndim != 2:
        raise ValueError(f"weights must be [P, K], got shape {w.shape}.")
    rows = np.ones(len(w), bool) if active is None else np.asarray(active, bool)
    kept = w[rows]
    peak = np.max(np.abs(kept)) if kept.size else 0.0
    zero = np.abs(w) <= tol * peak
    sparsity = float(zero[rows].mean()) if kept.size else np.nan
    if prototype_class is None:
        return LastLayerStructure(sparsity, *([np.nan] * 5))
    classes = np.asarray(prototype_class).astype(np.int64)
    own = (classes[:, None] == np.arange(w.shape[1])[None, :]) & rows[:, None]
    other = ~own & rows[:, None]

    def share(mask, values):
        return float(values[mask].mean()) if mask.any() else np.nan

    return LastLayerStructure(
        sparsity,
        share(own, w > 0),
        share(other, w < 0),
        share(other, zero),
        share(own, w),
        share(other, w),
    )


def source_purity(source_labels, prototype_class, *, active=None) -> float:
    """The share of prototypes whose source images have the prototype's own class.

    `source_labels [P]` gives one source per prototype (ProtoPNet's push source: that share
    is 1 by construction with a class-specific push); `[P, k]` gives each prototype's k
    nearest images, and the purity is the mean share of own-class images among them (the
    criterion of ProtoPNet's pruning). Sources marked −1 (never pushed) are left out, as are
    inactive prototypes. NaN if none is left.

    Args:
      source_labels: `[P]` or `[P, k]` int, the class of each source image, −1 for none.
      prototype_class: `[P]` int.
      active: optional `[P]` bool.

    Returns:
      A float in [0, 1], or NaN.
    """
    labels = np.asarray(source_labels).astype(np.int64)
    if labels.ndim == 1:
        labels = labels[:, None]
    classes = np.asarray(prototype_class).astype(np.int64)
    rows = np.ones(len(classes), bool) if active is None else np.asarray(active, bool)
    known = labels >= 0
    counted = rows[:, None] & known
    if not counted.any():
        return float("nan")
    own = (labels == classes[:, None]) & counted
    per_row = own.sum(1)[rows & known.any(1)] / counted.sum(1)[rows & known.any(1)]
    return float(per_row.mean())


def nearest_labels(similarities, labels, *, k: int) -> np.ndarray:
    """`[P, k]` the labels of each prototype's k most similar images (ties: lower index first),
    for `source_purity`; `similarities [N, P]`, `labels [N]`."""
    s = np.asarray(similarities, np.float64)
    k = min(k, s.shape[0])
    order = np.argsort(-s, axis=0, kind="stable")[:k]  # [k, P]
    return np.asarray(labels)[order].T


__all__ = [
    "ClassUsage",
    "LastLayerStructure",
    "NearDuplicates",
    "class_usage",
    "last_layer_structure",
    "near_duplicates",
    "nearest_labels",
    "source_purity",
]
