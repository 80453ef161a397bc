"""k-means as scikit-learn runs it, in JAX: greedy k-means++ seeding, then Lloyd iterations.

`kmeans` follows `sklearn.cluster.KMeans(algorithm="lloyd")`:
- the data are centred on their (weighted) mean first, for precision;
- greedy k-means++: the first centre is drawn with probability proportional to the sample
  weight, each later one is the best of 2 + ⌊ln k⌋ candidates drawn proportionally to
  weight × squared distance to the nearest centre so far;
- Lloyd iterations, `n_init` runs vmapped together in one `lax.while_loop`; an empty cluster
  is re-seeded with the point farthest from its centre, the farthest for the first empty
  cluster, the second farthest for the second, and so on;
- a run stops when its labels no longer change, or when the summed squared centre shift
  is at most `tol · mean(var(x, axis=0))`;
- the labels are recomputed for the final centres, and the run of lowest inertia wins.

Sample weights make per-class clustering cheap: fitting class c with
`weights = (labels == c)` equals fitting that class's rows alone, and every class reuses one
compiled program because the shapes do not change.

Memory: in memory (`batch_size=None`) the fit keeps two float32 copies of `x` (centred and
transposed, the matmul's layout; and weighted, for the cluster sums) and `[n_init, k, N]`
distances. With `batch_size`, every pass reads the data in chunks of that many rows, so
the working memory is O(batch_size · (k + D) · n_init) besides `x` itself and the O(N)
labels and distances of each run.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.distances import HIGHEST, squared_l2_distances


class KMeansResult(NamedTuple):
    """The best of the `n_init` runs.

    Attributes:
      centroids: `[k, D]` float32.
      labels: `[N]` int32, the nearest centroid of every row (zero-weight rows included).
      inertia: `[]` float32, Σ weight · squared distance to the nearest centroid.
      n_iter: `[]` int32, the Lloyd iterations the winning run took.
    """

    centroids: jax.Array
    labels: jax.Array
    inertia: jax.Array
    n_iter: jax.Array


class _Data(NamedTuple):
    """The data as the passes read them.

    In memory, `x` holds the centred float32 rows, transposed, and `weighted` the weighted
    rows, both made once. When streaming, `x` is the input as given, and each chunk is
    centred, weighted and transposed as it is read.
    """

    x: jax.Array  # [D, N] in memory, [N, D] when streaming
    mean: jax.Array  # [D] float32, the weighted mean
    weighted: jax.Array | None  # [N, D] float32, x · weights; in memory only
    sq_norms: jax.Array  # [N] float32, squared norms of the centred rows
    weights: jax.Array  # [N] float32


class _Chunks(NamedTuple):
    """Static chunking of N rows: the last chunk is shifted back to end at row N, and its
    rows that the previous chunk already covered are masked out (no padding copy of x)."""

    size: int
    starts: tuple[int, ...]  # first row of each chunk
    skips: tuple[int, ...]  # leading rows of each chunk that an earlier chunk covered

    @classmethod
    def of(cls, n: int, size: int) -> _Chunks:
        count = -(-n // size)
        nominal = [i * size for i in range(count)]
        starts = tuple(min(s, n - size) for s in nominal)
        return cls(size, starts, tuple(a - b for a, b in zip(nominal, starts)))

    @property
    def streaming(self) -> bool:
        return len(self.starts) > 1


class _Chunk(NamedTuple):
    """One chunk of rows as a pass sees it."""

    rows_t: jax.Array  # [D, size] float32, centred and transposed (the layout of the matmul)
    weighted: jax.Array  # [size, D] float32, rows · weights
    sq_norms: jax.Array  # [size]
    weights: jax.Array  # [size], 0 on rows that an earlier chunk covered
    extra: tuple[jax.Array, ...]  # [size, ...] slices of per-row inputs of the pass


def _scan_chunks(fn, carry, data: _Data, chunks: _Chunks, extra: tuple[jax.Array, ...] = ()):
    """Runs `fn(carry, chunk) -> (carry, per_row)` over the chunks of the data.

    Rows an earlier chunk covered have weight 0 in `chunk.weights`, so weighted sums count
    every row once. Returns the final carry and the per-row outputs stitched to `[N, ...]`.
    """
    if not chunks.streaming:
        return fn(carry, _Chunk(data.x, data.weighted, data.sq_norms, data.weights, extra))
    size, d = chunks.size, data.x.shape[1]

    def body(carry, start_skip):
        start, skip = start_skip
        rows = jax.lax.dynamic_slice(data.x, (start, 0), (size, d)).astype(jnp.float32)
        rows = rows - data.mean
        weights = jax.lax.dynamic_slice_in_dim(data.weights, start, size)
        weights = jnp.where(jnp.arange(size) >= skip, weights, 0.0)
        chunk = _Chunk(
            rows_t=rows.T,
            weighted=rows * weights[:, None],
            sq_norms=jax.lax.dynamic_slice_in_dim(data.sq_norms, start, size),
            weights=weights,
            extra=tuple(jax.lax.dynamic_slice_in_dim(e, start, size) for e in extra),
        )
        return fn(carry, chunk)

    starts_skips = (jnp.asarray(chunks.starts, jnp.int32), jnp.asarray(chunks.skips, jnp.int32))
    carry, per_row = jax.lax.scan(body, carry, starts_skips)
    skip = chunks.skips[-1]

    def stitch(y):  # [count, size, ...] -> [N, ...]
        return jnp.concatenate([y[:-1].reshape(-1, *y.shape[2:]), y[-1, skip:]], axis=0)

    return carry, jax.tree.map(stitch, per_row)


def _prepare(x: jax.Array, weights: jax.Array, chunks: _Chunks) -> tuple[_Data, jax.Array]:
    """Centres the data on its weighted mean; returns it and the weighted variances `[D]`."""
    n, d = x.shape
    total = jnp.sum(weights)
    if not chunks.streaming:
        rows = x.astype(jnp.float32)
        mean = jnp.dot(weights, rows, precision=HIGHEST) / total
        rows = rows - mean
        squares = rows * rows
        data = _Data(rows.T, mean, rows * weights[:, None], jnp.sum(squares, axis=1), weights)
        return data, jnp.dot(weights, squares, precision=HIGHEST) / total

    # Two passes over the chunks, so that no float32 copy of x is made: the weighted mean,
    # then the squared norms of the centred rows and the weighted variances.
    data = _Data(x, jnp.zeros((d,), jnp.float32), None, jnp.zeros((n,), jnp.float32), weights)

    def weighted_sum(acc, chunk):
        return acc + jnp.dot(chunk.rows_t, chunk.weights, precision=HIGHEST), None

    data = data._replace(mean=_scan_chunks(weighted_sum, data.mean, data, chunks)[0] / total)

    def norms(acc, chunk):
        squares = chunk.rows_t * chunk.rows_t
        return acc + jnp.dot(squares, chunk.weights, precision=HIGHEST), jnp.sum(squares, axis=0)

    sums, sq_norms = _scan_chunks(norms, jnp.zeros((d,), jnp.float32), data, chunks)
    return data._replace(sq_norms=sq_norms), sums / total


def _sq_distances_t(centers: jax.Array, rows_t: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Squared distances `[k, n]` from `centers [k, D]` to centred rows `rows_t [D, n]`.

    The formula of `squared_l2_distances` at `Precision.HIGHEST`, laid out centres-first:
    on CPU the `[k, D] × [D, n]` product is markedly faster than `[n, k]` when k is small.
    """
    c2 = jnp.sum(centers * centers, axis=1)
    cross = jnp.dot(centers, rows_t, precision=HIGHEST)
    return jnp.maximum(sq_norms[None, :] - 2.0 * cross + c2[:, None], 0.0)


