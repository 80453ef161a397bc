"""The protocol between the training engine and a method.

A method is an object with `init`, `loss`, `predict`, `embed`, `phases` and `targets`
(`Method` below). The engine knows nothing else about it. Training is a
list of `Phase`s run in order; each names its optimizer (whose state persists across
revisits), which parameters it trains, whether BatchNorm statistics update, and an optional
operation run after it (push, k-means, a last-layer fit, ...).
"""

from __future__ import annotations

import abc
import dataclasses
import pathlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol

import jax
import numpy as np
import optax

Variables = dict[str, Any]
Batch = Mapping[str, jax.Array]
# Builds an optax transform given the number of steps per epoch, so that schedules can be
# written in epochs (see `protojax.train.optim`).
TxFactory = Callable[[int], optax.GradientTransformation]


class RunContext(Protocol):
    """What a method's `after`, `after_epoch`, `summarize` and `figures` hooks see of the run
    (the engine's `protojax.train.context.RunContext` implements it)."""

    config: Any
    dataset: Any
    mesh: jax.sharding.Mesh
    workdir: pathlib.Path
    records: dict[str, Any]
    step: int
    phase: str

    @property
    def is_main(self) -> bool:
        """Whether this process writes files (process 0)."""

    @property
    def figures_dir(self) -> pathlib.Path: ...

    def save_figure(self, fig, name: str, *, dpi: int = 110) -> pathlib.Path: ...

    def host(self, x: jax.Array) -> np.ndarray: ...

    def ordered_batches(
        self, split: str = "train", *, batch_size: int | None = None, indices=None
    ) -> Iterator[dict[str, jax.Array]]: ...

    def evaluate(self, variables: Variables, split: str = "val") -> float: ...

    def rng(self, name: str) -> jax.Array: ...

    def record(self, key: str, value: Any) -> None: ...

    def log(self, **values: Any) -> None: ...


AfterOp = Callable[[Variables, RunContext], Variables]


@dataclasses.dataclass(frozen=True)
class Phase:
    """One stage of training.

    Attributes:
      name: shown in logs and metrics (`warm`, `joint`, `last`, ...).
      epochs: full passes over the training split; 0 runs only `after`.
      optimizer: the optimizer's name. Phases with the same name share one optimizer state,
        which persists across revisits, and must have the same `trainable` rules.
      trainable: `(regex, TxFactory)` pairs. A parameter whose '/'-joined path (without the
        leading 'params', e.g. `backbone/conv1/kernel`) fully matches a regex is updated by
        that transform (the first match wins).
      frozen: regexes of the parameters the phase leaves as they are. A parameter that neither
        `trainable` nor `frozen` matches is an error, so a typo in a regex cannot freeze a
        parameter unnoticed.
      update_batch_stats: when false, BatchNorm statistics are left as they are; the method
        should also normalise with running averages then.
      after: `after(variables, ctx) -> variables`, run once after the phase's last epoch.
      after_epoch: the same, run after every epoch of the phase (after its validation), for
        per-epoch diagnostics (`ctx.log`) or edits such as eliminating unused prototypes.
    """

    name: str
    epochs: int
    optimizer: str
    trainable: tuple[tuple[str, TxFactory], ...]
    frozen: tuple[str, ...] = ()
    update_batch_stats: bool = True
    after: AfterOp | None = None
    after_epoch: AfterOp | None = None


class Method(abc.ABC):
    """Base class of the methods. Subclasses hold their config and dataset description."""

    name: str = ""

    @abc.abstractmethod
    def init(self, rng: jax.Array, batch: Batch) -> Variables:
        """Initial variables: `params`, and optionally `batch_stats`, `prototype_state`."""

    @abc.abstractmethod
    def loss(
        self,
        params: Any,
        state: Variables,
        batch: Batch,
        rng: jax.Array,
        phase: Phase,
    ) -> tuple[jax.Array, tuple[dict[str, jax.Array], Variables]]:
        """`(loss, (metrics, new_state))`; averages over valid rows only.

        `state` holds the non-trainable collections; `metrics` are scalars, each checked for
        finiteness by the engine (name the terms: `cross_entropy`, `cluster`, ...).
        """

    @abc.abstractmethod
    def predict(self, variables: Variables, images: jax.Array) -> jax.Array:
        """Logits `[B, K]` for images `[B, H, W, C]`, in inference mode."""

    @abc.abstractmethod
    def embed(self, variables: Variables, images: jax.Array) -> jax.Array:
        """An embedding `[B, d]` for images `[B, H, W, C]` (for RELAX, KMEx, PCA plots)."""

    @abc.abstractmethod
    def phases(self, config) -> list[Phase]:
        """The phases of training, in order."""

    @abc.abstractmethod
    def targets(self, variables: Variables) -> dict[str, jax.tree_util.Partial]:
        """Score functions for the explainers, each `fn(images, targets) -> [B]` and a
        `jax.tree_util.Partial` whose leaves are the variables, so that new variables do
        not recompile."""

    def mask_updates(self, updates: Any, state: Variables) -> Any:
        """Edits the optimizer's parameter updates (shaped like `params`) before they are
        applied; `state` holds the non-trainable collections. The default keeps them. A method
        that deactivates parameters (eliminated or pruned prototypes) zeroes their updates
        here: their gradient is zero, but Adam's moments would keep moving them."""
        del state
        return updates

    def load_pretrained(self, variables: Variables) -> Variables:
        """Pretrained weights for a fresh run's initial variables (called outside jit, once,
        before the first step; never on resume nor by `load_workdir`). Default: unchanged."""
        return variables

    def summarize(self, variables: Variables, ctx: RunContext) -> dict[str, Any]:
        """Method-specific keys for `summary.json` (computed once training ends)."""
        del variables, ctx
        return {}

    def figures(self, variables: Variables, ctx: RunContext) -> list[str]:
        """Method-specific figures, written with `ctx.save_figure`; returns their paths.

        Called on every process: data passes are collective on a multi-host mesh (use
        `ctx.host` to bring their results to NumPy), and only the main process writes."""
        del variables, ctx
        return []
