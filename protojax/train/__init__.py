"""The generic training engine: phases, jit-compiled sharded steps, checkpoints, metrics."""

from protojax.train.context import RunContext
from protojax.train.loop import (
    TrainState,
    default_config,
    make_data_mesh,
    run,
)
from protojax.train.optim import Optimizer, adam, constant, cosine, sgd, step_decay
from protojax.train.protocol import Method, Phase

__all__ = [
    "Method",
    "Optimizer",
    "Phase",
    "RunContext",
    "TrainState",
    "adam",
    "constant",
    "cosine",
    "default_config",
    "make_data_mesh",
    "run",
    "sgd",
    "step_decay",
]
