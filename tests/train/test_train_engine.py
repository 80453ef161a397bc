"""The engine: phases, optimizer persistence, exact resume, checkpoint and non-finite errors.

A toy method (a two-layer MLP on 8×8 digits) keeps these tests fast; the black box is tested
in tests/methods.
"""

import gc
import io
import json
import pathlib
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import protojax
from experiments.configs.common import base_config
from protojax.data.digits import load_digits
from protojax.errors import CheckpointError, NonFiniteError, UsageError, WorkdirError
from protojax.methods.common import cross_entropy
from protojax.runs import train as train_run
from protojax.train import Method, Phase, adam, make_data_mesh, run, sgd
from protojax.train.workdir import read_metrics


class MLP(nn.Module):
    hidden: int = 16

    @nn.compact
    def __call__(self, images):
        x = images.reshape(images.shape[0], -1)
        x = nn.relu(nn.Dense(self.hidden, name="a")(x))
        return nn.Dense(10, name="b")(x)


def _halve_head(variables, ctx):
    """An `after` op that uses the context's rng and records a value."""
    params = jax.tree.map(lambda x: x, variables["params"])
    noise = jax.random.normal(ctx.rng("after"), params["b"]["kernel"].shape) * 1e-3
    params["b"]["kernel"] = 0.5 * params["b"]["kernel"] + noise
    ctx.record("after_calls", ctx.records.get("after_calls", 0) + 1)
    ctx.record(f"val_after_{ctx.phase}_{ctx.step}", ctx.evaluate({**variables, "params": params}))
    return {**variables, "params": params}


def _count_epochs(variables, ctx):
    """An `after_epoch` op: records how often it ran and logs an event."""
    ctx.record("epoch_ops", ctx.records.get("epoch_ops", 0) + 1)
    ctx.log(epoch_op_at=ctx.step)
    return variables


class Toy(Method):
    name = "toy"

    def __init__(self, hidden=16, nan_at_step=None, jitter=1e-3):
        self.net = MLP(hidden)
        self.nan_at_step = nan_at_step
        self.jitter = jitter

    def init(self, rng, batch):
        variables = dict(self.net.init(rng, batch["image"]))
        variables["counter"] = {"steps": jnp.zeros((), jnp.int32)}
        return variables

    def loss(self, params, state, batch, rng, phase):
        logits = self.net.apply({"params": params}, batch["image"])
        ce = cross_entropy(logits, batch["label"], batch["valid"])
        # Dropout-like noise from the step rng, so that rng handling is part of the resume test.
        jitter = self.jitter * jax.random.normal(rng, ())
        steps = state["counter"]["steps"]
        exploding = jnp.where(
            (self.nan_at_step is not None) & (steps >= (self.nan_at_step or 0)), jnp.nan, 0.0
        )
        total = ce + jitter * jnp.mean(logits) + exploding
        metrics = {"loss": total, "cross_entropy": ce, "exploding": exploding}
        return total, (metrics, {"counter": {"steps": steps + 1}})

    def predict(self, variables, images):
        return self.net.apply({"params": variables["params"]}, images)

    def embed(self, variables, images):
        return self.predict(variables, images)

    def phases(self, config):
        first = (("a/.*", adam(1e-2, weight_decay=1e-3)),)
        second = (("b/.*", sgd(0.1)), ("a/bias", sgd(0.01)))
        return [
            Phase("first", 1, "adam", first, frozen=("b/.*",), after=_halve_head),
            Phase("second", 2, "sgd", second, frozen=("a/kernel",), after_epoch=_count_epochs),
            Phase("push_only", 0, "sgd", second, frozen=("a/kernel",), after=_halve_head),
            Phase("first", 1, "adam", first, frozen=("b/.*",)),
        ]

    def targets(self, variables):
        return {}


@pytest.fixture(scope="module")
def digits8():
    return load_digits(image_size=8)


def toy_config(**train):
    config = base_config("blackbox")
    config.data.image_size = 8
    config.data.batch_size = 32
    config.data.eval_batch_size = 128
    config.train.log_every_steps = 10
    config.train.progress = False
    for key, value in train.items():
        config.train[key] = value
    return config


