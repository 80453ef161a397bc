"""The training engine: phases of jit-compiled, sharded steps with exact resume.

`run(method, config, workdir)` trains a method through its phases on a data-parallel mesh,
checkpoints with Orbax, logs to metrics.jsonl and writes summary.json. The same code runs on
one CPU, several GPUs or a pod: batches are sharded along the mesh's "data" axis and the
state is replicated. A run interrupted at any point resumes from its newest checkpoint and
ends with bit-identical parameters.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import pathlib
import signal
import threading
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from protojax import config as config_lib
from protojax import data as data_lib
from protojax.config import ConfigDict
from protojax.data import load_dataset, pipeline
from protojax.data.base import Dataset
from protojax.errors import DataError, NonFiniteError, UsageError
from protojax.train import workdir as wd
from protojax.train.checkpoint import Checkpointer
from protojax.train.context import RunContext
from protojax.train.optim import build_optimizer, learning_rates
from protojax.train.progress import Progress
from protojax.train.protocol import Method, Phase

log = logging.getLogger("protojax")


@flax.struct.dataclass
class TrainState:
    """Everything a step changes. `variables` holds `params` and the non-trainable
    collections; `opt_states` maps optimizer names to their states."""

    variables: dict[str, Any]
    opt_states: dict[str, Any]
    step: jax.Array
    phase_index: jax.Array
    epoch_in_phase: jax.Array


def default_config() -> ConfigDict:
    """The `config.train` section read by the engine."""
    return ConfigDict(
        {
            "epochs": 10,
            # float32, or bfloat16 compute with float32 parameters.
            "precision": "float32",
            # Split each global batch into this many micro-batches (gradients averaged).
            "grad_accum_steps": 1,
            # 0: checkpoint at the end of every epoch (and of every phase).
            "checkpoint_every_steps": 0,
            "keep_checkpoints": 3,
            # > 0: checkpoint and stop after this many steps (resume by rerunning).
            "stop_after_steps": 0,
            "log_every_steps": 50,
            "eval_every_epochs": 1,
            "progress": True,
        }
    )


# The ranges of `config.train` (see `protojax.config.validate`).
CONFIG_RULES = (
    config_lib.at_least("train.epochs", 0),
    config_lib.one_of("train.precision", ("float32", "bfloat16")),
    config_lib.at_least("train.grad_accum_steps", 1),
    config_lib.at_least("train.checkpoint_every_steps", 0),
    config_lib.at_least("train.keep_checkpoints", 1),
    config_lib.at_least("train.stop_after_steps", 0),
    config_lib.at_least("train.log_every_steps", 1),
    config_lib.at_least("train.eval_every_epochs", 0),
)


def validate_config(config: ConfigDict) -> None:
    """Checks the ranges of the sections the engine and the data layer read (a UsageError
    names the first bad key); reads nothing from the disk."""
    config_lib.validate(config, (*data_lib.CONFIG_RULES, *CONFIG_RULES))


class RunInterrupted(KeyboardInterrupt):
    """Ctrl-C during training, with the one line that says where the run stands."""


def make_data_mesh(devices=None) -> Mesh:
    """A 1-D mesh named "data" over `devices` (default: all devices of all processes)."""
    devices = list(jax.devices() if devices is None else devices)
    return jax.make_mesh((len(devices),), ("data",), (AxisType.Auto,), devices=devices)


def _replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, PartitionSpec())


def _example_batch(dataset: Dataset, size: int = 2) -> dict[str, np.ndarray]:
    h, w, c = dataset.image_shape
    return {
        "image": np.zeros((size, h, w, c), np.float32),
        "label": np.zeros((size,), np.int32),
        "index": np.arange(size, dtype=np.int32),
        "valid": np.ones((size,), bool),
    }


@dataclasses.dataclass(frozen=True)
class _Plan:
    phases: list[Phase]
    steps_per_epoch: int
    optimizers: dict[str, optax.GradientTransformation]

    def phase_start(self, index: int) -> int:
        return sum(p.epochs for p in self.phases[:index]) * self.steps_per_epoch

    @property
    def total_steps(self) -> int:
        return self.phase_start(len(self.phases))


def _plan(method: Method, config, params, per_epoch: int) -> _Plan:
    phases = method.phases(config)
    if not phases:
        raise UsageError(f"Method '{method.name}' returned no phases; check train.epochs.")
    optimizers, rules = {}, {}
    for phase in phases:
        if phase.optimizer in rules:
            if rules[phase.optimizer] != phase.trainable:
                raise UsageError(
                    f"Phases sharing optimizer '{phase.optimizer}' must train the same "
                    f"parameters with the same transforms; phase '{phase.name}' differs."
                )
            continue
        rules[phase.optimizer] = phase.trainable
        optimizers[phase.optimizer] = build_optimizer(phase, params, per_epoch)
    return _Plan(phases, per_epoch, optimizers)


def initial_state(method: Method, config, dataset: Dataset, mesh: Mesh, steps_per_epoch: int):
    """(state, plan), with the state initialised and replicated on the mesh."""
    rng = jax.random.fold_in(jax.random.key(config.seed), 0)
    batch = _example_batch(dataset)
    # Init is computed replicated, so the partitionable threefry variant (needed for sharded
    # draws in steps) buys nothing here; the classic one compiles the initialisers ~2x faster.
    with jax.threefry_partitionable(False):
        variables = jax.jit(method.init, out_shardings=_replicated(mesh))(rng, batch)
    if "params" not in variables:
        raise UsageError(f"Method '{method.name}' init must return a dict with 'params'.")
    plan = _plan(method, config, variables["params"], steps_per_epoch)
    opt_states = {
        name: jax.jit(tx.init, out_shardings=_replicated(mesh))(variables["params"])
        for name, tx in plan.optimizers.items()
    }
    # Three distinct buffers: donation forbids passing one buffer twice.
    step, phase_index, epoch_in_phase = (
        jax.device_put(jnp.zeros((), jnp.int32), _replicated(mesh)) for _ in range(3)
    )
    state = TrainState(variables, opt_states, step, phase_index, epoch_in_phase)
    return state, plan


def abstract_state(state: TrainState) -> TrainState:
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
    )


def restore_variables(method: Method, config, dataset: Dataset, workdir: pathlib.Path):
    """The variables of a workdir's newest checkpoint, replicated on all local devices."""
    mesh = make_data_mesh(jax.local_devices())
    state, _ = initial_state(method, config, dataset, mesh, steps_per_epoch=1)
    checkpointer = Checkpointer(workdir / wd.CHECKPOINTS)
    try:
        if checkpointer.latest() is None:
            raise DataError(f"{workdir} has no checkpoint yet; train first or wait for one.")
        restored, _ = checkpointer.restore(abstract_state(state))
    finally:
        checkpointer.close()
    return restored.variables


