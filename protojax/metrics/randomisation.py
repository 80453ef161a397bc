"""The model-parameter randomisation sanity check (Adebayo et al., "Sanity Checks for Saliency
Maps", NeurIPS 2018), cascading from the top layer down, scored by Spearman's rank correlation.

An explanation that stays the same when the model's weights are replaced by random ones does
not explain the model: its Spearman correlation with the original should fall as more layers
are randomised.
"""

from __future__ import annotations

import zlib
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np


def _average_ranks(values: jax.Array) -> jax.Array:
    """Ranks 0..N−1 of each row of `values [B, N]`, ties sharing their mean rank."""
    ordered = jnp.sort(values, axis=-1)
    below = jax.vmap(lambda o, v: jnp.searchsorted(o, v, side="left"))(ordered, values)
    upto = jax.vmap(lambda o, v: jnp.searchsorted(o, v, side="right"))(ordered, values)
    return (below + upto - 1).astype(jnp.float32) / 2.0


@jax.jit
def spearman(a, b) -> jax.Array:
    """Spearman's rank correlation of each row pair of `a, b [B, ...]` (flattened per row).

    The Pearson correlation of the average ranks (ties share their mean rank, as
    `scipy.stats.spearmanr`). A constant row has no ranks to correlate: NaN. All-negative
    maps are ranked like any other; pass absolute values to compare magnitudes only.

    Returns:
      `[B]` float32 in [−1, 1], or NaN.
    """
    a = jnp.asarray(a, jnp.float32).reshape(jnp.shape(a)[0], -1)
    b = jnp.asarray(b, jnp.float32).reshape(jnp.shape(b)[0], -1)
    ra = _average_ranks(a)
    rb = _average_ranks(b)
    ra = ra - ra.mean(axis=1, keepdims=True)
    rb = rb - rb.mean(axis=1, keepdims=True)
    norm = jnp.sqrt(jnp.sum(ra * ra, axis=1) * jnp.sum(rb * rb, axis=1))
    return jnp.where(norm > 0, jnp.sum(ra * rb, axis=1) / jnp.where(norm > 0, norm, 1.0), jnp.nan)


def randomise(params: Any, prefix: Sequence[str], rng: jax.Array) -> Any:
    """`params` with every array under the path `prefix` (a tuple of dict keys) replaced by
    Gaussian draws with that array's own mean and standard deviation (a constant array, such
    as a zero bias, stays as it is)."""
    prefix = tuple(prefix)

    def replace(path, leaf):
        keys = tuple(getattr(p, "key", getattr(p, "name", p)) for p in path)
        if keys[: len(prefix)] != prefix:
            return leaf
        key = jax.random.fold_in(rng, zlib.crc32("/".join(map(str, keys)).encode()) % (2**31))
        leaf = jnp.asarray(leaf)
        noise = jax.random.normal(key, leaf.shape, jnp.float32)
        return (leaf.mean() + leaf.std() * noise).astype(leaf.dtype)

    return jax.tree_util.tree_map_with_path(replace, params)


class Randomisation(NamedTuple):
    """The result of `model_randomisation`.

    Attributes:
      per_example: `[L, B]` Spearman correlation of each example's explanation with the
        original, after randomising the first l + 1 layers.
      aggregate: `[L]` the mean over the examples (NaN ones left out).
      layers: the layer prefixes, top first, as randomised cumulatively.
    """

    per_example: np.ndarray
    aggregate: np.ndarray
    layers: list[str]


def model_randomisation(
    explain_fn: Callable[[Any], jax.Array],
    params: Any,
    layers: Sequence[Sequence[str]],
    *,
    rng: jax.Array,
    absolute: bool = False,
) -> Randomisation:
    """Cascading model-parameter randomisation: randomise the layers from the top down and
    compare each explanation with the original by Spearman's rank correlation.

    Step l randomises `layers[0] … layers[l]` together (each array under a prefix is replaced
    by `randomise`: Gaussian draws with its own mean and standard deviation, so the scale of
    the layer is kept). Values near 1 at every step fail the check; a fall towards 0 passes.

    Args:
      explain_fn: `explain_fn(params) -> [B, H, W]` the maps of fixed images and targets
        under those parameters.
      params: the trained parameters (a nested dict).
      layers: path prefixes (tuples of keys), the top (output) layer first.
      rng: a PRNG key.
      absolute: compare |maps| (Quantus' default), so that a sign flip is no change.

    Returns:
      `Randomisation(per_example [L, B], aggregate [L], layers)`.
    """

    def maps(p):
        m = jnp.asarray(explain_fn(p), jnp.float32)
        return jnp.abs(m) if absolute else m

    original = maps(params)
    current, rows = params, []
    for step, prefix in enumerate(layers):
        current = randomise(current, prefix, jax.random.fold_in(rng, step))
        rows.append(np.asarray(spearman(original, maps(current))))
    per_example = np.stack(rows) if rows else np.zeros((0, original.shape[0]), np.float32)
    with np.errstate(all="ignore"):
        aggregate = np.array([np.nanmean(r) if np.any(np.isfinite(r)) else np.nan for r in rows])
    return Randomisation(per_example, aggregate, ["/".join(map(str, p)) for p in layers])
