"""k-means as scikit-learn runs it, in JAX: greedy k-means++ seeding, then Lloyd iterations.

`kmeans` follows `sklearn.cluster.KMeans(algorithm="lloyd")`:
- the data are centred on their (weighted) mean first, for precision;
- greedy k-means++: the first centre is drawn with probability proportional to the sample
  weight, each later one is the best of 2 + ⌊ln k⌋ candidates drawn proportionally to
  weight × squared distance to the nearest centre so far;
- Lloyd iterations, the `n_init` runs together in one `lax.while_loop`; an empty cluster
  is re-seeded with the point farthest from its centre, the farthest for the first empty
  cluster, the second farthest for the second, and so on;
- a run stops when its labels no longer change, or when the summed squared centre shift
  is at most `tol · mean(var(x, axis=0))`;
- the labels are recomputed for the final centres, and the run of lowest inertia wins.

The cluster sums of an iteration are those of the last full recomputation plus the rows
whose label has changed since (few, after the first iterations); they are recomputed in
full when more than `N / 16` rows (at most `batch_size`) have changed, or when a cluster
would lose more than half of its rows, which bounds the float32 cancellation. The result
is the full recomputation's up to float32 summation order.

Sample weights make per-class clustering cheap: fitting class c with
`weights = (labels == c)` equals fitting that class's rows alone, and every class reuses one
compiled program because the shapes do not change.

Memory: in memory (`batch_size=None`) the fit keeps two float32 copies of `x` (centred,
and weighted for the cluster sums), `[n_init, k, N]` distances and N / 16 gathered rows.
With `batch_size`, every pass reads the data in chunks of that many rows, and at most that
many changed rows are gathered, so the working memory is O(batch_size · (k + D) · n_init)
besides `x` itself and the O(N) labels and distances of each run.
"""

from __future__ import annotations

import functools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.prototypes.distances import HIGHEST, squared_l2_distances

# Rows whose label changed, as a fraction of N, up to which the cluster sums are updated
# from those rows instead of recomputed.
_CHANGED_CAPACITY_DIVISOR = 16


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

    In memory, `x` holds the centred float32 rows and `weighted` the weighted rows, both
    made once. When streaming, `x` is the input as given, and each chunk is centred and
    weighted as it is read.
    """

    x: jax.Array  # [N, D]
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

    rows: jax.Array  # [size, D] float32, centred
    weighted: jax.Array  # [size, D] float32, rows · weights
    sq_norms: jax.Array  # [size]
    weights: jax.Array  # [size], 0 on rows that an earlier chunk covered
    extra: tuple[jax.Array, ...]  # [..., size] slices (last axis) of per-row inputs of the pass


def _scan_chunks(fn, carry, data: _Data, chunks: _Chunks, extra: tuple[jax.Array, ...] = ()):
    """Runs `fn(carry, chunk) -> (carry, per_row)` over the chunks of the data.

    Per-row arrays, in `extra` and in the outputs, have the rows on their last axis. Rows an
    earlier chunk covered have weight 0 in `chunk.weights`, so weighted sums count every row
    once. Returns the final carry and the per-row outputs stitched to `[..., N]`.
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
            rows=rows,
            weighted=rows * weights[:, None],
            sq_norms=jax.lax.dynamic_slice_in_dim(data.sq_norms, start, size),
            weights=weights,
            extra=tuple(jax.lax.dynamic_slice_in_dim(e, start, size, axis=-1) for e in extra),
        )
        return fn(carry, chunk)

    starts_skips = (jnp.asarray(chunks.starts, jnp.int32), jnp.asarray(chunks.skips, jnp.int32))
    carry, per_row = jax.lax.scan(body, carry, starts_skips)
    skip = chunks.skips[-1]

    def stitch(y):  # [count, ..., size] -> [..., N]
        y = jnp.moveaxis(y, 0, -2)
        head = y[..., :-1, :].reshape(*y.shape[:-2], -1)
        return jnp.concatenate([head, y[..., -1, skip:]], axis=-1)

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
        data = _Data(rows, mean, rows * weights[:, None], jnp.sum(squares, axis=1), weights)
        return data, jnp.dot(weights, squares, precision=HIGHEST) / total

    # Two passes over the chunks, so that no float32 copy of x is made: the weighted mean,
    # then the squared norms of the centred rows and the weighted variances.
    data = _Data(x, jnp.zeros((d,), jnp.float32), None, jnp.zeros((n,), jnp.float32), weights)

    def weighted_sum(acc, chunk):
        return acc + jnp.dot(chunk.weights, chunk.rows, precision=HIGHEST), None

    data = data._replace(mean=_scan_chunks(weighted_sum, data.mean, data, chunks)[0] / total)

    def norms(acc, chunk):
        squares = chunk.rows * chunk.rows
        return acc + jnp.dot(chunk.weights, squares, precision=HIGHEST), jnp.sum(squares, axis=1)

    sums, sq_norms = _scan_chunks(norms, jnp.zeros((d,), jnp.float32), data, chunks)
    return data._replace(sq_norms=sq_norms), sums / total