class TrainStep:
    """The engine's compiled step `(state, batch) -> (state, metrics, finite_flags)`: jitted
    with the state donated and every output replicated, traced and run under the
    partitionable threefry whatever the global default (a step's draws on a sharded batch then
    need no communication and do not depend on the device count)."""

    def __init__(self, step, mesh: Mesh):
        replicated = _replicated(mesh)
        self._jitted = jax.jit(step, donate_argnums=(0,), out_shardings=(replicated,) * 3)

    def __call__(self, state: TrainState, batch):
        with jax.threefry_partitionable(True):
            return self._jitted(state, batch)

    def compile(self, state: TrainState, batch):
        """The ahead-of-time compiled executable for these shapes (benchmarks time this)."""
        with jax.threefry_partitionable(True):
            return self._jitted.lower(state, batch).compile()


def build_train_step(
    method: Method, phase: Phase, plan: _Plan, mesh: Mesh, config: ConfigDict
) -> TrainStep:
    """The step the engine runs for `phase` of `plan` (from `initial_state`), with the run's
    step rng (`fold_in(base, step)`) and `train.grad_accum_steps` micro-batches."""
    base_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
    step = make_train_step(
        method, phase, plan.optimizers[phase.optimizer], base_rng, config.train.grad_accum_steps
    )
    return TrainStep(step, mesh)


