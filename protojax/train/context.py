"""What a phase's `after` operation, and a method's summary and figures, get to work with:
ordered data passes on the mesh, evaluation, logging and recorded summary values."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import zlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from protojax.config import ConfigDict
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.metrics.accuracy import accuracy
from protojax.train.protocol import Method, Variables
from protojax.train.workdir import FIGURES, MetricWriter, is_main_process

Carry = TypeVar("Carry")


def _eval_counts(method: Method, variables: Variables, counts: jax.Array, batch) -> jax.Array:
    """`counts [2]` (correct, valid rows) plus those of one batch."""
    logits = method.predict(variables, batch["image"])  # [B, K]
    correct = accuracy(logits, batch["label"], valid=batch["valid"]).per_example
    return counts + jnp.stack([jnp.sum(correct & batch["valid"]), jnp.sum(batch["valid"])])


@dataclasses.dataclass
class RunContext:
    """The run as seen from a method's `after`, `summarize` and `figures` hooks."""

    config: ConfigDict
    dataset: Dataset
    mesh: Mesh
    workdir: pathlib.Path
    writer: MetricWriter
    method: Method
    records: dict[str, Any] = dataclasses.field(default_factory=dict)
    step: int = 0
    phase: str = ""

    @property
    def is_main(self) -> bool:
        """Whether this is the process that writes files (process 0)."""
        return is_main_process()

    @property
    def figures_dir(self) -> pathlib.Path:
        path = self.workdir / FIGURES
        if is_main_process():
            path.mkdir(parents=True, exist_ok=True)
        return path

    def save_figure(self, fig, name: str, *, dpi: int = 110) -> pathlib.Path:
        """Writes a matplotlib figure to `figures/NAME` and closes it; returns the path.

        Every process builds the figure (the passes behind it are collective on a multi-host
        mesh) and calls this; only the main process writes.
        """
        import matplotlib.pyplot as plt

        path = self.figures_dir / name
        if is_main_process():
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=dpi)
        plt.close(fig)
        return path

    @staticmethod
    def host(x: jax.Array) -> np.ndarray:
        """The whole of a global array (a batch of `ordered_batches`, or a result computed
        from one) as NumPy. Where the mesh spans several processes this is an all-gather,
        so every process must call it."""
        if not isinstance(x, jax.Array) or x.is_fully_addressable or x.is_fully_replicated:
            return np.asarray(x)
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))

    @functools.cached_property
    def _eval_fn(self):
        return jax.jit(functools.partial(_eval_counts, self.method))

    def ordered_batches(
        self,
        split: str = "train",
        *,
        batch_size: int | None = None,
        indices: np.ndarray | None = None,
    ) -> Iterator[dict[str, jax.Array]]:
        """An ordered, non-repeating, un-augmented pass over a split, as global batches
        sharded on the mesh; padding rows have `valid` false."""
        batch_size = batch_size or self.config.data.eval_batch_size
        devices = self.mesh.devices.size
        if batch_size % devices:
            raise UsageError(
                f"Batch size {batch_size} does not divide by the {devices} devices; "
                "choose a multiple (data.eval_batch_size)."
            )
        for local in pipeline.ordered_batches(
            self.dataset.split(split),
            batch_size=batch_size,
            normalization=self.config.data.normalization,
            indices=indices,
            mesh=self.mesh,
        ):
            yield pipeline.to_global(local, self.mesh)

    def collect(
        self,
        fn: Callable[[dict[str, jax.Array]], Any],
        split: str = "train",
        *,
        batch_size: int | None = None,
        indices: np.ndarray | None = None,
    ) -> Any:
        """Runs `fn(batch)` on every batch of an ordered pass (`ordered_batches`) and returns
        its rows, in order, as NumPy on every process, padding rows dropped.

        Args:
          fn: `batch -> pytree of [B, ...] arrays`, one row per batch row; jit it (a pass
            calls it once per batch).
          split, batch_size, indices: as `ordered_batches`.

        Returns:
          The pytree of `fn`'s outputs, each leaf `[N, ...]` for the N examples of the pass.
          Collective on a multi-host mesh: every process must call it.
        """
        parts = []
        for batch in self.ordered_batches(split, batch_size=batch_size, indices=indices):
            valid = self.host(batch["valid"])
            parts.append(jax.tree.map(lambda x, valid=valid: self.host(x)[valid], fn(batch)))
        if not parts:
            raise UsageError(f"The {split} split is empty; a pass over it has nothing to collect.")
        return jax.tree.map(lambda *rows: np.concatenate(rows), *parts)

    def reduce(
        self,
        fn: Callable[[Carry, dict[str, jax.Array]], Carry],
        init: Carry,
        split: str = "train",
        *,
        batch_size: int | None = None,
        indices: np.ndarray | None = None,
    ) -> Carry:
        """Folds `carry = fn(carry, batch)` over the batches of an ordered pass, in order.

        The carry is replicated on the mesh before each step, so that every step sees the
        same input shardings (and compiles once); memory is that of one batch and the
        carry. Jit `fn`; padding rows have `valid` false and must not count.

        Args:
          fn: `(carry, batch) -> carry`, a pytree of arrays of fixed shapes.
          init: the first carry.
          split, batch_size, indices: as `ordered_batches`.
        """
        replicated = NamedSharding(self.mesh, PartitionSpec())
        carry = init
        for batch in self.ordered_batches(split, batch_size=batch_size, indices=indices):
            carry = fn(jax.device_put(carry, replicated), batch)
        return carry

    def evaluate(self, variables: Variables, split: str = "val") -> float:
        """Top-1 accuracy of `method.predict` on a split."""
        counts = self.reduce(
            functools.partial(self._eval_fn, variables), jnp.zeros(2, jnp.int32), split
        )
        correct, total = (float(c) for c in self.host(counts))
        return correct / max(total, 1.0)

    def rng(self, name: str) -> jax.Array:
        """A key for operation `name` at the current step, the same on resume."""
        base = jax.random.fold_in(jax.random.key(self.config.seed), 2)
        salted = jax.random.fold_in(base, zlib.crc32(name.encode()) & 0x7FFFFFFF)
        return jax.random.fold_in(salted, self.step)

    def record(self, key: str, value: Any) -> None:
        """Keeps a value for summary.json; it is checkpointed, so it survives a resume."""
        self.records[key] = value

    def log(self, **values: Any) -> None:
        self.writer.write({"kind": "event", "step": self.step, "phase": self.phase, **values})
