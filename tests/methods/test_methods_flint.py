"""FLINT: each loss term against the official `flint.py::train` written in NumPy, the epoch
gating against the official tables, the epoch-19 optimizer re-creation, the networks'
shapes and layers, and the official configs end to end under mock data."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.methods import build_method, flint
from protojax.nn.flint import FlintNet, adaptive_avg_pool, conv_transpose, flint_architecture
from protojax.train import build_train_step, initial_state, make_data_mesh


def _softmax(x):
    e = np.exp(x - x.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)


def _loss_cce(prediction, target):
    """flint.py's `loss_cce`: (log softmax(p) · −softmax(t)).sum(1).mean()."""
    return float((np.log(_softmax(prediction)) * -_softmax(target)).sum(1).mean())


def _arrays(seed=0, b=6):
    rng = np.random.default_rng(seed)
    return (
        rng.normal(size=(b, 10)).astype(np.float32),  # h(Φ(x))
        rng.normal(size=(b, 10)).astype(np.float32) * 2,  # f(x)
        rng.normal(size=(b, 25)).astype(np.float32),  # Φ(x) (LeakyReLU: may be negative)
        rng.uniform(size=(b, 8, 8, 1)).astype(np.float32),  # x
        rng.uniform(size=(b, 8, 8, 1)).astype(np.float32),  # d(Φ(x))
    )


def test_each_loss_term_matches_the_official_formula():
    expl, output, embed, data, rec_data = _arrays()
    valid = jnp.ones(6, bool)
    a = np.abs(embed)
    terms = {  # flint.py::train, criterion2 = MSELoss (L1Loss for CIFAR-10)
        "rec_mse": np.mean((rec_data - data) ** 2),
        "rec_l1": np.mean(np.abs(rec_data - data)),
        "expl": _loss_cce(expl, output),
        "ent": _loss_cce(a, a) - 1.0 * _loss_cce(a.mean(0)[None], a.mean(0)[None]),
        "spa": np.mean(np.abs(embed - np.zeros(embed.shape))),
    }
    ours = {
        "rec_mse": flint.input_fidelity(rec_data, data, valid, kind="mse"),
        "rec_l1": flint.input_fidelity(rec_data, data, valid, kind="l1"),
        "expl": flint.output_fidelity(expl, output, valid),
        "ent": flint.conditional_entropy(embed, valid),
        "spa": flint.sparsity(embed, valid),
    }
    for name, value in terms.items():
        np.testing.assert_allclose(float(ours[name]), value, rtol=2e-5, atol=1e-6, err_msg=name)
    # Padding rows are left out: the formula on the valid rows only.
    mask = np.array([True, False, True, True, False, True])
    np.testing.assert_allclose(
        float(flint.conditional_entropy(embed, jnp.asarray(mask))),
        _loss_cce(a[mask], a[mask]) - _loss_cce(a[mask].mean(0)[None], a[mask].mean(0)[None]),
        rtol=2e-5,
    )
    np.testing.assert_allclose(
        float(flint.output_fidelity(expl, output, jnp.asarray(mask))),
        _loss_cce(expl[mask], output[mask]),
        rtol=2e-5,
    )


def test_output_fidelity_does_not_train_the_predictor():
    expl, output, *_ = _arrays(1)
    valid = jnp.ones(6, bool)
    g_h, g_f = jax.grad(flint.output_fidelity, argnums=(0, 1))(expl, output, valid)
    assert np.abs(np.asarray(g_f)).max() == 0.0  # output.detach()
    # d/dh of the CE against softmax(f): (softmax(h) − softmax(f)) / B.
    np.testing.assert_allclose(g_h, (_softmax(expl) - _softmax(output)) / 6, atol=1e-6)