def _nearest(centers: jax.Array, chunk: _Chunk) -> tuple[jax.Array, jax.Array]:
    """Index `[size]` int32 (the first on ties) and squared distance `[size]` of the nearest
    centre."""
    # As scikit-learn's Lloyd step: compare ‖c‖² − 2⟨x, c⟩ and add ‖x‖² to the winner only.
    c2 = jnp.sum(centers * centers, axis=1)
    partial = jnp.dot(-2.0 * centers, chunk.rows_t, precision=HIGHEST) + c2[:, None]  # [k, size]

    # A running minimum over the k rows: on CPU several times faster than argmin over axis 0.
    def closer(j, state):
        best, labels = state
        better = partial[j] < best
        return jnp.where(better, partial[j], best), jnp.where(better, j, labels)

    init = (partial[0], jnp.zeros(partial.shape[1:], jnp.int32))
    best, labels = jax.lax.fori_loop(1, partial.shape[0], closer, init, unroll=8)
    return labels, jnp.maximum(best + chunk.sq_norms, 0.0)


def _rows(data: _Data, indices: jax.Array) -> jax.Array:
    """The centred rows `[T, D]` at `indices [T]`."""
    if data.weighted is None:
        return data.x[indices].astype(jnp.float32) - data.mean
    return data.x[:, indices].T


