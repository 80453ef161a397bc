"""ProtoPNet through the engine on digits (tiny epochs): the initialisation, the last layer
frozen until push, push copying latent patches bitwise, pruning, the score targets and the
explain launcher. The full-length run is the slow test at the end."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from protojax.config import load_config, set_value
from protojax.data import pipeline
from protojax.data.digits import load_digits
from protojax.methods import build_method
from protojax.runs import train as train_run
from protojax.train import make_data_mesh, optim, run
from protojax.train.context import RunContext
from protojax.train.loop import TrainState, make_train_step
from protojax.train.workdir import MetricWriter

M, D = 2, 8


def tiny_config():
    config = load_config("protopnet_digits")
    for key, value in {
        "data.image_size": 8,  # small_cnn: a 2×2 latent grid
        "data.batch_size": 256,  # 5 steps per epoch
        "data.eval_batch_size": 128,
        "model.prototypes_per_class": M,
        "model.prototype_dim": D,
        "model.warm_epochs": 1,
        "model.push_start": 2,
        "model.push_every": 2,
        "model.last_layer_epochs": 1,
        "model.push_batch_size": 100,  # 13 push batches, the last one padded
        "train.epochs": 3,  # warm 1, joint 2, push, last 1
        "train.eval_every_epochs": 0,
        "train.progress": False,
    }.items():
        set_value(config, key, value)
    return config


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    config = tiny_config()
    dataset = load_digits(image_size=8)
    method = build_method(config, dataset)
    captured = {}
    push, summarize = method.push, method.summarize

    def recording_push(variables, ctx):
        captured["before_push"] = jax.device_get(variables)
        captured["after_push"] = jax.device_get(push(variables, ctx))
        return captured["after_push"]

    def recording_summarize(variables, ctx):
        captured["final"] = jax.device_get(variables)
        return summarize(variables, ctx)

    # The engine hands the fresh initial variables to load_pretrained, outside jit.
    method.load_pretrained = lambda v: captured.setdefault("initial", jax.device_get(v))
    method.push, method.summarize = recording_push, recording_summarize
    workdir = tmp_path_factory.mktemp("protopnet_digits")
    mesh = make_data_mesh(jax.devices()[:2])  # the push pass is sharded over two devices
    summary = run(method, config, workdir, mesh, dataset=dataset)
    return {
        "config": config,
        "dataset": dataset,
        "method": method,
        "summary": summary,
        "workdir": workdir,
        "mesh": mesh,
        **captured,
    }


@pytest.fixture(scope="module")
def train_images(trained):
    split = trained["dataset"].split("train")
    return split.get_batch(np.arange(len(split)))


@jax.jit
def call(target, *args):
    """Applies a score target passed as an argument, so that its variables are traced (as the
    explainers pass them) rather than compiled in as constants."""
    return target(*args)


def latents(method, variables, images):
    return np.asarray(call(method.targets(variables)["latent"], jnp.asarray(images)))


def test_initialisation(trained):
    params = trained["initial"]["params"]
    kernel = params["last_layer"]["kernel"]  # [P, K]
    own = (np.arange(10 * M)[:, None] // M) == np.arange(10)[None, :]
    np.testing.assert_array_equal(kernel, np.where(own, 1.0, -0.5))
    assert params["prototypes"].shape == (10 * M, D)
    assert params["prototypes"].min() >= 0 and params["prototypes"].max() < 1
    for conv in params["add_on"].values():  # Kaiming normal, fan-out, ReLU gain; zero bias
        np.testing.assert_array_equal(conv["bias"], 0)
        assert abs(np.std(conv["kernel"]) / np.sqrt(2 / D) - 1) < 0.2
    state = trained["initial"]["prototype_state"]
    np.testing.assert_array_equal(state["prototype_class"], np.arange(10 * M) // M)
    assert state["active"].all() and (state["source_index"] == -1).all()


def test_last_layer_is_frozen_until_push(trained):
    initial, before = trained["initial"]["params"], trained["before_push"]["params"]
    final = trained["final"]["params"]
    np.testing.assert_array_equal(before["last_layer"]["kernel"], initial["last_layer"]["kernel"])
    # Warm and joint did train the rest, and the last-layer epochs the last layer.
    assert not np.array_equal(before["prototypes"], initial["prototypes"])
    assert not np.array_equal(
        before["backbone"]["Conv_0"]["kernel"], initial["backbone"]["Conv_0"]["kernel"]
    )
    assert not np.array_equal(final["last_layer"]["kernel"], before["last_layer"]["kernel"])
    pushed = trained["after_push"]["params"]["prototypes"]
    np.testing.assert_array_equal(final["prototypes"], pushed)


def test_push_copies_the_nearest_latent_patch_bitwise(trained, train_images):
    method, after, mesh = trained["method"], trained["after_push"], trained["mesh"]
    prototypes = after["params"]["prototypes"]
    state = after["prototype_state"]
    labels = train_images["label"]
    # Recompute each source image's latent map with the `latent` target in the batch push
    # saw it in (the same rows on the same devices: XLA's convolutions round differently
    # at other batch sizes; the image alone agrees to float32 rounding).
    size = method.pass_batch_size(mesh.devices.size)
    batches = list(pipeline.ordered_batches(trained["dataset"].split("train"), batch_size=size))
    latent = method.targets(after)["latent"]
    for j in range(10 * M):
        n, (h, w) = state["source_index"][j], state["source_location"][j]
        assert labels[n] == state["prototype_class"][j]
        z = np.asarray(call(latent, pipeline.to_global(batches[n // size], mesh)["image"]))
        np.testing.assert_array_equal(prototypes[j], z[n % size, h, w], err_msg=f"prototype {j}")
        alone = latents(method, after, train_images["image"][n : n + 1])
        np.testing.assert_allclose(prototypes[j], alone[0, h, w], rtol=1e-5, atol=1e-6)
    # The chosen patch is the nearest of its class to the prototype before push (float64).
    z = latents(method, after, train_images["image"]).astype(np.float64)  # [N, h, w, D]
    old = trained["before_push"]["params"]["prototypes"].astype(np.float64)
    for j in range(10 * M):
        own = z[labels == state["prototype_class"][j]]
        best = ((own - old[j]) ** 2).sum(-1).min()
        np.testing.assert_allclose(state["push_distance"][j], best, rtol=1e-4, atol=1e-5)


def test_summary_and_prototype_images(trained):
    summary = trained["summary"]
    for key in ("test_accuracy", "test_accuracy_before_push", "test_accuracy_after_push"):
        assert 0.0 <= summary[key] <= 1.0
    assert [p["push"] for p in summary["push_history"]] == [1]
    on_disk = json.loads((trained["workdir"] / "summary.json").read_text())
    assert on_disk["test_accuracy_after_push"] == summary["test_accuracy_after_push"]
    directory = trained["workdir"] / "figures" / "prototypes" / "push_01"
    index = json.loads((directory / "index.json").read_text())
    state = trained["after_push"]["prototype_state"]
    assert [e["prototype"] for e in index["prototypes"]] == list(range(10 * M))
    for entry in index["prototypes"]:
        j = entry["prototype"]
        assert entry["source_index"] == state["source_index"][j]
        assert entry["location"] == list(state["source_location"][j])
        for box in (entry["activation_box"], entry["receptive_field_box"]):
            y0, x0, y1, x1 = box
            assert 0 <= y0 < y1 <= 8 and 0 <= x0 < x1 <= 8
        for name in entry["files"].values():
            with Image.open(directory / name) as image:
                assert image.mode == "RGB" and min(image.size) >= 1
    # small_cnn's receptive field (16 px) covers the whole 8-px image from every location.
    rf = trained["method"].receptive_fields(trained["after_push"])
    np.testing.assert_array_equal(rf[0, 0], [0, 0, 8, 8])


def test_targets_agree_with_the_forward_pass(trained, train_images):
    method, variables = trained["method"], trained["final"]
    images = jnp.asarray(train_images["image"][:4])
    targets = method.targets(variables)
    result = method.activations(variables, images)
    rows, classes = np.arange(4), jnp.arange(4)
    logits = np.asarray(result.logits)
    np.testing.assert_allclose(
        logits, jax.jit(method.predict)(variables, images), rtol=1e-5, atol=1e-5
    )
    np.testing.assert_allclose(
        call(targets["class_logit"], images, classes), logits[rows, rows], rtol=1e-5
    )
    j = jnp.array([0, 3, 7, 19])
    np.testing.assert_allclose(
        call(targets["prototype_similarity"], images, j),
        np.asarray(result.similarities)[rows, j],
        rtol=1e-5,
    )
    at = jnp.array([[0, 0, 1], [3, 1, 1], [7, 1, 0], [19, 0, 0]])
    maps = np.asarray(result.similarity_maps)
    np.testing.assert_allclose(
        call(targets["prototype_similarity_at"], images, at),
        maps[rows, at[:, 1], at[:, 2], at[:, 0]],
        rtol=1e-5,
    )
    np.testing.assert_array_equal(maps.max(axis=(1, 2)), np.asarray(result.similarities))
    features = call(targets["features"], images)
    np.testing.assert_allclose(
        call(targets["head"], features, classes), logits[rows, rows], rtol=1e-5
    )


def test_pruning_flips_active_and_freezes_the_rows(trained, train_images, tmp_path):
    method, config, dataset = trained["method"], trained["config"], trained["dataset"]
    variables = jax.device_get(trained["final"])
    params = {**variables["params"]}
    # Prototype 0 (class 0) becomes a copy of prototype 2 (class 1): its nearest images are
    # class-1 images, so it must be pruned.
    params["prototypes"] = params["prototypes"].copy()
    params["prototypes"][0] = params["prototypes"][2]
    variables = {**variables, "params": params}
    mesh = make_data_mesh(jax.devices()[:1])
    # Without a test split, pruning skips its before/after test evaluations.
    train_only = dataclasses.replace(dataset, splits={"train": dataset.split("train")})
    ctx = RunContext(config, train_only, mesh, tmp_path, MetricWriter(tmp_path), method)
    pruned = method.prune(variables, ctx)
    active = np.asarray(pruned["prototype_state"]["active"])

    # The rule, from the model's own min distances and a stable sort.
    _, min_distances = jax.jit(method.net.apply)(
        {k: v for k, v in variables.items() if k != "prototype_state"},
        jnp.asarray(train_images["image"]),
        jnp.ones(10 * M, bool),
    )
    min_distances = np.asarray(min_distances)
    labels, classes = train_images["label"], np.arange(10 * M) // M
    expected = np.ones(10 * M, bool)
    for j in range(10 * M):
        nearest = sorted(range(len(labels)), key=lambda n: (min_distances[n, j], n))[:6]
        expected[j] = np.sum(labels[nearest] == classes[j]) >= 3
    np.testing.assert_array_equal(active, expected)
    assert not active[0]
    assert ctx.records["pruned_prototypes"] == [int(j) for j in np.flatnonzero(~expected)]

    # A pruned prototype no longer touches the logits...
    images = jnp.asarray(train_images["image"][:8])
    moved = {**pruned, "params": {**pruned["params"]}}
    kernel = np.array(pruned["params"]["last_layer"]["kernel"])
    kernel[0] = 5.0
    moved["params"]["last_layer"] = {"kernel": kernel}
    np.testing.assert_array_equal(method.predict(moved, images), method.predict(pruned, images))
    # ...and last-layer training leaves its row (and vector) bitwise unchanged.
    phase = next(p for p in method.phases(config) if p.name == "last")
    tx = optim.build_optimizer(phase, pruned["params"], 1)
    step = jax.jit(make_train_step(method, phase, tx, jax.random.key(0), 1))

    state = TrainState(
        variables=pruned,
        opt_states={phase.optimizer: tx.init(pruned["params"])},
        step=jnp.int32(0),
        phase_index=jnp.int32(0),
        epoch_in_phase=jnp.int32(0),
    )
    batch = {
        "image": jnp.asarray(train_images["image"][:64]),
        "label": jnp.asarray(train_images["label"][:64]),
        "index": jnp.arange(64, dtype=jnp.int32),
        "valid": jnp.ones(64, bool),
    }
    for _ in range(3):
        state, _, _ = step(state, batch)
    before, after = pruned["params"], jax.device_get(state.variables["params"])
    off = ~active
    np.testing.assert_array_equal(
        after["last_layer"]["kernel"][off], before["last_layer"]["kernel"][off]
    )
    np.testing.assert_array_equal(after["prototypes"][off], before["prototypes"][off])
    assert not np.array_equal(
        after["last_layer"]["kernel"][active], before["last_layer"]["kernel"][active]
    )


def test_explain_launcher_reads_the_workdir(python, trained):
    """`python -m experiments.explain` end to end: load_workdir, load_dataset, the post-hoc
    maps (saliency, PRP), "this looks like that", the class galleries, posthoc.json and the
    report; a second, smaller launch leaves none of the first one's files behind."""
    workdir = trained["workdir"]
    args = ("-m", "experiments.explain", f"--workdir={workdir}", "--explainers=saliency,prp")
    result = python(*args, "--num_images=2")
    assert result.returncode == 0, result.stderr[-2000:]
    out = workdir / "explanations" / "test"
    per_image = ["saliency.png", "prp.png", "this_looks_like_that.png"]
    expected = [
        "grid.png",
        *(f"image_{n:03d}/{name}" for n in range(2) for name in per_image),
        *(f"gallery/class_{k:03d}.png" for k in range(10)),
    ]
    assert result.stdout.strip().splitlines()[-1] == (
        f"Wrote the grid, 4 explainer figures and 12 of the method's own under {out}; report: "
        f"{workdir / 'report' / 'index.html'}"
    )
    written = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    assert written == sorted(expected)
    for name in expected:
        with Image.open(out / name) as image:
            pixels = np.asarray(image.convert("RGB"), np.float64)
        assert pixels.shape[0] >= 200 and pixels.shape[1] >= 300, name
        # Drawn, not blank: many colours and dark (text, image) beside light pixels.
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50, name
        assert pixels.min() < 64 and pixels.max() > 192, name
    posthoc = json.loads((out / "posthoc.json").read_text())
    assert posthoc["explainers"] == ["saliency", "prp"] and posthoc["images"] == [0, 1]
    assert sorted(posthoc["figures"] + posthoc["own_explanation"]) == sorted(expected)
    records = json.loads((out / "this_looks_like_that.json").read_text())["images"]
    assert [r["index"] for r in records] == [0, 1]
    test = trained["dataset"].split("test").get_batch(np.arange(2))
    logits = np.asarray(trained["method"].predict(trained["final"], jnp.asarray(test["image"])))
    kernel = trained["final"]["params"]["last_layer"]["kernel"]
    for n, (record, row, label) in enumerate(zip(records, logits, test["label"])):
        assert record["label"] == int(label) and record["predicted"] == int(np.argmax(row))
        np.testing.assert_allclose(record["logit"], row.max(), rtol=1e-5)
        assert len(record["prototypes"]) == 3  # top_k
        for shown in record["prototypes"]:
            assert shown["weight"] == pytest.approx(kernel[shown["prototype"], record["predicted"]])
            assert shown["contribution"] == pytest.approx(shown["similarity"] * shown["weight"])
        # PRP explains the predicted class's most similar prototype.
        facts = json.loads((out / f"image_{n:03d}" / "image.json").read_text())
        assert facts["prediction"] == trained["dataset"].class_names[record["predicted"]]
        assert facts["prp_prototype"] // M == record["predicted"]
    report = (workdir / "report" / "index.html").read_text()
    assert "explanations/test/grid.png" in report

    again = python(*args, "--num_images=1", "--explainers=saliency")
    assert again.returncode == 0, again.stderr[-2000:]
    left = sorted(p.relative_to(out).as_posix() for p in out.rglob("*.png"))
    galleries = [f"gallery/class_{k:03d}.png" for k in range(10)]
    assert left == sorted(["grid.png", "image_000/saliency.png",
                           "image_000/this_looks_like_that.png", *galleries])  # fmt: skip


@pytest.mark.slow
def test_protopnet_digits_reaches_095_after_push_and_last_layer(tmp_path):
    config = load_config("protopnet_digits")
    set_value(config, "train.progress", False)
    summary = train_run(config, tmp_path)
    assert summary["test_accuracy"] >= 0.95
    assert summary["test_accuracy_after_push"] is not None
