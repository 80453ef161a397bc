"""Optimizers for phases: transforms whose schedules are written in epochs, and the masking
that freezes every parameter a phase does not train.

`adam(lr, weight_decay=..., schedule=...)` returns an `Optimizer`, a `TxFactory`: given the
steps per epoch, it builds the optax transform.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable

import jax
import jax.numpy as jnp
import optax
from flax import traverse_util

from protojax.errors import UsageError
from protojax.train.protocol import Phase

EpochSchedule = Callable[[jax.Array], jax.Array]
FROZEN = "frozen"


def constant() -> EpochSchedule:
    return lambda epoch: jnp.ones_like(epoch, jnp.float32)


def step_decay(step_size: int, gamma: float, *, offset: int = 0) -> EpochSchedule:
    """Multiplier gamma ** ((epoch + offset) // step_size), as torch's StepLR.

    `offset=1` reproduces a StepLR stepped before, rather than after, each epoch.
    """
    return lambda epoch: gamma ** jnp.asarray((epoch + offset) // step_size, jnp.float32)


def cosine(total_epochs: int, *, final: float = 0.0) -> EpochSchedule:
    """Cosine decay from 1 to `final` over `total_epochs`, evaluated per fractional epoch."""
    return lambda epoch: (
        final
        + (1 - final) * 0.5 * (1 + jnp.cos(jnp.pi * jnp.minimum(epoch / max(total_epochs, 1), 1.0)))
    )


@dataclasses.dataclass(frozen=True)
class Optimizer:
    """A `TxFactory` for Adam or SGD whose learning rate follows an epoch schedule.

    Call it with the steps per epoch to get the optax transform. The schedule maps the
    optimizer's own epoch count (which persists with its state across revisits of a phase)
    to a multiplier of `lr`.

    Attributes:
      kind: `adam` or `sgd`.
      lr: base learning rate.
      weight_decay: coupled L2, as torch.optim's weight_decay (λθ added to the gradient before
        the moments), unless `decoupled`, which gives AdamW.
      schedule: multiplier as a function of the epoch count; constant if None.
      per_step: feed the schedule the fractional epoch (updates / steps_per_epoch) rather than
        the whole epochs completed.
      momentum: SGD momentum.
    """

    kind: str = "adam"
    lr: float = 1e-3
    weight_decay: float = 0.0
    decoupled: bool = False
    schedule: EpochSchedule | None = None
    per_step: bool = False
    momentum: float = 0.9

    def learning_rate(self, steps_per_epoch: int) -> Callable[[jax.Array], jax.Array]:
        schedule = self.schedule or constant()

        def rate(count):
            epoch = count / steps_per_epoch if self.per_step else count // steps_per_epoch
            return self.lr * schedule(epoch)

        return rate

    def __call__(self, steps_per_epoch: int) -> optax.GradientTransformation:
        rate = self.learning_rate(steps_per_epoch)
        if self.kind == "adam" and self.decoupled:
            return optax.adamw(rate, weight_decay=self.weight_decay)
        if self.kind == "adam":
            core = optax.adam(rate)
        elif self.kind == "sgd":
            core = optax.sgd(rate, momentum=self.momentum or None)
        else:
            raise UsageError(f"Unknown optimizer kind '{self.kind}'; use adam or sgd.")
        if self.weight_decay:
            return optax.chain(optax.add_decayed_weights(self.weight_decay), core)
        return core


def adam(lr: float, **kwargs) -> Optimizer:
    """Adam (torch.optim.Adam semantics for weight_decay); see `Optimizer`."""
    return Optimizer("adam", lr, **kwargs)


def sgd(lr: float, **kwargs) -> Optimizer:
    """SGD with momentum (torch.optim.SGD semantics for weight_decay); see `Optimizer`."""
    return Optimizer("sgd", lr, **kwargs)


@dataclasses.dataclass(frozen=True)
class NonNegativeOptimizer(Optimizer):
    """An `Optimizer` followed by the clamp θ ≥ 0 after each step
    (`optax.keep_params_nonnegative`: an update that would take an entry below 0 sets it to
    0, projected gradient descent)."""

    def __call__(self, steps_per_epoch: int) -> optax.GradientTransformation:
        return optax.chain(super().__call__(steps_per_epoch), optax.keep_params_nonnegative())


def param_labels(params, phase: Phase) -> dict:
    """Labels each parameter with the index of its first matching `trainable` regex, or
    FROZEN where a `frozen` regex matches it.

    Raises:
      UsageError: a parameter matches neither, or the phase trains nothing.
    """
    patterns = [re.compile(regex) for regex, _ in phase.trainable]
    frozen = [re.compile(regex) for regex in phase.frozen]
    flat = traverse_util.flatten_dict(params, sep="/")
    labels, unmatched = {}, []
    for path in flat:
        match = next((i for i, p in enumerate(patterns) if p.fullmatch(path)), None)
        if match is None and not any(p.fullmatch(path) for p in frozen):
            unmatched.append(path)
        labels[path] = FROZEN if match is None else str(match)
    if unmatched:
        shown = ", ".join(unmatched[:6]) + (
            f" and {len(unmatched) - 6} more" if len(unmatched) > 6 else ""
        )
        raise UsageError(
            f"Phase '{phase.name}' neither trains nor freezes {shown}; add a `trainable` regex "
            f"that matches them, or name them in the phase's `frozen` regexes "
            f"(trainable: {[r for r, _ in phase.trainable]}, frozen: {list(phase.frozen)})."
        )
    if all(label == FROZEN for label in labels.values()) and phase.trainable:
        raise UsageError(
            f"Phase '{phase.name}' trains nothing: no parameter path matches "
            f"{[r for r, _ in phase.trainable]}; paths look like {next(iter(flat), '')}."
        )
    return traverse_util.unflatten_dict(labels, sep="/")


def build_optimizer(phase: Phase, params, steps_per_epoch: int) -> optax.GradientTransformation:
    """The phase's transform: its trainable groups, with every other parameter frozen."""
    transforms = {str(i): make(steps_per_epoch) for i, (_, make) in enumerate(phase.trainable)}
    transforms[FROZEN] = optax.set_to_zero()
    return optax.multi_transform(transforms, param_labels(params, phase))


def learning_rates(phase: Phase, steps_per_epoch: int, count: int) -> dict[str, float]:
    """The learning rate of each trainable group after `count` updates, for logging."""
    return {
        regex: float(make.learning_rate(steps_per_epoch)(count))
        for regex, make in phase.trainable
        if isinstance(make, Optimizer)
    }