@pytest.fixture(scope="module")
def mesh2():
    return make_data_mesh(jax.devices()[:2])


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory, digits8, mesh2):
    workdir = tmp_path_factory.mktemp("full")
    summary = run(Toy(), toy_config(), workdir, mesh2, dataset=digits8)
    return workdir, summary


def _restore(workdir, digits8, method=None):
    from protojax.train.loop import restore_variables

    return restore_variables(method or Toy(), toy_config(), digits8, pathlib.Path(workdir))


def test_phases_run_in_order_and_after_ops_once(uninterrupted):
    workdir, summary = uninterrupted
    # 1,293 train / 32 = 40 steps per epoch; 1 + 2 + 0 + 1 epochs.
    assert summary["steps"] == 160
    assert summary["after_calls"] == 2 and summary["epoch_ops"] == 2
    assert {"val_after_first_40", "val_after_push_only_120"} <= set(summary)
    records = read_metrics(workdir)
    phases = [r["phase"] for r in records if r["kind"] == "epoch"]
    assert phases == ["first", "second", "second", "first"]
    for key in ("test_accuracy", "val_accuracy", "steps", "wall_time_s", "train_images_per_sec"):
        assert key in json.loads((workdir / "summary.json").read_text())
    assert (workdir / "figures" / "training_curves.png").stat().st_size > 10_000
    assert summary["test_accuracy"] > 0.8


def test_optimizer_state_persists_across_revisits(uninterrupted, digits8):
    """The adam state counts the updates of both visits of phase 'first' (40 + 40)."""
    workdir, _ = uninterrupted
    from protojax.train.checkpoint import Checkpointer
    from protojax.train.loop import abstract_state, initial_state

    mesh = make_data_mesh(jax.local_devices()[:1])
    state, _ = initial_state(Toy(), toy_config(), digits8, mesh, steps_per_epoch=40)
    checkpointer = Checkpointer(workdir / "checkpoints")
    restored, meta = checkpointer.restore(abstract_state(state))
    checkpointer.close()
    counts = [
        int(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored.opt_states["adam"])[0]
        if "count" in jax.tree_util.keystr(path)
    ]
    assert counts and set(counts) == {80}
    sgd_counts = [
        int(leaf)
        for path, leaf in jax.tree_util.tree_flatten_with_path(restored.opt_states["sgd"])[0]
        if "count" in jax.tree_util.keystr(path)
    ]
    assert set(sgd_counts) <= {80}
    assert meta["step"] == 160 and meta["phase_index"] == 4


def test_frozen_parameters_do_not_move(tmp_path, digits8, mesh2):
    """Phase 'first' trains only a/*: b/* must be bitwise unchanged until its after op."""
    with jax.threefry_partitionable(False):  # as the engine initialises
        init = Toy().init(
            jax.random.fold_in(jax.random.key(0), 0), {"image": jnp.zeros((2, 8, 8, 1))}
        )
    run(Toy(), toy_config(stop_after_steps=20), tmp_path, mesh2, dataset=digits8)
    variables = _restore(tmp_path, digits8)
    np.testing.assert_array_equal(variables["params"]["b"]["kernel"], init["params"]["b"]["kernel"])
    assert not np.array_equal(variables["params"]["a"]["kernel"], init["params"]["a"]["kernel"])


@pytest.mark.parametrize("stops", [(15, 40, 95), (40, 120)])
def test_resume_is_bit_identical(tmp_path, digits8, mesh2, uninterrupted, stops):
    """Stopping mid-epoch, at a phase end before its after op, and mid-phase, then resuming,
    gives exactly the parameters, batch-independent state and records of one run."""
    full_dir, full_summary = uninterrupted
    for stop in stops:
        assert (
            run(Toy(), toy_config(stop_after_steps=stop), tmp_path, mesh2, dataset=digits8) is None
        )
    summary = run(Toy(), toy_config(), tmp_path, mesh2, dataset=digits8)
    expected, got = _restore(full_dir, digits8), _restore(tmp_path, digits8)
    jax.tree.map(np.testing.assert_array_equal, expected, got)
    for key in ("test_accuracy", "val_accuracy", "steps", "after_calls", "epoch_ops"):
        assert summary[key] == full_summary[key]
    # Only the steps after each restored one were logged: no step appears twice.
    steps = [
        json.loads(line)["step"]
        for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
        if json.loads(line)["kind"] == "train"
    ]
    assert steps == sorted(set(steps))


