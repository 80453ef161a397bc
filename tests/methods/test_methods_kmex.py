"""KMEx: a run without a source trains its black box first, fits class centroids on the
training embeddings (checked against NumPy), reports the black box's own accuracy, and a run
on that black box's workdir reproduces it; ProtoPNet and ProtoVAE sources."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import protojax
from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.errors import UsageError
from protojax.explain.lrp import composite_by_name, lrp
from protojax.methods import build_method, default_config
from protojax.methods import kmex as kmex_lib
from protojax.runs import train as train_run
from protojax.train import make_data_mesh
from protojax.train import workdir as wd


@pytest.fixture(scope="module")
def digits():
    return load_digits(image_size=8)


def _config(**overrides):
    config = load_config("kmex_digits")
    settings = {
        "data.image_size": 8,
        "train.epochs": 1,
        "train.progress": False,
        "model.per_class": 2,
        "model.n_init": 1,
        # Stop only when no label changes: the centroids are then exact class means.
        "model.tol": 0.0,
        **overrides,
    }
    for key, value in settings.items():
        set_value(config, key, value)
    return config


def _embeddings(method, variables, split, batch_size=512):
    embed = jax.jit(method.embed)
    out = []
    for start in range(0, len(split), batch_size):
        raw = split.get_batch(np.arange(start, min(start + batch_size, len(split))))
        out.append(np.asarray(embed(variables, jnp.asarray(raw["image"]))))
    return np.concatenate(out), split.labels


@pytest.fixture(scope="module")
def fitted(tmp_path_factory, digits):
    root = tmp_path_factory.mktemp("kmex")
    mesh = make_data_mesh(jax.devices()[:1])
    summary = train_run(_config(), root / "run", mesh, dataset=digits)
    return root, summary


def test_kmex_trains_its_black_box_and_fits_centroids_on_training_embeddings(fitted, digits):
    root, summary = fitted
    run = root / "run"
    blackbox_summary = json.loads((run / "blackbox" / wd.SUMMARY).read_text())
    records = [json.loads(line) for line in (run / wd.METRICS).read_text().splitlines()]
    events = [r for r in records if r.get("event") == "train_blackbox_first"]
    assert events and events[0]["workdir"] == str(run / "blackbox")

    method, variables, config = protojax.load_workdir(run)
    state = {k: np.asarray(v) for k, v in variables["kmex"].items()}
    z, y = _embeddings(method, variables, digits.split("train"))
    centroids = state["centroids"]  # [K·M, D]
    d = ((z[:, None] - centroids[None]) ** 2).sum(-1)
    own = np.where(state["prototype_class"][None] == y[:, None], d, np.inf)
    assignment = np.argmin(own, axis=1)
    for j in range(len(centroids)):
        members = assignment == j
        np.testing.assert_allclose(centroids[j], z[members].mean(0), rtol=1e-4, atol=1e-4)
        assert state["importance"][j] == members.sum()
        nearest = state["nearest_index"][j]
        assert y[nearest] == state["prototype_class"][j]
        assert nearest == np.flatnonzero(y == j // 2)[np.argmin(d[y == j // 2, j])]
    assert summary["centroid_importance"] == state["importance"].reshape(10, 2).tolist()

    zt, yt = _embeddings(method, variables, digits.split("test"))
    dt = ((zt[:, None] - centroids[None]) ** 2).sum(-1)
    nearest_accuracy = np.mean(state["prototype_class"][np.argmin(dt, 1)] == yt)
    assert summary["test_accuracy"] == pytest.approx(nearest_accuracy, abs=1e-9)
    assert summary["test_accuracy_nearest"] == pytest.approx(nearest_accuracy, abs=1e-9)
    assert summary["blackbox_test_accuracy"] == pytest.approx(
        blackbox_summary["test_accuracy"], abs=1e-9
    )
    assert summary["source_method"] == "blackbox"
    assert 0 < summary["diversity_entropy"] < 1
    assert "source_diversity_entropy" not in summary
    assert (run / "figures" / "kmex_prototypes.png").is_file()

    out = root / "explained"
    out.mkdir()
    paths = kmex_lib.own_explanation(
        method, variables, config, digits, split="test", indices=np.arange(2), out=out
    )
    assert [p.relative_to(out).as_posix() for p in paths] == [
        "image_000/nearest_centroids.png",
        "image_001/nearest_centroids.png",
    ]
    assert all(p.stat().st_size > 0 for p in paths)
    targets = method.targets(variables)
    raw = digits.split("test").get_batch(np.arange(3))["image"]
    similarity = targets["prototype_similarity"](jnp.asarray(raw), jnp.array([0, 5, 19]))
    dist = np.sqrt(dt[:3, [0, 5, 19]][np.arange(3), np.arange(3)])
    np.testing.assert_allclose(similarity, np.log((dist + 1) / (dist + 1e-4)), rtol=1e-4)
    np.testing.assert_allclose(targets["embedding"](jnp.asarray(raw)), zt[:3], rtol=1e-5)


def test_explain_launcher_puts_prp_beside_the_nearest_centroids(python, fitted, digits):
    """`python -m experiments.explain --explainers=prp` on a KMEx workdir: PRP of each
    image's nearest centroid of its predicted class (not of its black box's classes), and the
    report's page of each image holds PRP beside KMEx's nearest centroids."""
    root, _ = fitted
    run = root / "run"
    args = ("-m", "experiments.explain", f"--workdir={run}", "--explainers=prp")
    result = python(*args, "--num_images=2")
    assert result.returncode == 0, result.stderr[-2000:]
    out = run / "explanations" / "test"
    method, variables, _ = protojax.load_workdir(run)
    state = {k: np.asarray(v) for k, v in variables["kmex"].items()}
    test = digits.split("test").get_batch(np.arange(2))
    z = np.asarray(method.embed(variables, jnp.asarray(test["image"])))
    d = ((z[:, None] - state["centroids"][None]) ** 2).sum(-1)
    for n in range(2):
        folder = out / f"image_{n:03d}"
        assert sorted(p.name for p in folder.glob("*.png")) == ["nearest_centroids.png", "prp.png"]
        facts = json.loads((folder / "image.json").read_text())
        predicted = state["prototype_class"][np.argmin(d[n])]
        assert facts["prediction"] == digits.class_names[predicted]
        own = np.flatnonzero(state["prototype_class"] == predicted)
        assert facts["prp_prototype"] == own[np.argmin(d[n, own])]
        page = (run / "report" / "pages" / f"explanations_test_image_{n}.html").read_text()
        for name in ("prp.png", "nearest_centroids.png"):
            assert f"explanations/test/image_{n:03d}/{name}" in page


@pytest.mark.slow
def test_evaluate_judges_the_centroids_and_their_prp_maps(fitted):
    """`experiments.evaluate` on a KMEx run: its prototypes are the centroids (not its
    source's), AD/AI runs on the PRP maps of each image's class centroids, and the diversity
    entropy is the one KMEx's summary reports."""
    from experiments import evaluate

    root, summary = fitted
    evaluate.evaluate_run(root / "run", explainers="saliency", num_images=2, batch_size=64)
    saved = json.loads((root / "run" / "evaluation" / "evaluation.json").read_text())
    assert saved["transparency"]["prototypes"] == 20
    assert sum(saved["transparency"]["usage_counts"]) == 360  # digits' test split
    ad_ai = saved["trustworthiness"]["ad_ai"]
    assert ad_ai["pairs"] == 2 * 2 and 0 <= ad_ai["prp"]["AD"] <= 1
    assert saved["diversity"]["entropy"] == pytest.approx(summary["diversity_entropy"], rel=1e-5)
    assert "prototype_removal" in saved["not_applicable"]


def test_kmex_on_a_source_workdir_reproduces_the_run_that_trained_it(fitted, digits):
    root, summary = fitted
    config = _config(**{"model.source_workdir": str(root / "run" / "blackbox")})
    mesh = make_data_mesh(jax.devices()[:1])
    again = train_run(config, root / "on_source", mesh, dataset=digits)
    assert not (root / "on_source" / "blackbox").exists()
    for key in ("test_accuracy", "blackbox_test_accuracy", "centroid_importance"):
        assert again[key] == summary[key]


def _source(path, config, dataset):
    wd.write_config(path, config)
    wd.write_dataset_info(path, dataset)
    return str(path)


def test_protopnet_source_needs_a_1x1_latent_or_avg_pool(tmp_path, digits):
    source = default_config("protopnet")
    set_value(source, "data.image_size", 8)
    where = _source(tmp_path / "ppnet", source, digits)
    with pytest.raises(UsageError, match="model.pool=avg"):
        build_method(_config(**{"model.source_workdir": where}), digits)
    method = build_method(_config(**{"model.source_workdir": where, "model.pool": "avg"}), digits)
    batch = {"image": jax.ShapeDtypeStruct((2, 8, 8, 1), jnp.float32)}
    variables = jax.eval_shape(method.init, jax.random.key(0), batch)
    embedding = jax.eval_shape(method.embed, variables, batch["image"])
    assert embedding.shape == (2, source.model.prototype_dim)
    # PRP through the ProtoPNet source starts at the add-on's pre-sigmoid latent: the
    # averaged sigmoid's relevance (1 per dimension, the official seed) splits over the grid
    # in proportion to the sigmoid values, then reaches the pixels whole (the prp rules hold
    # no bias, and the fresh add-on's are 0 anyway).
    images = jnp.asarray(digits.split("test").get_batch(np.arange(2))["image"])
    variables = method.init(jax.random.key(0), {"image": images})
    targets = method.targets(variables)
    logits = np.asarray(method._latent_logits(variables, images), np.float64)
    sig = 1 / (1 + np.exp(-logits))
    relevance = targets["prp"].args[1](jnp.asarray(logits, jnp.float32), jnp.asarray([0, 3]))
    expected = sig / sig.sum(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(relevance, expected, rtol=1e-5, atol=1e-7)
    composite = composite_by_name("prp", low=0.0, high=1.0)
    maps = lrp(targets["prp"], images, targets=jnp.asarray([0, 3]), composite=composite)
    np.testing.assert_allclose(np.asarray(maps).sum(axis=(1, 2, 3)), logits.shape[-1], rtol=1e-4)
    set_value(source, "data.normalization", "symmetric")
    where = _source(tmp_path / "symmetric", source, digits)
    with pytest.raises(UsageError, match="data.normalization=symmetric"):
        build_method(_config(**{"model.source_workdir": where}), digits)


def test_protovae_source_embeds_by_mu_and_reports_its_active_prototypes(tmp_path):
    source = load_config("protovae_digits")
    digits28 = load_digits(image_size=28)
    config = load_config("kmex_protovae_digits")
    set_value(config, "model.source_workdir", _source(tmp_path / "vae", source, digits28))
    method = build_method(config, digits28)
    batch = {"image": jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.float32)}
    variables = jax.eval_shape(method.init, jax.random.key(0), batch)
    # μ [B, d], not the similarities [B, P] nor the logits [B, K].
    assert jax.eval_shape(method.embed, variables, batch["image"]).shape == (2, 32)
    prototypes = np.arange(50 * 32, dtype=np.float32).reshape(50, 32)
    active = np.ones(50, bool)
    active[7] = False
    own, squared = method.source_prototypes(
        {"params": {"prototypes": prototypes}, "prototype_state": {"active": active}}
    )
    np.testing.assert_array_equal(own, np.delete(prototypes, 7, axis=0))
    assert not squared


def test_kmex_cifar_clusters_the_pooled_512d_resnet34_embedding():
    from protojax.data.base import Dataset

    cifar = Dataset("cifar10", 10, tuple(str(i) for i in range(10)), (32, 32, 3), {})
    method = build_method(load_config("kmex_cifar"), cifar)
    assert method.source_name == "blackbox" and method.source_config.model.backbone == "resnet34"
    assert method.source_config.optim.momentum == 0.5
    batch = {"image": jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.float32)}
    variables = jax.eval_shape(method.init, jax.random.key(0), batch)
    assert variables["kmex"]["centroids"].shape == (50, 512)
    assert jax.eval_shape(method.predict, variables, batch["image"]).shape == (2, 10)