def _cross(centers: jax.Array, rows: jax.Array) -> jax.Array:
    """`⟨c, x⟩` `[m, n]` of `centers [m, D]` and `rows [n, D]` at `Precision.HIGHEST`.

    Laid out centres-first and contracting both last axes: on CPU this form of the product
    is markedly faster than `[n, m]`, or than a `[D, n]` copy of the rows, when m is small.
    """
    return jax.lax.dot_general(centers, rows, (((1,), (1,)), ((), ())), precision=HIGHEST)


def _sq_distances(centers: jax.Array, rows: jax.Array, sq_norms: jax.Array) -> jax.Array:
    """Squared distances `[m, n]` from `centers [m, D]` to centred `rows [n, D]`: the formula
    of `squared_l2_distances`, laid out as `_cross`."""
    c2 = jnp.sum(centers * centers, axis=1)
    return jnp.maximum(sq_norms[None, :] - 2.0 * _cross(centers, rows) + c2[:, None], 0.0)


def _nearest(centers: jax.Array, chunk: _Chunk) -> tuple[jax.Array, jax.Array]:
    """For `centers [R, k, D]` of R runs: the index `[R, size]` int32 (the first on ties) and
    squared distance `[R, size]` of each row's nearest centre in each run."""
    runs, k, d = centers.shape
    # Cluster-major, so that the running minimum below reads contiguous rows.
    flat = jnp.swapaxes(centers, 0, 1).reshape(k * runs, d)
    # As scikit-learn's Lloyd step: compare ‖c‖² − 2⟨x, c⟩ and add ‖x‖² to the winner only.
    c2 = jnp.sum(flat * flat, axis=1)
    # [k, R · size], a free reshape of the [k · R, size] product (a [k, R, size] one copies).
    partial = (_cross(-2.0 * flat, chunk.rows) + c2[:, None]).reshape(k, -1)

    # A running minimum over the k clusters: on CPU several times faster than argmin.
    def closer(j, state):
        best, labels = state
        better = partial[j] < best
        return jnp.where(better, partial[j], best), jnp.where(better, j, labels)

    init = (partial[0], jnp.zeros(partial.shape[1:], jnp.int32))
    best, labels = jax.lax.fori_loop(1, k, closer, init, unroll=8)
    best, labels = best.reshape(runs, -1), labels.reshape(runs, -1)
    return labels, jnp.maximum(best + chunk.sq_norms, 0.0)