def test_other_config_in_workdir_stops_and_names_keys(uninterrupted, digits8, mesh2):
    workdir, _ = uninterrupted
    config = toy_config()
    config.seed = 3
    config.data.batch_size = 64
    before = (workdir / "config.json").read_text()
    with pytest.raises(WorkdirError, match=r"data\.batch_size, seed"):
        run(Toy(), config, workdir, mesh2, dataset=digits8)
    assert (workdir / "config.json").read_text() == before


def test_runtime_keys_may_change_on_resume(uninterrupted, digits8, mesh2):
    workdir, full_summary = uninterrupted
    summary = run(Toy(), toy_config(log_every_steps=7), workdir, mesh2, dataset=digits8)
    assert summary["test_accuracy"] == full_summary["test_accuracy"]


# Orbax leaves un-awaited read coroutines behind when a damaged file fails to load.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_truncated_checkpoint_is_a_clear_error_and_nothing_is_deleted(tmp_path, digits8, mesh2):
    run(Toy(), toy_config(stop_after_steps=40), tmp_path, mesh2, dataset=digits8)
    checkpoints = tmp_path / "checkpoints"
    files = sorted(
        (p for p in checkpoints.rglob("*") if p.is_file() and "ocdbt" in str(p)),
        key=lambda p: p.stat().st_size,
    )
    victim = files[-1]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])
    listing = sorted(str(p) for p in checkpoints.rglob("*"))
    with pytest.raises(CheckpointError, match="corrupt or does not match"):
        run(Toy(), toy_config(), tmp_path, mesh2, dataset=digits8)
    assert sorted(str(p) for p in checkpoints.rglob("*")) == listing
    gc.collect()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_checkpoint_of_another_model_is_a_clear_error(tmp_path, digits8, mesh2):
    run(Toy(), toy_config(stop_after_steps=5), tmp_path, mesh2, dataset=digits8)
    with pytest.raises(CheckpointError, match="another model|does not match"):
        run(Toy(hidden=12), toy_config(), tmp_path, mesh2, dataset=digits8)
    gc.collect()  # the coroutines are reported here (filtered), not in a later test


def test_non_finite_loss_names_step_and_term_and_keeps_last_good_checkpoint(
    tmp_path, digits8, mesh2
):
    config = toy_config(checkpoint_every_steps=5)
    with pytest.raises(NonFiniteError, match=r"exploding.*step 13|step 13.*exploding"):
        run(Toy(nan_at_step=12), config, tmp_path, mesh2, dataset=digits8)
    from protojax.train.checkpoint import Checkpointer

    checkpointer = Checkpointer(tmp_path / "checkpoints")
    latest = checkpointer.latest()
    checkpointer.close()
    variables = _restore(tmp_path, digits8)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables["params"]))
    assert latest is not None and int(variables["counter"]["steps"]) == 10


class Tty(io.StringIO):
    def isatty(self):
        return True


def test_non_finite_step_on_a_checkpoint_boundary_names_the_term(
    tmp_path, digits8, mesh2, monkeypatch
):
    """Step 15 is non-finite and a checkpoint is due at it: the run names the step and the
    term (rather than refusing the checkpoint), keeps the one of step 10, and ends the
    progress bar's line so that the sentence gets its own."""
    tty = Tty()
    monkeypatch.setattr(sys, "stderr", tty)
    config = toy_config(checkpoint_every_steps=5, progress=True)
    with pytest.raises(NonFiniteError) as raised:
        run(Toy(nan_at_step=14), config, tmp_path, mesh2, dataset=digits8)
    message = str(raised.value)
    # The NaN term is constant in the parameters: their update stays finite, so a save at
    # step 15 would have gone through and replaced the last good checkpoint.
    assert message.startswith("The exploding, loss term became non-finite at step 15;")
    assert "last good checkpoint" in message
    variables = _restore(tmp_path, digits8)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(variables["params"]))
    assert int(variables["counter"]["steps"]) == 10
    assert "15/160" in tty.getvalue() and tty.getvalue().endswith("\n")