OFFICIAL = {  # flint.py main loop, as written there
    "mnist": lambda epoch: dict(
        pred=1.0,
        rec=0.8 * int(epoch > 0),
        expl=0.5 * int(epoch > 2),
        spa=0.1 * int(epoch > 2),
        ent=0.2 * int(epoch > 4),
    ),
    "quickdraw": lambda epoch: dict(
        pred=1.0,
        rec=5.0 * int(epoch > 0),
        expl=0.1 * int(epoch > 2),
        spa=0.02 * int(epoch > 1) + 0.28 * int(epoch > 2),
        ent=0.1 * int(epoch > 3),
    ),
    "cifar10": lambda epoch: dict(
        pred=1.0,
        rec=2.0 * int(epoch > 0),
        expl=0.6 * int(epoch > 2),
        spa=0.001 * int(epoch > 1) + 0.149 * int(epoch > 2),
        ent=0.2 * int(epoch > 3),
    ),
}


@pytest.mark.parametrize(
    "config_name, table",
    [
        ("flint_mnist", "mnist"),
        ("flint_fmnist", "mnist"),
        ("flint_quickdraw", "quickdraw"),
        ("flint_cifar", "cifar10"),
    ],
)
def test_the_epoch_gating_follows_the_official_table(config_name, table):
    config = load_config(config_name)
    ranges = flint.epoch_ranges(config.model.schedule, config.train.epochs, 19)
    assert ranges[0][0] == 1 and ranges[-1][1] == config.train.epochs
    assert all(b[0] == a[1] + 1 for a, b in zip(ranges, ranges[1:], strict=False))
    for first, last in ranges:
        for epoch in range(first, last + 1):  # one coefficient set per phase
            got = flint.coefficients(config.model.schedule, epoch)
            want = OFFICIAL[table](epoch)
            assert got == pytest.approx(want), (epoch, got, want)
            assert flint.coefficients(config.model.schedule, first) == pytest.approx(want)
    if table == "mnist":
        assert ranges == [(1, 2), (3, 4), (5, 12)]


def _method(config_name="flint_digits", image_size=8, **overrides):
    config = load_config(config_name)
    for key, value in {"data.image_size": image_size, **overrides}.items():
        set_value(config, key, value)
    dataset = load_digits(image_size)
    return build_method(config, dataset), config, dataset


def test_the_phases_reset_adam_at_epoch_19():
    config = load_config("flint_cifar")
    method = flint.FLINT(config, load_digits(32))
    phases = method.phases(config)
    assert [(p.name, p.epochs, p.optimizer) for p in phases] == [
        ("epochs1-1", 1, "adam"),
        ("epochs2-2", 1, "adam"),
        ("epochs3-3", 1, "adam"),
        ("epochs4-18", 15, "adam"),
        ("epochs19-25", 7, "adam_reset"),
    ]
    assert {p.trainable[0][1].lr for p in phases[:4]} == {1e-4}
    assert phases[4].trainable[0][1].lr == 4e-5
    assert method.weights["epochs19-25"] == pytest.approx(OFFICIAL["cifar10"](19))
    mnist = load_config("flint_mnist")  # 12 epochs: no re-creation
    assert {p.optimizer for p in flint.FLINT(mnist, load_digits(28)).phases(mnist)} == {"adam"}


def test_the_second_optimizer_starts_with_zero_moments():
    """After steps that fill the first Adam's moments, the first step of the reset phase moves
    every parameter by reset_lr·g/(|g| + ε), Adam's first update; the first Adam is kept."""
    method, config, dataset = _method(
        **{"train.epochs": 2, "optim.reset_epoch": 2, "optim.lr": 1e-3, "optim.reset_lr": 4e-5}
    )
    mesh = make_data_mesh(jax.devices()[:1])
    state, plan = initial_state(method, config, dataset, mesh, steps_per_epoch=1)
    assert [(p.name, p.optimizer) for p in plan.phases] == [
        ("epochs1-1", "adam"),
        ("epochs2-2", "adam_reset"),
    ]
    batch = dataset.split("train").get_batch(np.arange(16))
    batch = {**batch, "valid": np.ones(16, bool)}
    first = build_train_step(method, plan.phases[0], plan, mesh, config)
    for _ in range(4):
        state, _, _ = first(state, batch)
    kept = jax.tree.map(np.asarray, state.opt_states["adam"])
    before = jax.tree.map(np.asarray, state.variables["params"])
    state, metrics, _ = build_train_step(method, plan.phases[1], plan, mesh, config)(state, batch)
    moved = np.concatenate(
        [
            np.abs(a - b).ravel()
            for a, b in zip(
                jax.tree.leaves(state.variables["params"]), jax.tree.leaves(before), strict=True
            )
        ]
    )
    moved = moved[moved > 1e-9]
    assert moved.max() <= 4e-5 * 1.001
    assert np.mean(np.abs(moved - 4e-5) < 4e-7) > 0.9  # |g| ≫ ε almost everywhere
    jax.tree.map(np.testing.assert_array_equal, kept, state.opt_states["adam"])
    assert int(jax.tree.leaves(state.opt_states["adam_reset"])[0]) == 1  # its step count


