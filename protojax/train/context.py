"""What a phase's `after` operation, and a method's summary and figures, get to work with:
ordered data passes on the mesh, evaluation, logging and recorded summary values."""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import zlib
from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from protojax.config import ConfigDict
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.train.protocol import Method, Variables
from protojax.train.workdir import FIGURES, MetricWriter, is_main_process


def _eval_counts(method: Method, variables: Variables, batch) -> tuple[jax.Array, jax.Array]:
    logits = method.predict(variables, batch["image"])  # [B, K]
    correct = (jnp.argmax(logits, axis=-1) == batch["label"]) & batch["valid"]
    return jnp.sum(correct), jnp.sum(batch["valid"])


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

    def evaluate(self, variables: Variables, split: str = "val") -> float:
        """Top-1 accuracy of `method.predict` on a split."""
        correct = total = 0
        for batch in self.ordered_batches(split):
            c, n = self._eval_fn(variables, batch)
            correct, total = correct + c, total + n
        return float(correct) / max(float(total), 1.0)

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
