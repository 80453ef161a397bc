"""InfoDisent: the unmixing is a rotation, W stays non-negative, the cached head fit ends where
the uncached engine run does, the black box is trained first or read from a workdir and
reported beside, and the explanation hook writes its figures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.errors import UsageError
from protojax.methods import build_method, infodisent
from protojax.nn.infodisent import ChannelUnmixing
from protojax.prototypes.channels import orthogonal_unmixing
from protojax.runs import load_workdir
from protojax.runs import train as train_run
from protojax.train import make_data_mesh


def test_unmixing_is_a_rotation_applied_per_pixel():
    d = 6
    a = 3 * np.random.default_rng(d).normal(size=(d, d)).astype(np.float32)
    u = np.asarray(orthogonal_unmixing(jnp.asarray(a)), np.float64)
    np.testing.assert_allclose(u.T @ u, np.eye(d), atol=2e-5)
    np.testing.assert_allclose(np.linalg.det(u), 1.0, atol=1e-4)
    features = np.random.default_rng(0).normal(size=(2, 3, 4, d)).astype(np.float32)
    module = ChannelUnmixing()
    params = {"params": {"a": jnp.asarray(a)}}
    rotated = np.asarray(module.apply(params, jnp.asarray(features)))
    np.testing.assert_allclose(rotated, features @ u.T, rtol=1e-4, atol=1e-4)
    # A U given in the `unmixing` collection (explanations) is used as it is, whatever A.
    given = {**params, "unmixing": {"u": jnp.eye(d)}}
    np.testing.assert_allclose(np.asarray(module.apply(given, features)), features, atol=1e-6)
    # A starts at 0: U = I, the map unchanged.
    zero = module.init(jax.random.key(0), jnp.asarray(features))
    assert not np.asarray(zero["params"]["a"]).any()
    np.testing.assert_allclose(np.asarray(module.apply(zero, features)), features, atol=1e-6)


def small(**extra):
    config = load_config("infodisent_digits")
    for key, value in {
        "data.image_size": 12,
        "train.epochs": 2,
        "train.progress": False,
        "model.source_epochs": 1,
        "model.figure_images": 0,
        "train.eval_every_epochs": 0,
        **extra,
    }.items():
        set_value(config, key, value)
    return config


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A cached run that trains its black box first, and an uncached run on that black box."""
    digits = load_digits(image_size=12)
    mesh = make_data_mesh(jax.devices()[:1])
    cached_dir = tmp_path_factory.mktemp("cached")
    cached = train_run(small(), cached_dir, mesh, dataset=digits)
    source = str(cached_dir / "blackbox")
    uncached_config = small(**{"model.cache_features": "off", "model.source_workdir": source})
    uncached_dir = tmp_path_factory.mktemp("uncached")
    uncached = train_run(uncached_config, uncached_dir, mesh, dataset=digits)
    return digits, (cached_dir, cached), (uncached_dir, uncached)


@pytest.fixture(scope="module")
def loaded(runs):
    """`load_workdir` of the cached and the uncached run."""
    _, (cached_dir, _), (uncached_dir, _) = runs
    return load_workdir(cached_dir), load_workdir(uncached_dir)


def test_cached_and_uncached_heads_train_to_the_same_parameters(runs, loaded):
    _, (_, cached), (_, uncached) = runs
    assert cached["feature_cache"] and not uncached["feature_cache"]
    assert cached["head_steps"] == uncached["steps"] > 0
    a, b = (jax.device_get(variables["params"]) for _, variables, _ in loaded)
    jax.tree.map(lambda x, y: np.testing.assert_array_equal(x, y), a["backbone"], b["backbone"])
    assert np.abs(a["unmix"]["a"]).max() > 1e-4  # A has moved from 0
    np.testing.assert_allclose(a["unmix"]["a"], b["unmix"]["a"], atol=1e-5)
    np.testing.assert_allclose(a["head"]["kernel"], b["head"]["kernel"], atol=1e-5)
    assert abs(cached["test_accuracy"] - uncached["test_accuracy"]) <= 1 / 360


def test_head_weights_stay_non_negative_and_u_orthogonal(runs, loaded):
    _, (_, cached), _ = runs
    kernel = np.asarray(loaded[0][1]["params"]["head"]["kernel"])
    assert kernel.min() >= 0.0 and (kernel > 0).mean() > 0.1
    assert cached["head_weight_min"] >= 0.0
    assert cached["unmixing_orthogonality_error"] < 1e-5


def test_black_box_trained_first_and_reported_beside(runs):
    _, (cached_dir, cached), (_, uncached) = runs
    blackbox = json.loads((cached_dir / "blackbox" / "summary.json").read_text())
    assert cached["blackbox_test_accuracy"] == blackbox["test_accuracy"]
    assert uncached["blackbox_test_accuracy"] == blackbox["test_accuracy"]
    assert cached["source"].startswith("black box trained first")
    events = [json.loads(line) for line in (cached_dir / "metrics.jsonl").read_text().splitlines()]
    assert any(e.get("event") == "train_blackbox_first" for e in events)
    assert [e["epoch"] for e in events if e.get("event") == "head_epoch"] == [1, 2]


def test_own_explanation_writes_one_figure_per_image(runs, loaded, tmp_path):
    digits = runs[0]
    method, variables, config = loaded[0]
    set_value(config, "model.explain_patches", 2)
    paths = infodisent.own_explanation(
        method, variables, config, digits, split="test", indices=np.array([3, 5]), out=tmp_path
    )
    assert [p.name for p in paths] == ["image_000.png", "image_001.png"]
    assert all(p.stat().st_size > 1000 for p in paths)


def test_targets_agree_with_predict_and_embed(runs, loaded):
    digits = runs[0]
    method, variables, _ = loaded[0]
    images = jnp.asarray(digits.split("test").get_batch(np.arange(4))["image"])
    classes = jnp.array([0, 1, 2, 3])

    @jax.jit
    def scores(variables):
        targets = method.targets(variables)
        return (
            method.predict(variables, images),
            targets["class_logit"](images, classes),
            targets["class_probability"](images, classes),
            targets["embedding"](images),
            targets["channel_value"](images, classes),
        )

    logits, logit, probability, embedding, value = map(np.asarray, scores(variables))
    rows = np.arange(4)
    np.testing.assert_allclose(logit, logits[rows, classes], rtol=1e-5)
    probabilities = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    np.testing.assert_allclose(probability, probabilities[rows, classes], rtol=1e-5)
    kernel = np.asarray(variables["params"]["head"]["kernel"])
    np.testing.assert_allclose(embedding @ kernel, logits, rtol=1e-4, atol=1e-4)  # no bias
    np.testing.assert_allclose(value, embedding[rows, classes])


def test_caching_with_augmentation_is_a_usage_error():
    config = small(**{"model.cache_features": "on", "data.augment.hflip": True})
    with pytest.raises(UsageError, match="augment"):
        build_method(config, load_digits(image_size=12))
    config = small(**{"data.augment.hflip": True})
    assert not build_method(config, load_digits(image_size=12)).cached