def make_train_step(method: Method, phase: Phase, tx, base_rng, accum: int):
    """The jit-able step `(state, batch) -> (state, metrics, finite_flags)`."""

    def loss_and_grad(params, rest, batch, rng):
        def loss_fn(p):
            return method.loss(p, rest, batch, rng, phase)

        return jax.value_and_grad(loss_fn, has_aux=True)(params)

    def step(state: TrainState, batch):
        rng = jax.random.fold_in(base_rng, state.step)
        params = state.variables["params"]
        rest = {k: v for k, v in state.variables.items() if k != "params"}
        if accum == 1:
            (_, (metrics, new_rest)), grads = loss_and_grad(params, rest, batch, rng)
        else:
            # Row j of micro-batch i is global row j * accum + i: every device keeps its rows.
            micro = jax.tree.map(
                lambda x: jnp.swapaxes(x.reshape(x.shape[0] // accum, accum, *x.shape[1:]), 0, 1),
                batch,
            )

            def body(carry, inputs):
                rest_i, grad_sum = carry
                micro_batch, i = inputs
                (_, (m, rest_next)), g = loss_and_grad(
                    params, rest_i, micro_batch, jax.random.fold_in(rng, i)
                )
                return (rest_next, jax.tree.map(jnp.add, grad_sum, g)), m

            zeros = jax.tree.map(jnp.zeros_like, params)
            (new_rest, grad_sum), metrics = jax.lax.scan(
                body, (rest, zeros), (micro, jnp.arange(accum))
            )
            grads = jax.tree.map(lambda g: g / accum, grad_sum)
            metrics = jax.tree.map(lambda m: jnp.mean(m, axis=0), metrics)
        new_rest = dict(new_rest)
        if not phase.update_batch_stats and "batch_stats" in rest:
            new_rest["batch_stats"] = rest["batch_stats"]
        updates, opt_state = tx.update(grads, state.opt_states[phase.optimizer], params)
        updates = method.mask_updates(updates, rest)
        params = optax.apply_updates(params, updates)
        flags = {name: jnp.isfinite(value) for name, value in metrics.items()}
        flags["parameter_update"] = jnp.all(
            jnp.stack([jnp.all(jnp.isfinite(u)) for u in jax.tree.leaves(updates)])
        )
        new_state = state.replace(
            variables={**new_rest, "params": params},
            opt_states={**state.opt_states, phase.optimizer: opt_state},
            step=state.step + 1,
        )
        return new_state, metrics, flags

    return step


def _step_key(phase: Phase) -> tuple:
    """What defines a phase's compiled step: the loss sees the phase's name, the update its
    optimizer and rules (the same objects for every phase sharing the optimizer), and
    `update_batch_stats`; the epochs and the after-operations do not enter it."""
    return (phase.name, phase.optimizer, phase.trainable, phase.frozen, phase.update_batch_stats)


class _Trainer:
    def __init__(self, method, config, dataset, workdir, mesh, profile_steps):
        self.method, self.config, self.dataset = method, config, dataset
        self.workdir, self.mesh, self.profile_steps = workdir, mesh, profile_steps
        self.replicated = _replicated(mesh)
        self.checkpointer = Checkpointer(
            workdir / wd.CHECKPOINTS, keep=config.train.keep_checkpoints
        )
        self.writer = wd.MetricWriter(workdir)
        self.ctx = RunContext(config, dataset, mesh, workdir, self.writer, method)
        self.steps: dict[tuple, Any] = {}
        self.save_index = -1
        self.steps_done = 0
        self.stop_requested = False  # a first Ctrl-C: stop at the next step boundary
        self.forced = False  # a second one: stop at once
        self.saved_steps: dict[int, int] = {}  # checkpoint index -> its step
        self.train_seconds = 0.0
        self.train_images = 0
        self.wall_before = 0.0
        self.tracing = False

    # --- checkpoints -----------------------------------------------------------------
    def save(self, state: TrainState, host: dict) -> None:
        state = state.replace(
            phase_index=jax.device_put(np.int32(host["phase_index"]), self.replicated),
            epoch_in_phase=jax.device_put(np.int32(host["epoch_in_phase"]), self.replicated),
        )
        self.save_index += 1
        meta = {
            **host,
            "save_index": self.save_index,
            "records": self.ctx.records,
            "train_seconds": self.train_seconds,
            "train_images": self.train_images,
            "wall_seconds": self.wall_before + time.perf_counter() - self.started,
        }
        self.checkpointer.save(self.save_index, state, meta)
        self.saved_steps[self.save_index] = host["step"]

    def restore(self, state: TrainState) -> tuple[TrainState, dict]:
        latest = self.checkpointer.latest()
        if latest is None:
            return state, {"step": 0, "phase_index": 0, "epoch_in_phase": 0}
        restored, meta = self.checkpointer.restore(abstract_state(state))
        self.save_index = meta["save_index"]
        self.saved_steps[self.save_index] = meta["step"]
        self.ctx.records.update(meta.get("records", {}))
        self.train_seconds = meta.get("train_seconds", 0.0)
        self.train_images = meta.get("train_images", 0)
        self.wall_before = meta.get("wall_seconds", 0.0)
        log.info("Resumed from checkpoint %d at step %d.", latest, meta["step"])
        return restored, meta

    # --- steps -----------------------------------------------------------------------
    def compiled_step(self, plan: _Plan, index: int):
        """The jitted step of phase `index`, shared by every phase that the same name,
        optimizer, trainable rules and `update_batch_stats` define (revisited phases such as
        ProtoPNet's joint and last stages compile once)."""
        phase = plan.phases[index]
        key = _step_key(phase)
        if key not in self.steps:
            self.steps[key] = build_train_step(self.method, phase, plan, self.mesh, self.config)
        return self.steps[key]

    def check_flags(self, flags, step: int) -> None:
        flags = jax.device_get(flags)
        bad = sorted(name for name, ok in flags.items() if not bool(ok))
        if bad:
            raise NonFiniteError(
                f"The {', '.join(bad)} term became non-finite at step {step}; the last good "
                f"checkpoint in {self.checkpointer.directory} is kept. Lower the learning rate "
                "or check the inputs, then rerun to resume."
            )

    # --- the loop --------------------------------------------------------------------
    def run(self) -> dict[str, Any] | None:
        self.started = time.perf_counter()
        per_epoch = pipeline.steps_per_epoch(
            self.dataset.split("train"),
            self.config.data.batch_size,
            drop_last=self.config.data.drop_last,
        )
        state, plan = initial_state(self.method, self.config, self.dataset, self.mesh, per_epoch)
        if self.checkpointer.latest() is None:
            variables = self.method.load_pretrained(state.variables)
            state = state.replace(variables=jax.device_put(variables, self.replicated))
        state, host = self.restore(state)
        step = self.steps_done = host["step"]
        stop_after = self.config.train.stop_after_steps
        if stop_after and step >= stop_after:
            log.info("Already at step %d >= train.stop_after_steps=%d.", step, stop_after)
            return None
        progress = Progress(
            plan.total_steps,
            f"{self.method.name}",
            log_every=self.config.train.log_every_steps,
            enabled=self.config.train.progress and wd.is_main_process(),
        )
        progress.done = step
        # Every exit, an error included, ends the bar's line (so that an error sentence gets
        # a line of its own) and ends a trace still running.
        try:
            with self.deferred_interrupts():
                state, step, finished = self.train(state, plan, host, progress)
        except RunInterrupted:
            raise
        except KeyboardInterrupt:
            self.forced = True
            raise self.interrupted() from None
        finally:
            progress.close()
            self.stop_profile()
        self.checkpointer.wait()
        try:
            return self.finish(state, step) if finished else None
        except KeyboardInterrupt:
            raise self.interrupted() from None

    @contextlib.contextmanager
    def deferred_interrupts(self):
        """A first Ctrl-C asks the loop to checkpoint and stop at the next step boundary (a
        KeyboardInterrupt inside a step or a checkpoint write could lose either); a second
        stops at once. Only in the main thread of a single-process run: on several processes
        one process's signal cannot stop the others' collectives in step."""
        if threading.current_thread() is not threading.main_thread() or jax.process_count() > 1:
            yield
            return

        def handler(signum, frame):
            if self.stop_requested:
                raise KeyboardInterrupt
            self.stop_requested = True
            log.warning("Ctrl-C: stopping with a checkpoint after this step (again: at once).")

        previous = signal.signal(signal.SIGINT, handler)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)

    def stop_here(self, state, host: dict) -> RunInterrupted:
        """Checkpoints the position `host` after a first Ctrl-C; the interrupt to raise."""
        self.save(state, host)
        return self.interrupted()

    def train(self, state, plan: _Plan, host: dict, progress: Progress):
        """The phases from the restored position: `(state, step, finished)`."""
        step, phase_index, epoch_in_phase = (
            host["step"],
            host["phase_index"],
            host["epoch_in_phase"],
        )
        stop_after = self.config.train.stop_after_steps
        while phase_index < len(plan.phases):
            phase = plan.phases[phase_index]
            self.ctx.phase = phase.name
            while epoch_in_phase < phase.epochs:
                state, step, stopped = self.train_epoch(
                    state, plan, phase_index, epoch_in_phase, step, progress
                )
                if stopped:
                    return state, step, False
                epoch_in_phase += 1
                state = self.end_of_epoch(state, plan, phase_index, epoch_in_phase, step)
                if self.stop_requested:
                    raise self.stop_here(state, self._host(step, phase_index, epoch_in_phase))
                if stop_after and step >= stop_after:
                    if epoch_in_phase < phase.epochs:
                        self.checkpointer.wait()
                    else:
                        self.save(state, self._host(step, phase_index, epoch_in_phase))
                    return state, step, False
            if phase.after is not None:
                state = self.apply_op(state, phase.after, step)
            phase_index, epoch_in_phase = phase_index + 1, 0
            self.save(state, self._host(step, phase_index, 0))
            if self.stop_requested:
                raise self.interrupted()
        return state, step, True

    def interrupted(self) -> RunInterrupted:
        """The interrupt to raise on Ctrl-C, once a checkpoint being written is complete (so
        that the steps it holds are kept); a forced stop does not wait for it."""
        if not self.forced:
            self.checkpointer.wait()
        latest = self.checkpointer.latest()
        if latest is None or latest not in self.saved_steps:
            return RunInterrupted(
                f"interrupted at step {self.steps_done}, before the first checkpoint; rerun the "
                "same command to start again"
            )
        return RunInterrupted(
            f"interrupted at step {self.steps_done}; the last checkpoint is step "
            f"{self.saved_steps[latest]}; rerun the same command to resume"
        )

    # --- profiling -------------------------------------------------------------------
    def profile(self, step: int, state) -> None:
        """Starts the trace before the first step of this run at or past profile_steps[0]
        (a resume may start inside the window), and stops it once `step` reaches [1]."""
        if not self.profile_steps:
            return
        first, last = self.profile_steps
        if not self.tracing and first <= step < last:
            jax.profiler.start_trace(str(self.workdir / "profile"))
            self.tracing = True
        elif self.tracing and step >= last:
            self.stop_profile(state)

    def stop_profile(self, state=None) -> None:
        if self.tracing:
            if state is not None:
                jax.block_until_ready(state)
            jax.profiler.stop_trace()
            self.tracing = False

    @staticmethod
    def _host(step: int, phase_index: int, epoch_in_phase: int) -> dict:
        return {"step": step, "phase_index": phase_index, "epoch_in_phase": epoch_in_phase}

    def train_epoch(self, state, plan: _Plan, phase_index, epoch_in_phase, step, progress):
        phase = plan.phases[phase_index]
        train = self.config.train
        epoch_start = plan.phase_start(phase_index) + epoch_in_phase * plan.steps_per_epoch
        epoch_end = epoch_start + plan.steps_per_epoch
        step_fn = self.compiled_step(plan, phase_index)
        batches = pipeline.train_batches(
            self.dataset.split("train"),
            seed=self.config.seed,
            batch_size=self.config.data.batch_size,
            start_step=step,
            end_step=epoch_end,
            normalization=self.config.data.normalization,
            augment=self.config.data.augment,
            num_workers=self.config.data.num_workers,
            mesh=self.mesh,
            drop_last=self.config.data.drop_last,
        )
        pending_flags, window = None, []
        first = True
        for local in batches:
            self.profile(step, state)
            tick = time.perf_counter()
            batch = pipeline.to_global(local, self.mesh)
            state, metrics, flags = step_fn(state, batch)
            if pending_flags is not None:
                self.check_flags(pending_flags, step)
            pending_flags = flags
            window.append(metrics)
            step = self.steps_done = step + 1
            if first:  # the first step of a segment includes compilation
                jax.block_until_ready(state.step)
                first = False
            else:
                self.train_seconds += time.perf_counter() - tick
                self.train_images += self.config.data.batch_size
            self.profile(step, state)
            progress.update(1)
            if step % train.log_every_steps == 0 or step == epoch_end:
                self.check_flags(pending_flags, step)
                self.log_window(window, phase, plan, step, state)
                window = []
            if step == epoch_end:
                break
            if self.stop_requested:
                self.check_flags(pending_flags, step)
                raise self.stop_here(state, self._host(step, phase_index, epoch_in_phase))
            stop = bool(train.stop_after_steps) and step >= train.stop_after_steps
            if stop or (train.checkpoint_every_steps and step % train.checkpoint_every_steps == 0):
                # A non-finite step on a save boundary is reported by its term, not as a
                # refused checkpoint.
                self.check_flags(pending_flags, step)
                self.save(state, self._host(step, phase_index, epoch_in_phase))
            if stop:
                self.checkpointer.wait()
                return state, step, True
        if pending_flags is not None:
            self.check_flags(pending_flags, step)
        return state, step, False

    def log_window(self, window, phase: Phase, plan: _Plan, step: int, state) -> None:
        values = jax.device_get(window)
        mean = {k: float(np.mean([v[k] for v in values])) for k in values[0]}
        record = {
            "kind": "train",
            "step": step,
            "phase": phase.name,
            "epoch": step / plan.steps_per_epoch,
            **mean,
        }
        if self.train_seconds > 0:
            record["train_images_per_sec"] = self.train_images / self.train_seconds
        self.writer.write(record)

    def apply_op(self, state: TrainState, op, step: int) -> TrainState:
        """Runs a phase's `after` or `after_epoch` operation on the variables."""
        self.ctx.step = step
        variables = op(state.variables, self.ctx)
        return state.replace(variables=jax.device_put(variables, self.replicated))

    def end_of_epoch(self, state, plan: _Plan, phase_index, epoch_in_phase, step) -> TrainState:
        phase = plan.phases[phase_index]
        record = {
            "kind": "epoch",
            "step": step,
            "phase": phase.name,
            "epoch": step // plan.steps_per_epoch,
            "epoch_in_phase": epoch_in_phase,
        }
        optimizer_epochs = sum(
            p.epochs for p in plan.phases[:phase_index] if p.optimizer == phase.optimizer
        )
        # The rate of the epoch's last update: the optimizer counts its own updates.
        updates_done = (optimizer_epochs + epoch_in_phase) * plan.steps_per_epoch
        record["learning_rates"] = learning_rates(phase, plan.steps_per_epoch, updates_done - 1)
        every = self.config.train.eval_every_epochs
        if every and (step // plan.steps_per_epoch) % every == 0 and "val" in self.dataset.splits:
            record["val_accuracy"] = self.ctx.evaluate(state.variables, "val")
        self.writer.write(record)
        if phase.after_epoch is not None:
            state = self.apply_op(state, phase.after_epoch, step)
        if epoch_in_phase < phase.epochs and (
            not self.config.train.checkpoint_every_steps
            or step % self.config.train.checkpoint_every_steps == 0
        ):
            self.save(state, self._host(step, phase_index, epoch_in_phase))
        return state

    def finish(self, state: TrainState, step: int) -> dict[str, Any]:
        variables = state.variables
        self.ctx.step = step
        summary = {
            "test_accuracy": self.ctx.evaluate(variables, "test"),
            "val_accuracy": self.ctx.evaluate(variables, "val")
            if "val" in self.dataset.splits
            else None,
            "steps": step,
            "wall_time_s": self.wall_before + time.perf_counter() - self.started,
            "train_images_per_sec": self.train_images / self.train_seconds
            if self.train_seconds
            else None,
            "num_devices": self.mesh.devices.size,
            **self.ctx.records,
        }
        summary.update(self.method.summarize(variables, self.ctx))
        # Every process takes part in the method's figures (their data passes are collective
        # on a multi-host mesh); only the main process writes them.
        figures = list(self.method.figures(variables, self.ctx))
        if wd.is_main_process():
            from protojax.train.figures import training_curves

            figures.insert(0, training_curves(self.workdir))
        summary["figures"] = [str(pathlib.Path(f).relative_to(self.workdir)) for f in figures]
        wd.write_summary(self.workdir, summary)
        self.writer.write({"kind": "summary", "step": step, **summary})
        return summary

    def close(self) -> None:
        self.checkpointer.close()
        self.writer.close()


def run(
    method: Method,
    config: ConfigDict,
    workdir: str | pathlib.Path,
    mesh: Mesh | None = None,
    *,
    dataset: Dataset | None = None,
    profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any] | None:
    """Trains `method` through its phases and returns the summary.

    Args:
      method: a built `Method` (`protojax.methods.build_method(config, dataset)`, or a user's
        own); `protojax.runs.train(config, workdir)` builds it from `config.method`.
      config: the experiment config (see experiments/configs).
      workdir: where config.json, checkpoints, metrics.jsonl, summary.json and figures go.
        An existing workdir of the same config is resumed.
      mesh: a mesh with a "data" axis; default: all devices.
      dataset: an already loaded dataset (default: `load_dataset(config.data)`).
      profile_steps: (first, last) steps to trace with jax.profiler into workdir/profile.

    Returns:
      The summary dict, or None if the run stopped early (train.stop_after_steps).

    Raises:
      UsageError: a config value out of its range (before anything is written).
      WorkdirError: the workdir is a file, not writable, holds a run of another config, or
        another process is training in it (the main process holds `workdir/lock` while it
        runs).
      RunInterrupted: Ctrl-C (a KeyboardInterrupt) with the step reached and the last
        checkpoint's.
    """
    workdir = pathlib.Path(workdir)
    validate_config(config)
    wd.check_config(workdir, config)
    mesh = mesh or make_data_mesh()
    devices = mesh.devices.size
    for key in ("batch_size", "eval_batch_size"):
        if config.data[key] % devices:
            raise UsageError(
                f"data.{key}={config.data[key]} does not divide by the {devices} devices; "
                "choose a multiple (the global batch never depends on the device count)."
            )
    if config.data.batch_size % (config.train.grad_accum_steps * devices):
        raise UsageError(
            f"data.batch_size={config.data.batch_size} must divide by train.grad_accum_steps "
            f"× devices = {config.train.grad_accum_steps * devices}."
        )
    with wd.locked(workdir):
        dataset = dataset or load_dataset(config.data)
        wd.write_config(workdir, config)
        wd.write_dataset_info(workdir, dataset)
        trainer = _Trainer(method, config, dataset, workdir, mesh, profile_steps)
        try:
            return trainer.run()
        finally:
            trainer.close()