def test_the_loss_weights_the_terms_by_the_phase():
    method, config, dataset = _method()
    batch = dataset.split("train").get_batch(np.arange(8))
    batch = {**batch, "valid": np.ones(8, bool)}
    variables = method.init(jax.random.key(0), batch)
    phase = method.phases(config)[1]  # epochs 3-4: rec 0.8, expl 0.5, spa 0.1
    loss, (metrics, _) = method.loss(variables["params"], {}, batch, jax.random.key(1), phase)
    want = (
        metrics["cross_entropy"]
        + 0.8 * metrics["input_fidelity"]
        + 0.5 * metrics["output_fidelity"]
        + 0.1 * metrics["sparsity"]
    )
    np.testing.assert_allclose(float(loss), float(want), rtol=1e-6)
    assert float(metrics["conditional_entropy"]) != 0.0  # computed, weighted 0 until epoch 5
    # predict is f; embed is f's penultimate layer [B, 128], the embedding KMEx clusters.
    images = batch["image"]
    assert method.predict(variables, images).shape == (8, 10)
    assert method.embed(variables, images).shape == (8, 128)
    assert method.attribute_values(variables, images).shape == (8, 25)
    targets = method.targets(variables)
    np.testing.assert_allclose(
        targets["attribute"](images, jnp.full(8, 3)),
        method.attribute_values(variables, images)[:, 3],
    )