def test_steps_use_the_partitionable_threefry_whatever_the_default(tmp_path, digits8, mesh2):
    """Toy's loss draws from the step key; the classic and partitionable threefry give other
    numbers for it, so equal parameters mean that the steps ignored the global default."""
    with jax.threefry_partitionable(False):
        classic = jax.random.normal(jax.random.key(0), (4,))
    assert not np.array_equal(classic, jax.random.normal(jax.random.key(0), (4,)))
    config = toy_config(stop_after_steps=3)
    with jax.threefry_partitionable(False):
        run(Toy(jitter=1.0), config, tmp_path / "classic", mesh2, dataset=digits8)
    with jax.threefry_partitionable(True):
        run(Toy(jitter=1.0), config, tmp_path / "partitionable", mesh2, dataset=digits8)
    classic = _restore(tmp_path / "classic", digits8)
    partitionable = _restore(tmp_path / "partitionable", digits8)
    jax.tree.map(np.testing.assert_array_equal, classic, partitionable)


def _traces(workdir):
    return {p: p.stat().st_mtime_ns for p in (workdir / "profile").rglob("*.xplane.pb")}


def test_profile_trace_ends_with_the_run_and_starts_inside_the_window_on_resume(
    tmp_path, digits8, mesh2
):
    """A run that stops (step 5) before the window's end (50) still writes its trace, and a
    resume from step 5 into the window 1:7 starts a trace at once and stops it at step 7."""
    run(
        Toy(),
        toy_config(stop_after_steps=5),
        tmp_path,
        mesh2,
        dataset=digits8,
        profile_steps=(2, 50),
    )
    first = _traces(tmp_path)
    assert len(first) == 1 and next(iter(first)).stat().st_size > 1000
    run(
        Toy(),
        toy_config(stop_after_steps=8),
        tmp_path,
        mesh2,
        dataset=digits8,
        profile_steps=(1, 7),
    )
    second = _traces(tmp_path)
    assert any(first.get(path) != mtime for path, mtime in second.items())
    # No trace is left running: a new one can start.
    jax.profiler.start_trace(str(tmp_path / "after"))
    jax.profiler.stop_trace()


def test_load_workdir_reproduces_the_recorded_test_accuracy(tmp_path, digits8, mesh2):
    """A finished black-box run, read back from its workdir alone: its predictions on the
    test images give exactly the test_accuracy of summary.json."""
    config = toy_config(epochs=1)
    config.data.batch_size = 128
    train_run(config, tmp_path, mesh2, dataset=digits8)
    method, variables, loaded = protojax.load_workdir(str(tmp_path))
    assert method.name == "blackbox"
    assert protojax.config.to_dict(loaded) == protojax.config.to_dict(config)
    test = digits8.split("test")
    batch = test.get_batch(np.arange(len(test)))  # data.normalization is "none"
    logits = np.asarray(jax.jit(method.predict)(variables, batch["image"]))
    assert logits.shape == (360, 10)
    correct = int(np.sum(np.argmax(logits, axis=1) == batch["label"]))
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["steps"] == 10
    assert correct / 360 == summary["test_accuracy"]

    # A run written before the library gained a key reads back with that key's default.
    stored = json.loads((tmp_path / "config.json").read_text())
    del stored["data"]["download"], stored["data"]["augment"]["hflip"]
    (tmp_path / "config.json").write_text(json.dumps(stored))
    _, _, older = protojax.load_workdir(tmp_path)
    assert older.data.download is True and older.data.augment.hflip is False
    assert protojax.config.to_dict(older) == protojax.config.to_dict(config)


