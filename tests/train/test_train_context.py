"""The run context's ordered passes on a two-device mesh: `collect` returns every example's
rows once, in order, padding dropped; `reduce` folds in order with a replicated carry;
`evaluate` counts like NumPy."""

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.train import make_data_mesh
from protojax.train.context import RunContext
from protojax.train.workdir import MetricWriter


@pytest.fixture(scope="module")
def context(tmp_path_factory):
    config = load_config("blackbox_digits")
    set_value(config, "data.eval_batch_size", 64)  # the test split's last batch is padded
    set_value(config, "data.normalization", "symmetric")  # mean pixels of both signs
    dataset = load_digits(image_size=8)
    # A linear "model" on the mean pixel, so predictions vary and are checkable in NumPy.
    weights = jnp.linspace(-1.0, 1.0, dataset.num_classes)
    method = types.SimpleNamespace(
        predict=lambda variables, images: images.mean(axis=(1, 2, 3))[:, None] * variables
    )
    workdir = tmp_path_factory.mktemp("context")
    mesh = make_data_mesh(jax.devices()[:2])
    ctx = RunContext(config, dataset, mesh, workdir, MetricWriter(workdir), method)
    return ctx, dataset, weights


def test_collect_returns_each_example_once_in_order(context):
    ctx, dataset, _ = context
    rows = ctx.collect(
        jax.jit(lambda b: {"index": b["index"], "sum": b["image"].sum((1, 2, 3))}), "test"
    )
    split = dataset.split("test")
    np.testing.assert_array_equal(rows["index"], np.arange(len(split)))
    assert len(split) % 64  # the pass ends with padding rows, which are dropped
    chosen = np.array([5, 3, 11])
    picked = ctx.collect(jax.jit(lambda b: b["index"]), "test", batch_size=2, indices=chosen)
    np.testing.assert_array_equal(picked, chosen)


def test_reduce_folds_in_order_with_a_replicated_carry(context):
    ctx, dataset, _ = context
    shardings = []

    @jax.jit
    def step(carry, batch):
        count, last = carry
        index = jnp.where(batch["valid"], batch["index"], -1)
        return count + jnp.sum(batch["valid"]), jnp.maximum(last, jnp.max(index))

    def recording(carry, batch):
        shardings.append(carry[0].sharding)
        return step(carry, batch)

    count, last = ctx.reduce(recording, (jnp.int32(0), jnp.int32(-1)), "test")
    n = len(dataset.split("test"))
    assert (int(count), int(last)) == (n, n - 1)
    assert all(s.is_fully_replicated and s.mesh.devices.size == 2 for s in shardings)


def test_evaluate_is_the_accuracy_over_valid_rows(context):
    ctx, dataset, weights = context
    split = dataset.split("test")
    raw = split.get_batch(np.arange(len(split)))
    images = raw["image"] * 2 - 1  # the symmetric normalisation
    logits = images.mean(axis=(1, 2, 3))[:, None] * np.asarray(weights)
    expected = np.mean(np.argmax(logits, axis=1) == raw["label"])
    assert 0.05 < expected < 0.5
    assert ctx.evaluate(weights, "test") == pytest.approx(expected, abs=1e-12)