def _rows(data: _Data, indices: jax.Array) -> jax.Array:
    """The centred rows `[T, D]` at `indices [T]`."""
    if data.weighted is None:
        return data.x[indices].astype(jnp.float32) - data.mean
    return data.x[indices]


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
            dist = _sq_distances(candidates, chunk.rows, chunk.sq_norms)  # [T, size]
            nearest = jnp.minimum(dist, chunk.extra[0][None, :])
            return total + jnp.dot(nearest, chunk.weights, precision=HIGHEST), None

        totals, _ = _scan_chunks(potentials, jnp.zeros(num_trials), data, chunks, (closest,))
        totals = jnp.where(first & (jnp.arange(num_trials) > 0), jnp.inf, totals)
        best = candidates[jnp.argmin(totals)]

        def distances_to_best(carry, chunk):
            return carry, _sq_distances(best[None], chunk.rows, chunk.sq_norms)[0]

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


class _Sums(NamedTuple):
    """Per-run cluster sums of the rows of positive weight, for one labelling."""

    sums: jax.Array  # [R, k, D] float32, Σ weight · row
    counts: jax.Array  # [R, k] float32, Σ weight
    members: jax.Array  # [R, k] int32, the number of rows


def _segment_sums(weighted, weights, labels, k: int) -> _Sums:
    """`_Sums` of `weighted [n, D]` and `weights [n]` grouped by `labels [R, n]`; a label
    outside [0, k) drops its row.

    A loop over the runs, so that the rows shared by every run are read in place: batching
    the segment sum over the runs would broadcast them, a copy of the data per run.
    """
    members = (weights > 0).astype(jnp.int32)

    def one_run(run_labels):
        return _Sums(
            jax.ops.segment_sum(weighted, run_labels, k),
            jax.ops.segment_sum(weights, run_labels, k),
            jax.ops.segment_sum(members, run_labels, k),
        )

    return jax.lax.map(one_run, labels)


def _full_sums(data: _Data, chunks: _Chunks, labels: jax.Array, k: int) -> _Sums:
    """`_Sums` of all the rows grouped by `labels [R, N]`, chunk by chunk when streaming."""
    runs, d = labels.shape[0], data.mean.shape[0]

    def accumulate(total, chunk):
        part = _segment_sums(chunk.weighted, chunk.weights, chunk.extra[0], k)
        return jax.tree.map(jnp.add, total, part), None

    zeros = _Sums(
        jnp.zeros((runs, k, d), jnp.float32),
        jnp.zeros((runs, k), jnp.float32),
        jnp.zeros((runs, k), jnp.int32),
    )
    return _scan_chunks(accumulate, zeros, data, chunks, (labels,))[0]


def _moved_sums(data: _Data, moved, labels, base_labels, k: int, capacity: int):
    """The cluster sums of the `moved [R, N]` rows: those of positive weight whose `labels`
    differ from their `base_labels`, both `[R, N]`.

    At most `capacity` rows per run are gathered (the first ones; the caller checks that no
    more moved). Returns `(arrived, departed)`, two `_Sums`: the moved rows grouped by their
    new labels and by their base labels.
    """
    n = labels.shape[1]

    def one_run(run):
        run_moved, run_labels, run_base = run
        indices = jnp.nonzero(run_moved, size=capacity, fill_value=n)[0]
        valid = indices < n
        indices = jnp.minimum(indices, n - 1)
        weights = jnp.where(valid, data.weights[indices], 0.0)
        weighted = _rows(data, indices) * weights[:, None]
        # The padding slots take the out-of-range label k, which the segment sums drop.
        to = jnp.where(valid, run_labels[indices], k)
        frm = jnp.where(valid, run_base[indices], k)
        both = _segment_sums(weighted, weights, jnp.stack([to, frm]), k)
        return jax.tree.map(lambda x: x[0], both), jax.tree.map(lambda x: x[1], both)

    return jax.lax.map(one_run, (moved, labels, base_labels))


class _Loop(NamedTuple):
    """The state of the Lloyd loop; every field has the runs on its first axis."""

    centers: jax.Array  # [R, k, D]
    labels: jax.Array  # [R, N] int32, -1 before the first pass
    distances: jax.Array  # [R, N] squared distance to the labelled centre
    base_labels: jax.Array  # [R, N] int32, the labels of the last full recomputation
    base: _Sums  # the cluster sums of `base_labels`
    n_iter: jax.Array  # [R] int32
    stopped: jax.Array  # [R] bool: converged; the next pass only assigns the labels
    done: jax.Array  # [R] bool: that final assignment is made


