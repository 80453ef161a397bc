"""Orbax checkpoints of the train state, with errors that say what to do.

Checkpoints are numbered by a save counter (a phase's `after` operation may save twice at
the same training step); each holds the state pytree and a JSON record of the host-side
bookkeeping (step, phase, epoch, recorded summary values). A checkpoint is never written
with non-finite parameters, and nothing is ever deleted on a failed restore.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from protojax.errors import CheckpointError, NonFiniteError


@jax.jit
def _all_finite(tree) -> jax.Array:
    leaves = [
        jnp.all(jnp.isfinite(x))
        for x in jax.tree.leaves(tree)
        if jnp.issubdtype(x.dtype, jnp.inexact)
    ]
    return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


class Checkpointer:
    """Saves and restores `(state, meta)` under `directory`, keeping the newest `keep`."""

    def __init__(self, directory: str | pathlib.Path, *, keep: int = 3):
        self.directory = pathlib.Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        self.manager = ocp.CheckpointManager(
            self.directory, options=options, item_names=("state", "meta")
        )

    def latest(self) -> int | None:
        return self.manager.latest_step()

    def save(self, index: int, state: Any, meta: dict[str, Any]) -> None:
        if not bool(_all_finite(state)):
            raise NonFiniteError(
                f"Refusing to checkpoint non-finite parameters at step {meta.get('step')}; "
                f"the last good checkpoint in {self.directory} is kept. Lower the learning "
                "rate or check the inputs."
            )
        self.manager.save(
            index,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )

    def restore(self, abstract_state: Any, index: int | None = None) -> tuple[Any, dict]:
        """Restores checkpoint `index` (default: the newest) into the abstract state's shapes."""
        index = self.latest() if index is None else index
        path = self.directory / str(index)
        try:
            restored = self.manager.restore(
                index,
                args=ocp.args.Composite(
                    state=ocp.args.StandardRestore(abstract_state), meta=ocp.args.JsonRestore()
                ),
            )
            state, meta = restored.state, restored.meta
            _check_structure(abstract_state, state)
        except CheckpointError:
            raise
        except Exception as error:  # Orbax raises many types for damaged files.
            detail = _first_sentence(error)
            raise CheckpointError(
                f"Checkpoint {path} is corrupt or does not match this model "
                f"({type(error).__name__}: {detail}); move it aside to resume from an "
                "earlier one, or use a new --workdir. Nothing was deleted."
            ) from error
        return state, meta

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def _first_sentence(error: Exception) -> str:
    """The head of an Orbax/TensorStore message, without its pointer to further details."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return text.split(" See full TensorStore details")[0][:200]


def _check_structure(expected: Any, restored: Any) -> None:
    paths_e = jax.tree_util.tree_flatten_with_path(expected)[0]
    paths_r = jax.tree_util.tree_flatten_with_path(restored)[0]
    if len(paths_e) != len(paths_r):
        raise CheckpointError(
            f"The checkpoint holds {len(paths_r)} arrays but the model has {len(paths_e)}; "
            "it was written by another model. Use a new --workdir."
        )
    for (path, e), (_, r) in zip(paths_e, paths_r, strict=True):
        if tuple(e.shape) != tuple(np.shape(r)):
            raise CheckpointError(
                f"Checkpoint array {jax.tree_util.keystr(path)} has shape {np.shape(r)} but the "
                f"model expects {tuple(e.shape)}; it was written by another model. Use a new "
                "--workdir."
            )