@pytest.mark.parametrize(
    "arch, shape, classes, attributes, embedding",
    [
        ("mnist", (28, 28, 1), 10, 25, 128),
        ("quickdraw", (28, 28, 1), 10, 24, 512),
        ("cifar10", (32, 32, 3), 10, 36, 512),
    ],
)
def test_the_official_networks_have_the_official_shapes(
    arch, shape, classes, attributes, embedding
):
    net = FlintNet(arch, classes, attributes, shape)
    images = jax.ShapeDtypeStruct((2, *shape), jnp.float32)
    variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x), images)
    out = jax.eval_shape(lambda v, x: net.apply(v, x), variables, images)
    assert out.logits.shape == (2, classes) and out.embedding.shape == (2, embedding)
    assert out.attributes.shape == (2, attributes)
    assert out.reconstruction.shape == (2, *shape)
    parts = flint_architecture(
        arch, num_classes=classes, num_attributes=attributes, image_shape=shape
    )
    layers = jax.eval_shape(
        lambda v, x: parts.predictor.apply({"params": v["params"]["predictor"]}, x).layers,
        variables,
        images,
    )
    side = shape[0]
    if arch == "mnist":
        assert layers["features"].shape == (2, side // 2, side // 2, 32)
    else:  # layer3 and layer4's first block, which the official Φ reads
        assert layers["layer3"].shape == (2, -(-side // 4), -(-side // 4), 256)
        assert layers["layer4_0"].shape == (2, -(-side // 8), -(-side // 8), 512)


def test_adaptive_pool_and_transposed_conv_follow_torch_semantics():
    x = np.random.default_rng(6).normal(size=(2, 14, 7, 3)).astype(np.float32)
    got = np.asarray(adaptive_avg_pool(jnp.asarray(x), 3))
    for i in range(3):  # AdaptiveAvgPool2d: bins [⌊i·n/3⌋, ⌈(i+1)·n/3⌉)
        for j in range(3):
            rows = slice(i * 14 // 3, -(-(i + 1) * 14 // 3))
            cols = slice(j * 7 // 3, -(-(j + 1) * 7 // 3))
            np.testing.assert_allclose(
                got[:, i, j], x[:, rows, cols].mean((1, 2)), rtol=1e-5, atol=1e-6
            )
    layer = conv_transpose(4)
    x = x[:, :5, :5]
    variables = layer.init(jax.random.key(0), x)
    kernel = np.asarray(variables["params"]["kernel"])[::-1, ::-1]  # as torch's [k, k, in, out]
    want = np.zeros((2, 12, 12, 4), np.float32)  # ConvTranspose2d(3, stride 2, padding 1, op 1)
    for i in range(5):
        for j in range(5):
            for ki in range(3):
                for kj in range(3):
                    want[:, 2 * i + ki, 2 * j + kj] += x[:, i, j] @ kernel[ki, kj]
    want = want[:, 1:11, 1:11] + np.asarray(variables["params"]["bias"])
    np.testing.assert_allclose(layer.apply(variables, x), want, rtol=1e-4, atol=1e-5)


def _shrink(config, **extra):
    """One training step, a one-step visualisation, on a handful of mock examples."""
    for key, value in {
        "train.epochs": 1,
        "train.progress": False,
        "data.batch_size": 16,
        "data.eval_batch_size": 16,
        "model.visualise.samples": 16,
        "model.visualise.rounds": 1,
        "model.visualise.steps": 1,
        **extra,
    }.items():
        set_value(config, key, value)
    return config


def _check_run(summary, workdir):
    assert summary["steps"] == 1
    for key in ("test_accuracy", "interpreter_accuracy", "fidelity", "fidelity_top5"):
        assert 0.0 <= summary[key] <= 1.0, key
    assert summary["fidelity"] <= summary["fidelity_top5"]
    assert list(summary["conciseness"]) == ["1.5", "2.0", "2.5", "3.0", "4.0", "5.0"]
    counts = list(summary["conciseness"].values())
    assert counts == sorted(counts) and counts[0] >= 1.0  # more attributes as τ grows
    names = {p.split("/")[-1] for p in summary["figures"]}
    assert {"attribute_relevance.png", "attributes.png", "local_explanations.png"} <= names
    assert all((workdir / p).stat().st_size > 0 for p in summary["figures"])


# The BN-free ResNet-18 configs compile for about 35 s each: in the slow suite (-m slow).
@pytest.mark.parametrize(
    "name", ["flint_mnist", "flint_fmnist", pytest.param("flint_cifar", marks=pytest.mark.slow)]
)
def test_the_official_tfds_configs_run_under_mock_data(name, tmp_path):
    import tensorflow_datasets as tfds

    from protojax.runs import train as train_run

    config = _shrink(load_config(name))
    with (
        jax.threefry_partitionable(False),
        tfds.testing.mock_data(num_examples=20, policy=tfds.testing.MockPolicy.USE_CODE),
    ):
        summary = train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]))
    _check_run(summary, tmp_path)


@pytest.mark.slow
def test_the_official_quickdraw_config_runs_on_small_files(tmp_path):
    from protojax.data.quickdraw import CATEGORIES
    from protojax.runs import train as train_run

    rng = np.random.default_rng(7)
    for category in CATEGORIES:
        np.save(tmp_path / f"{category}_small.npy", rng.integers(0, 256, (6, 784), np.uint8))
    config = _shrink(
        load_config("flint_quickdraw"),
        **{
            "data.name": f"quickdraw:{tmp_path}",
            "data.quickdraw.train_per_class": 4,
            "data.quickdraw.test_per_class": 2,
            "data.val_fraction": 0.25,
        },
    )
    summary = train_run(config, tmp_path / "run", make_data_mesh(jax.devices()[:1]))
    _check_run(summary, tmp_path / "run")
