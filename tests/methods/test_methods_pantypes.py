"""Pantypes: reuse of ProtoVAE, the volume term's wiring, inactive prototypes, elimination
(diagnostics, static shapes, frozen parameters through the engine), and (slow) the digits
targets of both methods."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.base import ArraySplit
from protojax.data.digits import load_digits
from protojax.errors import UsageError
from protojax.methods import build_method, pantypes
from protojax.methods.pantypes import Pantypes, eliminate
from protojax.methods.protovae import ProtoVAE
from protojax.prototypes import diversity
from protojax.runs import train as train_run
from protojax.train import Method, Phase, RunContext, TrainState, adam, make_data_mesh
from protojax.train.loop import make_train_step
from protojax.train.optim import build_optimizer
from protojax.train.workdir import MetricWriter, read_metrics

TRAIN = Phase("train", 1, "adam", ())


def tiny_config(**model):
    config = load_config("pantypes_digits")
    for key, value in [
        ("model.latent_dim", 6),
        ("model.prototypes_per_class", 3),
        ("data.batch_size", 8),
        ("train.progress", False),
        *((f"model.{k}", v) for k, v in model.items()),
    ]:
        set_value(config, key, value)
    return config


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=28)


@pytest.fixture(scope="module")
def batch(digits):
    raw = digits.split("train").get_batch(np.arange(8))
    return {
        "image": jnp.asarray(raw["image"] * 2 - 1),
        "label": jnp.asarray(raw["label"]),
        "index": jnp.arange(8),
        "valid": jnp.ones(8, bool),
    }


@pytest.fixture(scope="module")
def method(digits):
    return build_method(tiny_config(), digits)


@pytest.fixture(scope="module")
def variables(method, batch):
    # Non-partitionable threefry compiles the random initialisers about 5× faster on CPU.
    with jax.threefry_partitionable(False):
        return jax.jit(method.init)(jax.random.key(0), batch)


def test_pantypes_is_protovae_with_the_volume_term(method):
    assert isinstance(method, Pantypes) and isinstance(method, ProtoVAE)
    for name in ("loss", "predict", "embed", "targets", "figures", "mask_updates"):
        assert getattr(Pantypes, name) is getattr(ProtoVAE, name)
    assert pantypes.inverse_volume_loss is diversity.inverse_volume_loss
    assert method.loss_weights == {
        "cross_entropy": 1.0,
        "reconstruction": 1.0,
        "kl": 1.0,
        "inverse_volume": 1.0,
    }
    (phase,) = method.phases(tiny_config())
    assert phase.after_epoch is not None and phase.trainable[0][0] == ".*"


def split_state(variables):
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


@pytest.fixture(scope="module")
def both_terms(digits):
    """A method with every term weighted, and its jitted loss."""
    config = tiny_config()
    for key, value in dict(
        cross_entropy=2.0, reconstruction=0.5, kl=1.5, orthonormality=0.3, inverse_volume=4.0
    ).items():
        set_value(config, f"model.loss_weights.{key}", value)
    set_value(config, "model.volume_scale", 0.5)
    method = build_method(config, digits)
    return method, jax.jit(lambda p, s, b: method.loss(p, s, b, jax.random.key(0), TRAIN))


def test_volume_and_orthonormality_terms_are_wired_with_their_weights(both_terms, variables, batch):
    method, loss = both_terms
    params, state = split_state(variables)
    total, (metrics, _) = loss(params, state, batch)
    weights = method.loss_weights
    np.testing.assert_allclose(
        total, sum(w * metrics[name] for name, w in weights.items()), rtol=1e-6
    )
    grouped = params["prototypes"].reshape(10, 3, 6)
    np.testing.assert_allclose(
        metrics["inverse_volume"], diversity.inverse_volume_loss(grouped, scale=0.5), rtol=1e-5
    )
    # The volume term is the mean over classes of 1/√det(c·P_k P_kᵀ), in float64.
    p = np.asarray(grouped, np.float64)
    expected = np.mean([1 / np.sqrt(np.linalg.det(0.5 * pk @ pk.T)) for pk in p])
    np.testing.assert_allclose(metrics["inverse_volume"], expected, rtol=1e-3)
    np.testing.assert_allclose(
        metrics["orthonormality"], diversity.orthonormality_loss(grouped), rtol=1e-5
    )


def float64_orthonormality(p):
    """Mean over classes of ‖P̃_k P̃_kᵀ − I‖_F, P̃_k the class-centred prototypes."""
    losses = []
    for block in np.asarray(p, np.float64):
        centred = block - block.mean(0)
        losses.append(np.linalg.norm(centred @ centred.T - np.eye(len(block))))
    return np.mean(losses)


def test_orthonormality_is_logged_at_weight_0(method, variables, batch):
    """As the official code logs it; the total stays the sum of the weighted terms."""
    params, state = split_state(variables)
    loss = jax.jit(lambda p, s, b: method.loss(p, s, b, jax.random.key(0), TRAIN))
    total, (metrics, _) = loss(params, state, batch)
    assert "orthonormality" not in method.loss_weights
    np.testing.assert_allclose(
        metrics["orthonormality"],
        float64_orthonormality(params["prototypes"].reshape(10, 3, 6)),
        rtol=1e-5,
    )
    weighted = ("cross_entropy", "reconstruction", "kl", "inverse_volume")
    np.testing.assert_allclose(total, sum(metrics[name] for name in weighted), rtol=1e-6)
    assert float(metrics["loss"]) == float(total)


def test_inactive_prototypes_drop_out_of_every_term(both_terms, variables, batch):
    method, loss = both_terms
    params, state = split_state(variables)
    active = np.ones(30, bool)
    active[[4, 9, 15]] = False
    state = {**state, "prototype_state": {**state["prototype_state"], "active": active}}
    _, (metrics, _) = loss(params, state, batch)
    moved = {**params, "prototypes": params["prototypes"].at[np.array([4, 9, 15])].set(7.0)}
    _, (metrics_moved, _) = loss(moved, state, batch)
    for name, value in metrics.items():
        np.testing.assert_allclose(metrics_moved[name], value, rtol=1e-6, err_msg=name)
    grouped = params["prototypes"].reshape(10, 3, 6)
    np.testing.assert_allclose(
        metrics["inverse_volume"],
        diversity.inverse_volume_loss(grouped, active=active.reshape(10, 3), scale=0.5),
        rtol=1e-5,
    )


def test_eliminate_keeps_the_last_prototype_of_a_class():
    owner = np.array([0, 0, 0, 1, 1, 1])
    active = np.array([True, True, True, True, True, False])
    ood = np.array([True, False, True, True, True, False])
    similarity = np.array([5.0, 1.0, 2.0, 1.0, 3.0, 9.0])
    new = eliminate(active, ood, owner, similarity)
    # Class 0 keeps its in-distribution prototype; class 1 would lose all its active ones,
    # so the one of largest summed similarity among them (4) stays.
    np.testing.assert_array_equal(new, [False, True, False, False, True, False])


def test_elimination_flips_active_keeps_shapes_and_logs(tmp_path, method, variables, digits):
    train = digits.split("train")
    labels = train.labels
    images = train.get_batch(np.arange(len(train)))["image"] * 2 - 1
    # The untrained latents lie within ~0.01 of each other; spread them (×1000) so that
    # every sample's nearest prototype is clear in float32 as in float64.
    encoder = dict(variables["params"]["encoder"])
    encoder["Dense_1"] = jax.tree.map(lambda w: 1000 * w, encoder["Dense_1"])
    variables = {**variables, "params": {**variables["params"], "encoder": encoder}}
    mu = np.asarray(jax.jit(method.embed)(variables, jnp.asarray(images)), np.float64)
    # The first prototype of each class sits on one of its samples (so it is used), the
    # second of class 1 is far from every sample (so it is not).
    prototypes = np.asarray(variables["params"]["prototypes"], np.float64)
    for c in range(10):
        prototypes[3 * c] = mu[np.flatnonzero(labels == c)[0]]
    far = 4
    prototypes[far] = mu.mean(axis=0) + 100.0
    params = {**variables["params"], "prototypes": jnp.asarray(prototypes, jnp.float32)}
    before = {**variables, "params": params}
    config = tiny_config(eliminate_at_epoch=2)
    writer = MetricWriter(tmp_path)
    ctx = RunContext(config, digits, make_data_mesh(jax.devices()[:1]), tmp_path, writer, method)
    ctx.step = 2 * (len(train) // 8)  # the end of epoch 2
    after = Pantypes(config, digits).after_epoch(before, ctx)
    writer.close()
    assert jax.tree.map(np.shape, after) == jax.tree.map(np.shape, before)
    active = np.asarray(after["prototype_state"]["active"])
    # Independent check: count, in NumPy, the training samples closest to each prototype.
    dist = np.linalg.norm(mu[:, None] - prototypes[None], axis=-1)
    counts = np.bincount(dist.argmin(axis=1), minlength=30)
    nearest = np.sort(dist, axis=1)
    assert np.min(nearest[:, 1] - nearest[:, 0]) > 1e-4 * np.median(nearest[:, 0])
    owner = np.arange(30) // 3
    assert not active[far] and counts[far] == 0
    np.testing.assert_array_equal(active[counts > 0], True)
    for c in range(10):
        assert active[owner == c].any()
        if counts[owner == c].any():
            np.testing.assert_array_equal(active[owner == c], counts[owner == c] > 0)
    (diagnostics,) = [r for r in read_metrics(tmp_path) if r.get("kind") == "event"]
    assert diagnostics["epoch"] == 2 and diagnostics["active_prototypes"] == 30
    assert (
        diagnostics["out_of_distribution_per_class"]
        == np.bincount(owner[counts == 0], minlength=10).tolist()
    )
    for key in ("davies_bouldin", "coverage", "prototype_log_volume"):
        assert np.isfinite(diagnostics[key])
    assert 0 < diagnostics["coverage"] <= 1
    assert diagnostics["eliminated_prototypes"] == np.flatnonzero(~active).tolist()
    assert ctx.records["eliminated_prototypes"] == diagnostics["eliminated_prototypes"]
    # At another epoch the diagnostics are logged but nothing changes.
    ctx.step += 1000
    writer = ctx.writer = MetricWriter(tmp_path)
    again = Pantypes(config, digits).after_epoch(before, ctx)
    writer.close()
    assert np.asarray(again["prototype_state"]["active"]).all()


def test_reset_optimizer_runs_the_epochs_after_elimination_on_a_fresh_adam(digits):
    config = tiny_config(eliminate_at_epoch=3, reset_optimizer=True)
    set_value(config, "train.epochs", 10)
    before, after = Pantypes(config, digits).phases(config)
    assert (before.epochs, after.epochs) == (3, 7)
    # The engine keeps an optimizer's state by name: a new name starts from zero moments.
    assert before.optimizer == "adam" and after.optimizer == pantypes.RESET_OPTIMIZER
    assert before.trainable == after.trainable and after.after_epoch is not None
    set_value(config, "model.reset_optimizer", False)
    (single,) = Pantypes(config, digits).phases(config)
    assert single.epochs == 10 and single.optimizer == "adam"
    with pytest.raises(UsageError, match="eliminate_at_epoch"):
        Pantypes(tiny_config(reset_optimizer=True), digits)
    with pytest.raises(UsageError, match="usage_from"):
        Pantypes(tiny_config(usage_from="test_pass"), digits)


def test_usage_from_training_batches_counts_in_train_mode_and_judges(tmp_path, digits, batch):
    config = tiny_config(usage_from="training_batches", eliminate_at_epoch=1)
    # 64 training images keep the diagnostics pass short.
    train = digits.split("train")
    small = dataclasses.replace(
        digits, splits={"train": ArraySplit(train.images[:64], train.labels[:64])}
    )
    method = Pantypes(config, small)
    with jax.threefry_partitionable(False):
        variables = jax.jit(method.init)(jax.random.key(0), batch)
    params, state = split_state(variables)
    active = np.ones(30, bool)
    active[5] = False
    state["prototype_state"] = {**state["prototype_state"], "active": jnp.asarray(active)}
    assert not np.asarray(state["prototype_state"]["usage_counts"]).any()
    valid = np.array([True] * 6 + [False] * 2)
    rows = {**batch, "valid": jnp.asarray(valid)}
    loss = jax.jit(lambda p, s, b: method.loss(p, s, b, jax.random.key(0), TRAIN))
    _, (_, new_state) = loss(params, state, rows)
    _, (_, twice) = loss(params, {**new_state, "batch_stats": state["batch_stats"]}, rows)
    # Independently: the train-mode latents' nearest active prototype, valid rows only.
    forward = jax.jit(
        lambda v, x, on: method.net.apply(v, x, on, train=True, mutable=["batch_stats"])
    )
    on = state["prototype_state"]["active"]
    outputs, _ = forward(
        {"params": params, "batch_stats": state["batch_stats"]}, batch["image"], on
    )
    mu = np.asarray(outputs.mu, np.float64)
    prototypes = np.asarray(params["prototypes"], np.float64)
    dist = np.linalg.norm(mu[:, None] - prototypes[None], axis=-1)
    dist[:, ~active] = np.inf
    expected = np.bincount(dist.argmin(axis=1)[valid], minlength=30)
    np.testing.assert_array_equal(new_state["prototype_state"]["usage_counts"], expected)
    np.testing.assert_array_equal(twice["prototype_state"]["usage_counts"], 2 * expected)
    # After epoch 1 the counts judge: class 1 (prototypes 3-5) keeps one of its unused
    # prototypes, 5 is inactive already, prototype 8 of class 2 is unused.
    counts = np.ones(30, np.int32)
    counts[[3, 4, 5, 8]] = 0
    trained = {
        "params": params,
        **state,
        "prototype_state": {**state["prototype_state"], "usage_counts": jnp.asarray(counts)},
    }
    writer = MetricWriter(tmp_path)
    ctx = RunContext(config, small, make_data_mesh(jax.devices()[:1]), tmp_path, writer, method)
    ctx.step = 64 // 8  # the end of epoch 1
    after = method.after_epoch(trained, ctx)
    writer.close()
    now = np.asarray(after["prototype_state"]["active"])
    assert not now[[5, 8]].any() and now[[3, 4]].sum() == 1
    assert now.sum() == 27
    assert not np.asarray(after["prototype_state"]["usage_counts"]).any()
    (event,) = [r for r in read_metrics(tmp_path) if r.get("kind") == "event"]
    assert event["out_of_distribution_per_class"] == [0, 2, 1] + [0] * 7
    assert sorted(event["eliminated_prototypes"]) == sorted(np.flatnonzero(active & ~now).tolist())


class PrototypeToy(Method):
    """Prototypes `[P, d]` and a last layer `[P, K]` whose loss ignores inactive rows, as
    ProtoVAE's does, with or without ProtoVAE's `mask_updates`."""

    def __init__(self, masked: bool):
        self.masked = masked

    def init(self, rng, batch):
        del batch
        return {
            "params": {"prototypes": jnp.ones((6, 3)), "last_layer": {"kernel": jnp.ones((6, 2))}},
            "prototype_state": {"active": jnp.ones(6, bool)},
        }

    def loss(self, params, state, batch, rng, phase):
        keep = state["prototype_state"]["active"][:, None]
        total = jnp.sum(jnp.where(keep, params["prototypes"], 0.0) ** 2) + jnp.sum(
            jnp.where(keep, params["last_layer"]["kernel"], 0.0) ** 2
        )
        return total, ({"loss": total}, state)

    def mask_updates(self, updates, state):
        return ProtoVAE.mask_updates(self, updates, state) if self.masked else updates

    def predict(self, variables, images):
        raise NotImplementedError

    embed = predict

    def phases(self, config):
        return [Phase("train", 1, "adam", ((".*", adam(0.1)),))]

    def targets(self, variables):
        return {}


@pytest.mark.parametrize("masked", [True, False])
def test_the_engine_keeps_eliminated_prototypes_frozen(masked, batch):
    method = PrototypeToy(masked)
    variables = method.init(None, batch)
    (phase,) = method.phases(None)
    tx = build_optimizer(phase, variables["params"], steps_per_epoch=1)
    zero = jnp.zeros((), jnp.int32)
    state = TrainState(variables, {"adam": tx.init(variables["params"])}, zero, zero, zero)
    step = jax.jit(make_train_step(method, phase, tx, jax.random.key(0), 1))
    state, _, _ = step(state, batch)  # Adam's moments are now non-zero everywhere
    active = np.array([True, False, True, True, False, True])
    state = state.replace(variables={**state.variables, "prototype_state": {"active": active}})
    before = jax.tree.map(np.asarray, state.variables["params"])
    state, _, _ = step(state, batch)
    after = jax.tree.map(np.asarray, state.variables["params"])
    for name in ("prototypes", "last_layer"):
        old, new = (np.asarray(jax.tree.leaves(t[name])[0]) for t in (before, after))
        assert np.all(new[active] != old[active])
        # The gradient of the inactive rows is 0, yet Adam's momentum moves them unless
        # mask_updates zeroes their updates.
        frozen = np.all(new[~active] == old[~active])
        assert frozen == masked


@pytest.fixture(scope="module")
def digits_runs(tmp_path_factory, digits):
    summaries = {}
    for name in ("protovae_digits", "pantypes_digits"):
        config = load_config(name)
        set_value(config, "train.progress", False)
        workdir = tmp_path_factory.mktemp(name)
        train_run(config, workdir, make_data_mesh(jax.devices()[:1]), dataset=digits)
        summaries[name] = json.loads((workdir / "summary.json").read_text())
    return summaries


@pytest.mark.slow
def test_both_digits_configs_reach_095(digits_runs):
    for summary in digits_runs.values():
        assert summary["test_accuracy"] >= 0.95
        assert [k for k in summary if "volume" in k] == ["prototype_log_volume"]


@pytest.mark.slow
def test_pantypes_digits_spans_a_larger_volume(digits_runs):
    assert (
        digits_runs["pantypes_digits"]["prototype_log_volume"]
        > digits_runs["protovae_digits"]["prototype_log_volume"]
    )
