"""The black box: its score targets, mixed precision, and (slow) the digits accuracy target."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.methods import build_method
from protojax.runs import train as train_run
from protojax.train import make_data_mesh


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=8)


def test_class_logit_target_is_a_partial_that_does_not_recompile(digits):
    config = load_config("blackbox_digits")
    method = build_method(config, digits)
    images = jnp.asarray(digits.split("test").get_batch(np.arange(4))["image"])
    v1 = method.init(jax.random.key(0), {"image": images})
    v2 = method.init(jax.random.key(1), {"image": images})
    traces = []

    @jax.jit
    def score(fn, x, classes):
        traces.append(1)
        return fn(x, classes)

    classes = jnp.array([0, 1, 2, 3])
    for variables in (v1, v2):
        target = method.targets(variables)["class_logit"]
        assert isinstance(target, jax.tree_util.Partial)
        expected = np.asarray(method.predict(variables, images))[np.arange(4), [0, 1, 2, 3]]
        np.testing.assert_allclose(score(target, images, classes), expected, rtol=1e-5)
    assert len(traces) == 1
    head = method.targets(v1)["head"]
    features = method.targets(v1)["features"](images)
    np.testing.assert_allclose(
        head(features, classes),
        np.asarray(method.predict(v1, images))[np.arange(4), [0, 1, 2, 3]],
        rtol=1e-5,
    )


def test_bfloat16_compute_keeps_float32_parameters(tmp_path, digits):
    config = load_config("blackbox_digits")
    for key, value in [
        ("train.precision", "bfloat16"),
        ("data.image_size", 8),
        ("train.stop_after_steps", 3),
        ("train.progress", False),
    ]:
        set_value(config, key, value)
    train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]), dataset=digits)
    from protojax.train.loop import restore_variables

    method = build_method(config, digits)
    variables = restore_variables(method, config, digits, tmp_path)
    leaves = jax.tree.leaves(variables["params"])
    assert all(leaf.dtype == jnp.float32 for leaf in leaves)
    assert all(np.isfinite(leaf).all() for leaf in leaves)
    logits = method.predict(variables, jnp.zeros((2, 8, 8, 1)))
    assert logits.dtype == jnp.float32


@pytest.mark.slow
def test_blackbox_digits_reaches_097(tmp_path, digits):
    config = load_config("blackbox_digits")
    set_value(config, "train.progress", False)
    summary = train_run(config, tmp_path, dataset=load_digits(image_size=28))
    assert summary["test_accuracy"] >= 0.97