def _lloyd(data: _Data, centers: jax.Array, tol: jax.Array, max_iter: int, chunks: _Chunks):
    """Lloyd iterations of R runs from centred `centers [R, k, D]`.

    The runs share each pass over the data; a run that has stopped keeps its centres while
    the others go on. The pass after a run's stopping iteration only assigns its rows to the
    final centres (the labels scikit-learn recomputes after its loop), so that one loop does
    both.

    Returns:
      `(centers [R, k, D], labels [R, N], squared distances [R, N], n_iter [R])`.
    """
    runs, k, d = centers.shape
    n = data.weights.shape[0]
    positive = data.weights > 0
    capacity = max(1, min(n // _CHANGED_CAPACITY_DIVISOR, chunks.size))

    def step(state: _Loop) -> _Loop:
        def assign(carry, chunk):
            return carry, _nearest(state.centers, chunk)

        _, (labels, dist) = _scan_chunks(assign, (), data, chunks)

        # The sums of the new labels: the base sums plus the rows that changed cluster since,
        # unless too many changed, or a cluster loses more than half of its rows (float32
        # cancellation); then a full recomputation, which becomes the new base.
        moved = positive & (labels != state.base_labels)  # [R, N]
        arrived, departed = _moved_sums(data, moved, labels, state.base_labels, k, capacity)
        incremental = jnp.all(jnp.sum(moved, axis=1) <= capacity) & jnp.all(
            2 * departed.members <= state.base.members
        )

        def update():
            sums = jax.tree.map(lambda b, a, o: b + (a - o), state.base, arrived, departed)
            return state.base_labels, state.base, sums

        def recompute():
            sums = _full_sums(data, chunks, labels, k)
            return labels, sums, sums

        base_labels, base, current = jax.lax.cond(incremental, update, recompute)
        # Conditional, so that the top-k over the rows runs only when a cluster is empty.
        sums, counts = jax.lax.cond(
            jnp.any(current.counts <= 0),
            jax.vmap(functools.partial(_reseed_empty, data)),
            lambda sums, counts, *_: (sums, counts),
            current.sums,
            current.counts,
            labels,
            dist,
        )

        new_centers = jnp.where(counts[..., None] > 0, sums / counts[..., None], state.centers)
        shift = jnp.sum((new_centers - state.centers) ** 2, axis=(1, 2))
        unchanged = ~jnp.any(positive & (labels != state.labels), axis=1)
        converged = unchanged | (shift <= tol) | (state.n_iter + 1 >= max_iter)
        return _Loop(
            centers=jnp.where(state.stopped[:, None, None], state.centers, new_centers),
            labels=labels,
            distances=dist,
            base_labels=base_labels,
            base=base,
            n_iter=jnp.where(state.stopped, state.n_iter, state.n_iter + 1),
            stopped=converged | state.stopped,
            done=state.stopped,
        )

    no_labels = jnp.full((runs, n), -1, jnp.int32)
    init = _Loop(
        centers=centers,
        labels=no_labels,
        distances=jnp.zeros((runs, n), jnp.float32),
        base_labels=no_labels,
        base=_Sums(
            jnp.zeros((runs, k, d), jnp.float32),
            jnp.zeros((runs, k), jnp.float32),
            jnp.zeros((runs, k), jnp.int32),
        ),
        n_iter=jnp.zeros((runs,), jnp.int32),
        stopped=jnp.zeros((runs,), bool),
        done=jnp.zeros((runs,), bool),
    )
    final = jax.lax.while_loop(lambda s: ~jnp.all(s.done), step, init)
    return final.centers, final.labels, final.distances, final.n_iter


@functools.partial(jax.jit, static_argnames=("max_iter", "chunk_size"))
def _fit(x, weights, uniforms, init, tol, *, max_iter, chunk_size) -> KMeansResult:
    """Seeds `R` runs from `uniforms [R, k, T]`, or starts from `init [R, k, D]` if given."""
    chunks = _Chunks.of(x.shape[0], chunk_size)
    weights = weights.astype(jnp.float32)
    data, variances = _prepare(x, weights, chunks)
    tol = tol * jnp.mean(variances)
    if init is None:
        centers = jax.vmap(lambda u: _kmeans_plusplus(data, u, chunks))(uniforms)
    else:
        centers = init.astype(jnp.float32) - data.mean
    centers, labels, dist, n_iter = _lloyd(data, centers, tol, max_iter, chunks)
    inertia = jnp.dot(dist, weights, precision=HIGHEST)  # [R]
    best = jnp.argmin(inertia)  # the first of equal inertias, as scikit-learn keeps
    return KMeansResult(centers[best] + data.mean, labels[best], inertia[best], n_iter[best])


def kmeans(
    x: jax.Array,
    k: int,
    rng: jax.Array | None,
    *,
    n_init: int = 10,
    max_iter: int = 300,
    tol: float = 1e-4,
    weights: jax.Array | None = None,
    batch_size: int | None = None,
    init: jax.Array | None = None,
) -> KMeansResult:
    """k-means with greedy k-means++ seeding, as `sklearn.cluster.KMeans` fits it.

    Jit-compiled once per (shape, dtype, k, n_init or R, max_iter, batch_size); `weights`,
    `tol`, `rng` and `init` are traced, so fitting another class or seed does not recompile.

    Args:
      x: `[N, D]` data; computed in float32, centred on the weighted mean.
      k: number of clusters, at most the number of rows of positive weight.
      rng: a PRNG key; all the seedings draw from it at once. Unused (may be None) with
        `init`.
      n_init: independent seedings, run together (one pass over the data serves all);
        the lowest inertia wins.
      max_iter: Lloyd iterations per run at most.
      tol: a run stops when the summed squared centre shift is at most
        `tol · mean(var(x, axis=0))` (weighted variance), or when its labels stop changing.
      weights: optional `[N]` non-negative sample weights. A row of weight 0 takes no part in
        the fit (it still gets a label), so `weights = (y == c)` fits class c alone.
      batch_size: if given, every pass reads the data in chunks of this many rows, so that the
        working memory does not grow with N. The result equals the in-memory one up to
        float32 summation order.
      init: optional initial centroids `[k, D]`, or `[R, k, D]` for R runs, in place of the
        k-means++ seeding (`n_init` is then ignored), as scikit-learn's array `init`.

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
    if init is not None:
        init = jnp.asarray(init)
        if init.ndim == 2:
            init = init[None]
        if init.ndim != 3 or init.shape[1:] != (k, x.shape[1]):
            raise ValueError(
                f"init must be [k, D] = ({k}, {x.shape[1]}) or [R, k, D] centroids, got shape "
                f"{init.shape}."
            )
        return _fit(x, weights, None, init, tol, max_iter=max_iter, chunk_size=chunk_size)
    if rng is None:
        raise ValueError("rng must be a PRNG key for the k-means++ seeding, or give init.")
    # All the seedings' randomness in one draw, outside the fit: one small program per
    # (n_init, k), shared by every data shape.
    uniforms = jax.random.uniform(rng, (n_init, k, 2 + int(math.log(k))))
    return _fit(x, weights, uniforms, None, tol, max_iter=max_iter, chunk_size=chunk_size)


def kmeans_predict(x: jax.Array, centroids: jax.Array) -> jax.Array:
    """Index of the nearest centroid (the first on ties).

    Args:
      x: `[..., D]`.
      centroids: `[k, D]`.

    Returns:
      `[...]` int32 labels.
    """
    return jnp.argmin(squared_l2_distances(x, centroids), axis=-1).astype(jnp.int32)
