"""Class centroids as prototypes (KMEx, Gautam et al., TMLR 2024): k-means per class in an
embedding, and the classifiers that read them.

`class_kmeans` fits M centroids to each class's rows with `kmeans.kmeans` (scikit-learn's
k-means++ and Lloyd), every class in one compiled program: the classes' rows are gathered into
`[K, N_max, D]` blocks, padded with rows of weight 0 (which take no part in a fit), and the
fit is vmapped over the classes. Class c's centroids are rows c·M … c·M + M − 1.

Two classifiers read the centroids:
- `nearest_centroid_logits`: the class of the nearest centroid over all classes (KMEx's
  `kmc.predict`), as logits −min_{j of class k} ‖z − c_j‖², whose argmax is that class;
- `soft_centroid_log_probabilities`: the soft version of the official `model_fwd`: the
  similarity log((d + 1)/(d + 1e-4)) on the Euclidean distance d, a softmax over all
  centroids, and the probabilities summed per class.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.distances import l2_distances, log_similarity, squared_l2_distances
from protojax.prototypes.kmeans import kmeans


class ClassCentroids(NamedTuple):
    """M centroids per class, fitted by `class_kmeans`.

    Attributes:
      centroids: `[K·M, D]` float32; class c's are rows c·M … c·M + M − 1.
      prototype_class: `[K·M]` int32, j // M.
      assignment: `[N]` int32, each row's nearest centroid of its own class (a global index).
      importance: `[K·M]` int32, the number of rows assigned to each centroid (KMEx's
        `kmc_prt_train_ipt`).
      nearest: `[K·M]` int32, the row of the centroid's class nearest to it (the row KMEx
        shows as the prototype).
      inertia: `[K]` float32, each class's k-means inertia.
    """

    centroids: jax.Array
    prototype_class: jax.Array
    assignment: jax.Array
    importance: jax.Array
    nearest: jax.Array
    inertia: jax.Array


def _class_blocks(labels: np.ndarray, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Row indices `[K, N_max]` of each class (in row order, padded with row 0) and the mask
    `[K, N_max]` of real rows."""
    counts = np.bincount(labels, minlength=num_classes)
    width = int(counts.max())
    index = np.zeros((num_classes, width), np.int64)
    valid = np.arange(width)[None, :] < counts[:, None]
    for c in range(num_classes):
        index[c, : counts[c]] = np.flatnonzero(labels == c)
    return index, valid


def _fit_blocks(blocks, weights, keys, *, per_class: int, n_init: int, max_iter: int, tol: float):
    def fit(x, w, key):
        return kmeans(x, per_class, key, n_init=n_init, max_iter=max_iter, tol=tol, weights=w)

    return jax.vmap(fit)(blocks, weights, keys)


_fit_blocks_jit = jax.jit(_fit_blocks, static_argnames=("per_class", "n_init", "max_iter", "tol"))


def class_kmeans(
    x: jax.Array | np.ndarray,
    labels: jax.Array | np.ndarray,
    *,
    num_classes: int,
    per_class: int,
    rng: jax.Array,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
) -> ClassCentroids:
    """k-means with `per_class` clusters on the rows of each class, all classes in one
    compiled, vmapped fit.

    Class c uses the key `jax.random.split(rng, num_classes)[c]`; its result equals
    `kmeans(x[labels == c], per_class, key_c, ...)` up to float32 summation order.

    Args:
      x: `[N, D]` embeddings.
      labels: `[N]` int classes in [0, num_classes).
      num_classes: K.
      per_class: M, centroids per class; every class needs at least M rows.
      rng: a PRNG key.
      n_init, max_iter, tol: as `kmeans` (scikit-learn's defaults before 1.4).

    Returns:
      `ClassCentroids(centroids [K·M, D], prototype_class, assignment [N], importance,
      nearest, inertia [K])`.
    """
    x = np.asarray(x, np.float32)
    labels = np.asarray(labels).astype(np.int64)
    if x.ndim != 2 or labels.shape != (x.shape[0],):
        raise ValueError(f"x must be [N, D] and labels [N]; got {x.shape} and {labels.shape}.")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise ValueError(f"labels must lie in [0, {num_classes}).")
    counts = np.bincount(labels, minlength=num_classes)
    short = np.flatnonzero(counts < per_class)
    if short.size:
        raise ValueError(
            f"Classes {short.tolist()} have fewer than {per_class} rows "
            f"({counts[short].tolist()}); lower the centroids per class."
        )
    index, valid = _class_blocks(labels, num_classes)
    keys = jax.random.split(rng, num_classes)
    result = _fit_blocks_jit(
        jnp.asarray(x[index]),
        jnp.asarray(valid, jnp.float32),
        keys,
        per_class=per_class,
        n_init=n_init,
        max_iter=max_iter,
        tol=tol,
    )
    centroids = np.asarray(result.centroids)  # [K, M, D]
    local = np.asarray(result.labels)  # [K, N_max]
    offsets = (np.arange(num_classes) * per_class)[:, None]
    assignment = np.zeros(x.shape[0], np.int32)
    assignment[index[valid]] = (local + offsets)[valid]
    importance = np.bincount(assignment, minlength=num_classes * per_class).astype(np.int32)
    # The nearest real row of the class to each of its centroids.
    d = np.asarray(jax.vmap(squared_l2_distances)(jnp.asarray(centroids), jnp.asarray(x[index])))
    d = np.where(valid[:, None, :], d, np.inf)  # [K, M, N_max]
    nearest = np.take_along_axis(index, np.argmin(d, axis=2), axis=1)  # [K, M]
    return ClassCentroids(
        centroids=jnp.asarray(centroids.reshape(num_classes * per_class, -1)),
        prototype_class=jnp.arange(num_classes * per_class, dtype=jnp.int32) // per_class,
        assignment=jnp.asarray(assignment),
        importance=jnp.asarray(importance),
        nearest=jnp.asarray(nearest.reshape(-1).astype(np.int32)),
        inertia=jnp.asarray(result.inertia, jnp.float32),
    )


def nearest_centroid_logits(z: jax.Array, centroids: jax.Array, *, num_classes: int) -> jax.Array:
    """Logits `[B, K]` = −(squared distance from `z [B, D]` to the nearest centroid of each
    class), for class-grouped `centroids [K·M, D]`; the argmax is the nearest centroid's class."""
    d2 = squared_l2_distances(z.astype(jnp.float32), centroids)  # [B, K·M]
    return -jnp.min(d2.reshape(z.shape[0], num_classes, -1), axis=-1)


def soft_centroid_log_probabilities(
    z: jax.Array, centroids: jax.Array, *, num_classes: int, eps: float = 1e-4
) -> jax.Array:
    """Log class probabilities `[B, K]`: the softmax over all centroids of the similarity
    log((d + 1)/(d + eps)), d Euclidean, summed over each class's centroids (KMEx's soft
    prediction)."""
    similarities = log_similarity(l2_distances(z.astype(jnp.float32), centroids), eps=eps)
    log_p = jax.nn.log_softmax(similarities, axis=-1).reshape(z.shape[0], num_classes, -1)
    return jax.scipy.special.logsumexp(log_p, axis=-1)


__all__ = [
    "ClassCentroids",
    "class_kmeans",
    "nearest_centroid_logits",
    "soft_centroid_log_probabilities",
]
