"""Training a phase on rows held in memory, such as the feature maps of a frozen backbone
computed once, with the engine's own step, optimizer and batch order: it ends at the
parameters that the same phase reaches through the data pipeline, at a fraction of the cost."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from protojax.data import pipeline
from protojax.errors import NonFiniteError
from protojax.train import loop, optim
from protojax.train.protocol import Method, Phase, RunContext


class CachedFit(NamedTuple):
    """What `fit_on_rows` returns: the trained `variables` and the `steps` taken."""

    variables: dict[str, Any]
    steps: int


def fit_on_rows(
    method: Method,
    phase: Phase,
    variables: dict[str, Any],
    rows: dict[str, np.ndarray],
    ctx: RunContext,
    *,
    event: str,
) -> CachedFit:
    """Trains `phase` of `method` for `phase.epochs` epochs on `rows`, the training split's
    examples in order (`{name: [N, ...]}` with a `label` column; `ctx.collect` gives them).

    Each epoch's batches are those of the engine (`pipeline.epoch_permutation`, the last one
    padded and masked by `valid`), the optimizer is `optim.build_optimizer(phase)` from a fresh
    state, and the step is the engine's (`loop.make_train_step`, the run's step rng). The
    method's loss receives the rows' columns in place of the images. Each epoch's mean metrics
    are logged as `event`.

    Raises:
      NonFiniteError: a loss term became non-finite.
    """
    config = ctx.config
    n, batch_size = len(rows["label"]), config.data.batch_size
    per_epoch = pipeline.steps_per_epoch(
        ctx.dataset.split("train"), batch_size, drop_last=config.data.drop_last
    )
    tx = optim.build_optimizer(phase, variables["params"], per_epoch)
    base_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    step_fn = loop.TrainStep(
        loop.make_train_step(method, phase, tx, base_rng, config.train.grad_accum_steps),
        ctx.mesh,
    )
    state = jax.device_put(
        loop.TrainState(
            variables,
            {phase.optimizer: tx.init(variables["params"])},
            *(jnp.zeros((), jnp.int32) for _ in range(3)),
        ),
        NamedSharding(ctx.mesh, PartitionSpec()),
    )
    local_rows = pipeline.local_rows(batch_size, ctx.mesh)
    for epoch in range(phase.epochs):
        order = pipeline.epoch_permutation(config.seed, epoch, n)
        window = []
        for position in range(per_epoch):
            chunk = order[position * batch_size : (position + 1) * batch_size]
            valid = np.arange(batch_size) < len(chunk)
            local = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])[local_rows]
            batch = {name: column[local] for name, column in rows.items()}
            batch |= {
                "label": rows["label"][local].astype(np.int32),
                "index": local.astype(np.int32),
                "valid": valid[local_rows],
            }
            state, metrics, flags = step_fn(state, pipeline.to_global(batch, ctx.mesh))
            window.append((metrics, flags))
        values = jax.device_get(window)
        bad = sorted({k for _, f in values for k, ok in f.items() if not bool(ok)})
        if bad:
            raise NonFiniteError(
                f"The {', '.join(bad)} term became non-finite in epoch {epoch + 1} of the "
                f"cached {phase.name} fit; lower that phase's learning rates and rerun."
            )
        ctx.log(
            event=event,
            epoch=epoch + 1,
            **{k: float(np.mean([m[k] for m, _ in values])) for k in values[0][0]},
        )
    jax.block_until_ready(state.variables)
    return CachedFit(state.variables, phase.epochs * per_epoch)