def _weighted_choice(uniforms: jax.Array, masses: jax.Array) -> jax.Array:
    """Row indices `[T]` drawn with probability proportional to `masses [N]` ≥ 0.

    Inverse-CDF sampling as scikit-learn does it, from `uniforms [T]` in [0, 1): the first
    row whose cumulative mass exceeds u · total. A row of zero mass is never drawn.
    """
    cumulative = jnp.cumsum(masses)
    targets = uniforms * cumulative[-1]
    # searchsorted(side="right"): the number of cumulative masses ≤ each target.
    indices = jnp.sum(cumulative[None, :] <= targets[:, None], axis=1)
    return jnp.minimum(indices, masses.shape[0] - 1).astype(jnp.int32)


def _kmeans_plusplus(data: _Data, uniforms: jax.Array, chunks: _Chunks) -> jax.Array:
    """Greedy k-means++ seeding from `uniforms [k, T]` in [0, 1): centred centres `[k, D]`.

    Step 0 draws the first centre with probability proportional to the weight; each later
    step draws T = 2 + ⌊ln k⌋ candidates proportionally to weight × squared distance to the
    nearest centre so far, and keeps the one that lowers the potential Σ weight · distance
    most. One loop does both (at step 0 every distance is +inf and one candidate counts).
    """
    k, num_trials = uniforms.shape

    def add_center(c, state):
        centers, closest = state
        first = c == 0
        ids = _weighted_choice(uniforms[c], jnp.where(first, data.weights, data.weights * closest))
        candidates = _rows(data, ids)  # [T, D]

        def potentials(total, chunk):
            dist = _sq_distances_t(candidates, chunk.rows_t, chunk.sq_norms)  # [T, size]
            nearest = jnp.minimum(dist, chunk.extra[0][None, :])
            return total + jnp.dot(nearest, chunk.weights, precision=HIGHEST), None

        totals, _ = _scan_chunks(potentials, jnp.zeros(num_trials), data, chunks, (closest,))
        totals = jnp.where(first & (jnp.arange(num_trials) > 0), jnp.inf, totals)
        best = candidates[jnp.argmin(totals)]

        def distances_to_best(carry, chunk):
            return carry, _sq_distances_t(best[None], chunk.rows_t, chunk.sq_norms)[0]

        _, dist = _scan_chunks(distances_to_best, (), data, chunks)
        return centers.at[c].set(best), jnp.minimum(closest, dist)

    centers = jnp.zeros((k, data.mean.shape[0]), jnp.float32)
    closest = jnp.full(data.weights.shape, jnp.inf, jnp.float32)
    return jax.lax.fori_loop(0, k, add_center, (centers, closest))[0]


