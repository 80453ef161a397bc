"""Conventions shared by the explainers.

- Score functions: `score_fn(images [B, H, W, C]) -> [B]`, or `score_fn(images, targets)` when
  the explainer is given `targets=` (per-example class or prototype indices `[B]`).
- Callables travel through `jax.jit` as pytrees: a `jax.tree_util.Partial` whose leaves are the
  model parameters is traced, not baked into the compiled code, so explaining with a new
  checkpoint reuses the compiled explainer. A plain function is wrapped in a leafless `Partial`
  (a new function object then compiles anew, as with any jit-compiled callable).
- Sample loops (noise draws, integration steps, windows, masks) are folded `batch_size` samples
  at a time, so memory does not grow with the number of samples.
- `reduce_channels` turns `[B, H, W, C]` attributions into `[B, H, W]` maps.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

_HIGHEST = jax.lax.Precision.HIGHEST

_CHANNEL_REDUCTIONS = ("sum", "abs_sum", "max_abs", "l2")


def as_pytree_callable(fn: Callable[..., Any], name: str) -> Partial:
    """Returns `fn` as a `Partial` (a pytree), wrapping plain callables without leaves."""
    if isinstance(fn, Partial):
        return fn
    if not callable(fn):
        raise ValueError(
            f"{name} must be callable, for example jax.tree_util.Partial(apply, params); "
            f"got {type(fn).__name__}."
        )
    return Partial(fn)


def check_images(images: Any, name: str = "images") -> jax.Array:
    """Checks a `[B, H, W, C]` floating-point batch and returns it as a JAX array."""
    images = jnp.asarray(images)
    if images.ndim != 4:
        raise ValueError(
            f"{name} must be a [B, H, W, C] batch (NHWC); got shape {images.shape}; "
            "add a batch axis with images[None] for a single image."
        )
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(
            f"{name} must be floating point; got {images.dtype}; "
            "convert with images.astype(jnp.float32)."
        )
    # Attributions and running sums are accumulated in at least float32.
    return images.astype(jnp.promote_types(images.dtype, jnp.float32))


def check_targets(targets: Any, batch: int) -> jax.Array | None:
    """Checks optional per-example targets `[B]`."""
    if targets is None:
        return None
    targets = jnp.asarray(targets)
    if targets.shape != (batch,):
        raise ValueError(
            f"targets must hold one index per image, shape [{batch}]; got shape {targets.shape}."
        )
    return targets


def check_batch_size(batch_size: int | None) -> int | None:
    """Checks that `batch_size` is None or a positive int."""
    if batch_size is None:
        return None
    if isinstance(batch_size, bool) or not isinstance(batch_size, int | np.integer):
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size!r}.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be a positive int or None; got {batch_size}.")
    return int(batch_size)


def check_masks(masks: Any, image_hw: tuple[int, int]) -> jax.Array:
    """Checks masks given as `[N, H, W]` or `[N, H, W, 1]` and returns them as `[N, H, W]`."""
    masks = jnp.asarray(masks)
    if masks.ndim == 4 and masks.shape[-1] == 1:
        masks = masks[..., 0]
    if masks.ndim != 3 or masks.shape[0] < 1:
        raise ValueError(
            f"masks must have shape [N, H, W] or [N, H, W, 1] with N >= 1; got {masks.shape}."
        )
    if tuple(masks.shape[1:]) != tuple(image_hw):
        raise ValueError(
            f"masks are {masks.shape[1]}x{masks.shape[2]} but the images are "
            f"{image_hw[0]}x{image_hw[1]}; generate the masks at the image size."
        )
    return masks.astype(jnp.float32)


def check_mask_options(num_masks: int, grid: int, p_keep: Any) -> None:
    """Checks the options shared by the mask generators."""
    if num_masks < 1:
        raise ValueError(f"num_masks must be at least 1; got {num_masks}.")
    if grid < 1:
        raise ValueError(f"grid must be at least 1; got {grid}.")
    if isinstance(p_keep, int | float) and not 0.0 <= p_keep <= 1.0:
        raise ValueError(f"p_keep must lie in [0, 1]; got {p_keep}.")


def image_size_pair(image_size: int | tuple[int, int], name: str = "image_size") -> tuple[int, int]:
    """Returns `(H, W)` from an int or a pair of positive ints."""
    size = (image_size, image_size) if isinstance(image_size, int | np.integer) else image_size
    try:
        size = tuple(int(s) for s in size)
    except TypeError:
        size = ()
    if len(size) != 2 or min(size) < 1:
        raise ValueError(f"{name} must be a positive int or a pair (H, W); got {image_size!r}.")
    return size


def call_score(
    score_fn: Callable[..., jax.Array],
    images: jax.Array,
    targets: jax.Array | None,
    name: str = "score_fn",
) -> jax.Array:
    """Calls `score_fn(images)` or `score_fn(images, targets)` and checks the result is `[B]`."""
    scores = score_fn(images) if targets is None else score_fn(images, targets)
    scores = jnp.asarray(scores)
    if scores.shape != (images.shape[0],):
        raise ValueError(
            f"{name} must return one score per image, shape [{images.shape[0]}]; got shape "
            f"{scores.shape}; select the logit or similarity to explain (for example with "
            "targets=)."
        )
    return scores


def batched_scores(
    score_fn: Callable[..., jax.Array], stacked_images: jax.Array, targets: jax.Array | None
) -> jax.Array:
    """Scores a stack of perturbed batches `[k, B, H, W, C]` → `[k, B]`."""
    return jax.vmap(lambda x: call_score(score_fn, x, targets))(stacked_images)


def fold_chunks(
    step: Callable[[Any, Any, jax.Array], Any], init: Any, xs: Any, *, batch_size: int | None
) -> Any:
    """Folds `step(carry, chunk, fresh) -> carry` over the leading axis of `xs`, chunk by chunk.

    A `lax.scan` slices ⌈N / batch_size⌉ chunks of `batch_size` samples out of `xs`. When
    batch_size does not divide N, the last chunk ends at sample N and overlaps the one before;
    `fresh [k]` is 1.0 for the samples no earlier chunk covered and 0.0 for the overlap, which
    `step` must weight out. The step is thus traced once and no padded copy of `xs` is made:
    only the carry and one chunk's temporaries are alive at a time, so memory does not grow
    with N. (`lax.map` would stack every sample's output, which grows with N.)
    `batch_size=None` folds everything in one chunk.

    Args:
      step: `(carry, chunk, fresh [k]) -> carry`, with `chunk` holding k samples of `xs`.
      init: the initial carry.
      xs: a pytree of arrays sharing a leading sample axis N.
      batch_size: the chunk size, or None for a single chunk.

    Returns:
      The final carry.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    if batch_size is None or batch_size >= n:
        return step(init, xs, jnp.ones((n,), jnp.float32))

    def body(carry, index):
        first_new = index * batch_size
        start = jnp.minimum(first_new, n - batch_size)
        chunk = jax.tree_util.tree_map(
            lambda x: jax.lax.dynamic_slice_in_dim(x, start, batch_size), xs
        )
        fresh = (start + jnp.arange(batch_size) >= first_new).astype(jnp.float32)
        return step(carry, chunk, fresh), None

    carry, _ = jax.lax.scan(body, init, jnp.arange(-(-n // batch_size)))
    return carry


def chunked_sum(fn: Callable[[Any, jax.Array], Any], xs: Any, *, batch_size: int | None) -> Any:
    """Σ over chunks of `fn(chunk, fresh)`, the `fresh`-weighted sum over one chunk (a pytree).

    See `fold_chunks` for the chunking and the `fresh [k]` weights.
    """
    n = jax.tree_util.tree_leaves(xs)[0].shape[0]
    k = min(n, batch_size or n)
    first = jax.tree_util.tree_map(lambda x: x[:k], xs)
    shapes = jax.eval_shape(fn, first, jnp.ones((k,), jnp.float32))
    zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
    add = lambda total, chunk, fresh: jax.tree_util.tree_map(jnp.add, total, fn(chunk, fresh))
    return fold_chunks(add, zeros, xs, batch_size=batch_size)


def weighted_sample_sum(weights: jax.Array, values: jax.Array) -> jax.Array:
    """Σ_k weights[k] · values[k] for `weights [k]` and `values [k, ...]`, without a matmul."""
    return jnp.sum(weights.reshape((-1,) + (1,) * (values.ndim - 1)) * values, axis=0)


def weighted_mask_sum(weights: jax.Array, masks: jax.Array) -> jax.Array:
    """Σ_k weights[k, b] · masks[k] for `weights [k, B]` and `masks [k, H, W]` → `[B, H, W]`."""
    return jnp.einsum("kb,khw->bhw", weights, masks, precision=_HIGHEST)


def reduce_channels(attributions: jax.Array, mode: str) -> jax.Array:
    """Reduces `[B, H, W, C]` attributions to `[B, H, W]` maps.

    Args:
      attributions: `[B, H, W, C]`, for example a gradient explainer's output.
      mode: `'sum'` (Σ_c a), `'abs_sum'` (Σ_c |a|), `'max_abs'` (max_c |a|, the saliency map of
        Simonyan et al.) or `'l2'` (√Σ_c a²).

    Returns:
      `[B, H, W]`.
    """
    attributions = jnp.asarray(attributions)
    if attributions.ndim != 4:
        raise ValueError(f"attributions must have shape [B, H, W, C]; got {attributions.shape}.")
    if mode == "sum":
        return jnp.sum(attributions, axis=-1)
    if mode == "abs_sum":
        return jnp.sum(jnp.abs(attributions), axis=-1)
    if mode == "max_abs":
        return jnp.max(jnp.abs(attributions), axis=-1)
    if mode == "l2":
        return jnp.sqrt(jnp.sum(jnp.square(attributions), axis=-1))
    raise ValueError(f"mode must be one of {_CHANNEL_REDUCTIONS}; got {mode!r}.")


def _edge_index(index: np.ndarray, size: int, edge: str) -> np.ndarray:
    """Maps out-of-range indices back into `[0, size)` by clamping or mirror reflection."""
    if edge == "clamp" or size == 1:
        return np.clip(index, 0, size - 1)
    # Mirror about the edge pixels' centres (numpy's 'reflect'): -1 → 1, size → size - 2.
    period = 2 * (size - 1)
    index = np.mod(index, period)
    return np.where(index >= size, period - index, index)


def linear_interpolation_matrix(in_size: int, out_size: int, *, edge: str) -> np.ndarray:
    """The `[out_size, in_size]` matrix of 1-D linear resampling with half-pixel centres.

    Output pixel i samples the input at (i + 0.5) · in_size / out_size − 0.5 (PyTorch's
    `align_corners=False`, scikit-image's `resize`). Samples outside the input take the edge
    value (`edge='clamp'`, PyTorch) or are mirrored about the edge pixels (`edge='mirror'`,
    scikit-image's `mode='reflect'`).
    """
    src = (np.arange(out_size) + 0.5) * (in_size / out_size) - 0.5
    low = np.floor(src).astype(np.int64)
    frac = src - low
    rows = np.arange(out_size)
    matrix = np.zeros((out_size, in_size), np.float64)
    np.add.at(matrix, (rows, _edge_index(low, in_size, edge)), 1.0 - frac)
    np.add.at(matrix, (rows, _edge_index(low + 1, in_size, edge)), frac)
    return matrix.astype(np.float32)


def random_grids(
    rng: jax.Array, num_masks: int, grid: int, p_keep: Any, num_shifts: tuple[int, int]
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Binary grids and crop shifts for the mask generators, from one uniform draw.

    One draw (rather than three) keeps the compiled generator small: threefry is slow to
    compile on CPU.

    Returns:
      `(cells [N, g, g] float32 with P(1) = p_keep, shift_y [N], shift_x [N])`, the shifts
      uniform on `0 … num_shifts − 1` per axis.
    """
    uniform = jax.random.uniform(rng, (num_masks, grid * grid + 2))
    cells = (uniform[:, : grid * grid] < p_keep).astype(jnp.float32).reshape(-1, grid, grid)
    shifts = [
        jnp.minimum(jnp.floor(uniform[:, grid * grid + axis] * count), count - 1).astype(jnp.int32)
        for axis, count in enumerate(num_shifts)
    ]
    return cells, shifts[0], shifts[1]


def crop_upsampled(
    grids: jax.Array,
    row_matrix: np.ndarray,
    col_matrix: np.ndarray,
    offset_y: jax.Array,
    offset_x: jax.Array,
    out_size: tuple[int, int],
) -> jax.Array:
    """Upsamples coarse grids with fixed linear maps and crops each at its own offset.

    Mask n is rows `offset_y[n]:offset_y[n] + H` and columns `offset_x[n]:offset_x[n] + W` of
    `row_matrix @ grids[n] @ col_matrix.T`; only the cropped rows are ever computed.

    Args:
      grids: `[N, g, g]`.
      row_matrix: `[Ly, g]` with Ly ≥ H + max(offset_y).
      col_matrix: `[Lx, g]` with Lx ≥ W + max(offset_x).
      offset_y: `[N]` int.
      offset_x: `[N]` int.
      out_size: `(H, W)`.

    Returns:
      `[N, H, W]` float32.
    """
    h, w = out_size
    rows = jnp.asarray(row_matrix)[offset_y[:, None] + jnp.arange(h)]  # [N, H, g]
    cols = jnp.asarray(col_matrix)[offset_x[:, None] + jnp.arange(w)]  # [N, W, g]
    return jnp.einsum("nhi,nij,nwj->nhw", rows, grids, cols, precision=_HIGHEST)