def test_gradient_accumulation_matches_the_full_batch(tmp_path, digits8, mesh2):
    """Without batch-dependent state, 4 micro-batches give the full-batch update."""
    full = tmp_path / "full"
    accum = tmp_path / "accum"
    toy = Toy(jitter=0.0)
    run(toy, toy_config(stop_after_steps=3), full, mesh2, dataset=digits8)
    run(toy, toy_config(stop_after_steps=3, grad_accum_steps=4), accum, mesh2, dataset=digits8)
    a, b = _restore(full, digits8, toy), _restore(accum, digits8, toy)
    check = lambda x, y: np.testing.assert_allclose(x, y, rtol=2e-5, atol=1e-6)
    jax.tree.map(check, a["params"], b["params"])


def test_batch_must_divide_by_devices(tmp_path, digits8):
    from protojax.errors import UsageError

    config = toy_config()
    config.data.batch_size = 30
    with pytest.raises(UsageError, match="does not divide by the 4 devices"):
        run(Toy(), config, tmp_path, make_data_mesh(), dataset=digits8)


def test_progress_bar_on_a_terminal_and_plain_lines_otherwise():
    from protojax.train.progress import Progress

    tty, plain = Tty(), io.StringIO()
    bar = Progress(10, "train", stream=tty)
    lines = Progress(10, "train", stream=plain, log_every=5)
    for _ in range(10):
        bar.update()
        lines.update()
    assert "\r" in tty.getvalue() and "10/10" in tty.getvalue() and "step/s" in tty.getvalue()
    assert plain.getvalue().count("\n") == 2 and "\r" not in plain.getvalue()
    assert "eta" in plain.getvalue()
    bar.close()
    bar.close()  # ends the line once
    lines.close()
    assert tty.getvalue().endswith("\n") and not tty.getvalue().endswith("\n\n")
    assert plain.getvalue().count("\n") == 2


class OnePhaseToy(Toy):
    def phases(self, config):
        return [Phase("first", 1, "adam", ((".*", adam(1e-2)),))]


def test_no_val_split_and_kept_last_batch(tmp_path, mesh2):
    """val_fraction=0 and drop_last=False: ceil(1,437 / 32) = 45 steps, no val figures, and
    the reported accuracy is that of the final parameters."""
    config = toy_config()
    config.data.val_fraction = 0.0
    config.data.drop_last = False
    dataset = load_digits(image_size=8, val_fraction=0.0)
    summary = run(OnePhaseToy(), config, tmp_path, mesh2, dataset=dataset)
    assert summary["steps"] == 45 and summary["val_accuracy"] is None
    variables = _restore(tmp_path, dataset, OnePhaseToy())
    method = OnePhaseToy()
    test = dataset.split("test")
    images = test.get_batch(np.arange(len(test)))["image"]
    predicted = np.argmax(method.predict(variables, images), axis=1)
    assert summary["test_accuracy"] == pytest.approx(np.mean(predicted == test.labels))
    assert not any("val_accuracy" in r for r in read_metrics(tmp_path) if r["kind"] == "epoch")


class CountingToy(Toy):
    """Counts the traces of its loss: one per compiled step."""

    def __init__(self):
        super().__init__()
        self.traced = []

    def loss(self, params, state, batch, rng, phase):
        self.traced.append(phase.name)
        return super().loss(params, state, batch, rng, phase)


def test_revisited_phases_reuse_their_compiled_step(tmp_path, digits8, mesh2):
    toy = CountingToy()
    run(toy, toy_config(), tmp_path, mesh2, dataset=digits8)
    # first, second, push_only (no epochs), first again: two programs.
    assert toy.traced == ["first", "second"]


class Typo(Toy):
    def phases(self, config):
        return [Phase("first", 1, "adam", (("a/.*", adam(1e-2)),), frozen=("bb/.*",))]


def test_a_parameter_no_rule_names_is_an_error_naming_it(tmp_path, digits8, mesh2):
    with pytest.raises(UsageError, match=r"neither trains nor freezes b/bias, b/kernel"):
        run(Typo(), toy_config(), tmp_path, mesh2, dataset=digits8)