def _reseed_empty(data, sums, counts, labels, distances):
    """Moves the farthest points into the empty clusters, as scikit-learn does.

    Args:
      sums: `[k, D]` weighted sums of the rows of each cluster; counts: `[k]` their weights;
      labels, distances: `[N]` each row's cluster and squared distance to its centre.

    Returns:
      The updated `(sums, counts)`; the r-th empty cluster takes the r-th farthest row of
      positive weight, which leaves its old cluster.
    """
    k = counts.shape[0]
    empty = counts <= 0
    clusters = jnp.arange(k)
    rank = jnp.sum(empty[None, :] & (clusters[None, :] < clusters[:, None]), axis=1)
    farthest = jax.lax.top_k(jnp.where(data.weights > 0, distances, -1.0), k)[1]
    moved = farthest[rank]  # [k], used where `empty`
    moved_weight = jnp.where(empty, data.weights[moved], 0.0)
    moved_sum = _rows(data, moved) * moved_weight[:, None]
    # leaves[j, c]: the row moved into cluster j came from cluster c.
    leaves = (labels[moved][:, None] == clusters[None, :]).astype(jnp.float32)
    lost_sum = jnp.dot(leaves.T, moved_sum, precision=HIGHEST)
    lost_weight = jnp.dot(leaves.T, moved_weight, precision=HIGHEST)
    sums = jnp.where(empty[:, None], moved_sum, sums - lost_sum)
    counts = jnp.where(empty, moved_weight, counts - lost_weight)
    return sums, counts


def _cluster_sums(k: int):
    """`(weighted [n, D], weights [n], labels [n]) -> (sums [k, D], counts [k])`.

    Under vmap over the runs, only `labels` is batched. Plain batching would broadcast the
    shared `weighted` rows to every run, a copy of the data per iteration; the rule below
    scatters once per run from the shared rows instead.
    """

    def sums(weighted, weights, labels):
        return (
            jax.ops.segment_sum(weighted, labels, k),
            jax.ops.segment_sum(weights, labels, k),
        )

    @jax.custom_batching.custom_vmap
    def batchable(weighted, weights, labels):
        return sums(weighted, weights, labels)

    @batchable.def_vmap
    def _(axis_size, in_batched, weighted, weights, labels):
        if in_batched[0] or in_batched[1]:  # the rows differ per run too: nothing is shared
            axes = tuple(0 if b else None for b in in_batched)
            return jax.vmap(sums, in_axes=axes)(weighted, weights, labels), (True, True)
        return jax.lax.map(lambda run_labels: sums(weighted, weights, run_labels), labels), (
            True,
            True,
        )

    return batchable


def _lloyd(data: _Data, centers: jax.Array, tol: jax.Array, max_iter: int, chunks: _Chunks):
    """Lloyd iterations from centred `centers [k, D]`.

    The pass after the stopping iteration only assigns the rows to the final centres (the
    labels scikit-learn recomputes after its loop), so that one loop does both.

    Returns:
      `(centers [k, D], labels [N], squared distances [N], n_iter)`.
    """
    k, d = centers.shape
    positive = data.weights > 0
    cluster_sums = _cluster_sums(k)

    def step(state):
        centers, old_labels, _, n_iter, stopped, _ = state

        def accumulate(carry, chunk):
            sums, counts = carry
            labels, dist = _nearest(centers, chunk)
            chunk_sums, chunk_counts = cluster_sums(chunk.weighted, chunk.weights, labels)
            return (sums + chunk_sums, counts + chunk_counts), (labels, dist)

        zeros = (jnp.zeros((k, d), jnp.float32), jnp.zeros((k,), jnp.float32))
        (sums, counts), (labels, dist) = _scan_chunks(accumulate, zeros, data, chunks)
        sums, counts = _reseed_empty(data, sums, counts, labels, dist)
        new_centers = jnp.where(counts[:, None] > 0, sums / counts[:, None], centers)
        shift = jnp.sum((new_centers - centers) ** 2)
        unchanged = ~jnp.any(positive & (labels != old_labels))
        converged = unchanged | (shift <= tol) | (n_iter + 1 >= max_iter)
        return (
            jnp.where(stopped, centers, new_centers),
            labels,
            dist,
            jnp.where(stopped, n_iter, n_iter + 1),
            converged | stopped,
            stopped,  # the final assignment is done
        )

    init = (
        centers,
        jnp.full(data.weights.shape, -1, jnp.int32),
        jnp.zeros(data.weights.shape, jnp.float32),
        jnp.int32(0),
        jnp.bool_(False),
        jnp.bool_(False),
    )
    centers, labels, dist, n_iter, _, _ = jax.lax.while_loop(lambda s: ~s[5], step, init)
    return centers, labels, dist, n_iter


