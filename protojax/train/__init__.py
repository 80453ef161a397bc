"""The generic training engine: phases, jit-compiled sharded steps, checkpoints, metrics."""

from protojax.train.context import RunContext
from protojax.train.loop import (
    TrainState,
    TrainStep,
    build_train_step,
    default_config,
    initial_state,
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
    "TrainStep",
    "adam",
    "build_train_step",
    "constant",
    "cosine",
    "default_config",
    "initial_state",
    "make_data_mesh",
    "run",
    "sgd",
    "step_decay",
]