@functools.partial(jax.jit, static_argnames=("max_iter", "chunk_size"))
def _fit(x, weights, uniforms, tol, *, max_iter, chunk_size) -> KMeansResult:
    chunks = _Chunks.of(x.shape[0], chunk_size)
    weights = weights.astype(jnp.float32)
    data, variances = _prepare(x, weights, chunks)
    tol = tol * jnp.mean(variances)

    def run(uniforms):
        centers = _kmeans_plusplus(data, uniforms, chunks)
        centers, labels, dist, n_iter = _lloyd(data, centers, tol, max_iter, chunks)
        return centers, labels, jnp.dot(dist, weights, precision=HIGHEST), n_iter

    centers, labels, inertia, n_iter = jax.vmap(run)(uniforms)
    best = jnp.argmin(inertia)  # the first of equal inertias, as scikit-learn keeps
    return KMeansResult(centers[best] + data.mean, labels[best], inertia[best], n_iter[best])


def kmeans(
    x: jax.Array,
    k: int,
    rng: jax.Array,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    weights: jax.Array | None = None,
    batch_size: int | None = None,
) -> KMeansResult:
    """k-means with greedy k-means++ seeding, as `sklearn.cluster.KMeans` fits it.

    Jit-compiled once per (shape, dtype, k, n_init, max_iter, batch_size); `weights`, `tol`
    and `rng` are traced, so fitting another class or seed does not recompile.

    Args:
      x: `[N, D]` data; computed in float32, centred on the weighted mean.
      k: number of clusters, at most the number of rows of positive weight.
      rng: a PRNG key; all the seedings draw from it at once.
      n_init: independent seedings, run together (vmapped); the lowest inertia wins.
      max_iter: Lloyd iterations per run at most.
      tol: a run stops when the summed squared centre shift is at most
        `tol · mean(var(x, axis=0))` (weighted variance), or when its labels stop changing.
      weights: optional `[N]` non-negative sample weights. A row of weight 0 takes no part in
        the fit (it still gets a label), so `weights = (y == c)` fits class c alone.
      batch_size: if given, every pass reads the data in chunks of this many rows, so that the
        working memory does not grow with N. The result equals the in-memory one up to
        float32 summation order.

    Returns:
      `KMeansResult(centroids [k, D], labels [N] int32, inertia [], n_iter [])`.
    """
    if x.ndim != 2:
        raise ValueError(f"x must be [N, D], got shape {x.shape}; flatten the feature axes.")
    n = x.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must be between 1 and the number of rows {n}, got {k}.")
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise ValueError(
            f"n_init and max_iter must be ≥ 1 and tol ≥ 0, got {n_init}, {max_iter}, {tol}."
        )
    if batch_size is not None and batch_size < 1:
        raise ValueError(f"batch_size must be a positive row count or None, got {batch_size}.")
    if weights is None:
        weights = jnp.ones((n,), jnp.float32)
    elif weights.shape != (n,):
        raise ValueError(
            f"weights must be [N] = ({n},), got {weights.shape}; give one weight per row."
        )
    elif not isinstance(weights, jax.core.Tracer):
        values = np.asarray(weights)
        if not np.all(np.isfinite(values) & (values >= 0)):
            raise ValueError("weights must be finite and non-negative; 0 leaves a row out.")
        if np.count_nonzero(values) < k:
            raise ValueError(
                f"k = {k} clusters need at least {k} rows of positive weight, got "
                f"{np.count_nonzero(values)}; lower k or give more rows weight."
            )
    chunk_size = n if batch_size is None else min(batch_size, n)
    # All the seedings' randomness in one draw, outside the fit: one small program per
    # (n_init, k), shared by every data shape.
    uniforms = jax.random.uniform(rng, (n_init, k, 2 + int(math.log(k))))
    return _fit(x, weights, uniforms, tol, max_iter=max_iter, chunk_size=chunk_size)


def kmeans_predict(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid (the first on ties).

    Args:
      x: `[..., D]`.
      centroids: `[k, D]`.

    Returns:
      `[...]` int32 labels.
    """
    return jnp.argmin(squared_l2_distances(x, centroids), axis=-1).astype(jnp.int32)
