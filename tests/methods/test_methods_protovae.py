"""ProtoVAE: the KL against float64 loops, the official architectures (shapes, parameter
counts, ConvTranspose semantics, clamp, initialisations), the loss wiring, the targets, the
configs, and (slow) the digits accuracy target."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.data.specs import describe
from protojax.errors import UsageError
from protojax.methods import build_method, protovae
from protojax.methods.protovae import kl_to_class_prototypes
from protojax.prototypes import diversity
from protojax.train import Phase


def kl_reference(mu, logvar, prototypes, sims, labels, owner, active):
    """Float64 loops: KL(N(μ, σ²) ‖ N(p, 1)) = log(1/σ) + (σ² + (μ − p)²)/2 − 1/2 per
    dimension, averaged over dimensions, similarity-weighted within the true class."""
    mu, logvar, prototypes, sims = (
        np.asarray(a, np.float64) for a in (mu, logvar, prototypes, sims)
    )
    out = []
    for b in range(len(mu)):
        num = den = 0.0
        for j in range(len(prototypes)):
            if owner[j] != labels[b] or not active[j]:
                continue
            sigma = np.exp(0.5 * logvar[b])
            per_dim = np.log(1 / sigma) + (sigma**2 + (mu[b] - prototypes[j]) ** 2) / 2 - 0.5
            num += sims[b, j] * per_dim.mean()
            den += sims[b, j]
        out.append(num / den)
    return np.array(out)


def test_kl_to_class_prototypes_matches_float64_loops():
    rng = np.random.default_rng(0)
    b, d, k, m = 7, 5, 3, 3
    mu = rng.normal(size=(b, d)).astype(np.float32)
    logvar = rng.normal(scale=0.7, size=(b, d)).astype(np.float32)
    prototypes = rng.normal(size=(k * m, d)).astype(np.float32)
    sims = rng.uniform(0.1, 3.0, size=(b, k * m)).astype(np.float32)
    labels = rng.integers(0, k, b).astype(np.int32)
    owner = (np.arange(k * m) // m).astype(np.int32)
    kl = jax.jit(kl_to_class_prototypes)
    every = np.ones(k * m, bool)
    active = every.copy()
    active[[0, 4, 8]] = False  # one prototype of each class
    for flags in (every, active):
        got = kl(mu, logvar, prototypes, sims, labels, owner, active=flags)
        np.testing.assert_allclose(
            got, kl_reference(mu, logvar, prototypes, sims, labels, owner, flags), rtol=1e-5
        )
    np.testing.assert_allclose(
        kl_to_class_prototypes(mu, logvar, prototypes, sims, labels, owner),
        kl_reference(mu, logvar, prototypes, sims, labels, owner, every),
        rtol=1e-5,
    )
    with pytest.raises(ValueError, match="similarities"):
        kl_to_class_prototypes(mu, logvar, prototypes, sims[:, :4], labels, owner)


# --- the method on digits at 28 px (tiny latent) --------------------------------------


def tiny_config(name="protovae", **weights):
    config = load_config(f"{name}_digits")
    for key, value in [
        ("model.latent_dim", 6),
        ("model.prototypes_per_class", 3),
        ("data.batch_size", 8),
        ("train.progress", False),
    ]:
        set_value(config, key, value)
    for key, value in weights.items():
        set_value(config, f"model.loss_weights.{key}", value)
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
        "valid": jnp.asarray([True] * 7 + [False]),
    }


@pytest.fixture(scope="module")
def model(digits, batch):
    """(method, variables, forward): one jitted inference pass, shared by the tests."""
    method = build_method(tiny_config(), digits)
    # Non-partitionable threefry compiles the random initialisers about 5× faster on CPU.
    with jax.threefry_partitionable(False):
        variables = jax.jit(method.init)(jax.random.key(0), batch)

    @jax.jit
    def forward(variables, images, noise_rng=None):
        collections = {k: v for k, v in variables.items() if k != "prototype_state"}
        active = variables["prototype_state"]["active"]
        return method.net.apply(collections, images, active, train=False, noise_rng=noise_rng)

    return method, variables, forward


def test_init_follows_the_official_code(model):
    method, variables, _ = model
    state = variables["prototype_state"]
    np.testing.assert_array_equal(state["prototype_class"], np.arange(30) // 3)
    assert state["active"].all()
    params = jax.tree.map(np.asarray, variables["params"])
    expected = np.where((np.arange(30) // 3)[:, None] == np.arange(10)[None, :], 1.0, -0.5)
    assert set(params) == {"encoder", "decoder", "prototypes", "last_layer"}
    np.testing.assert_array_equal(params["last_layer"]["kernel"], expected)  # no bias
    assert abs(params["prototypes"].std() - 1.0) < 0.3  # N(0, 1)
    for part in ("encoder", "decoder"):
        for name, layer in params[part].items():
            if name.startswith("BatchNorm"):
                assert (layer["scale"] == 1).all() and not layer["bias"].any()
            elif name.startswith(("Conv", "Dense")):
                assert not layer["bias"].any()
                # U(−0.08, 0.08), except the decoder's Conv2d: Kaiming-normal fan_out.
                if part == "encoder" or not name.startswith("Conv_"):
                    assert 0.07 < np.abs(layer["kernel"]).max() <= 0.08, (part, name)
    for name in ("ConvTranspose2d_0", "ConvTranspose2d_1"):
        assert np.abs(params["decoder"][name]["kernel"]).max() <= 0.08
    # N(0, 2 / fan_out), fan_out = 9·C_out: the first decoder conv has C_out = 32.
    kernel = params["decoder"]["Conv_0"]["kernel"]
    assert kernel.shape == (3, 3, 64, 32)
    assert abs(kernel.std() / math.sqrt(2 / (9 * 32)) - 1) < 0.05


def test_logvar_is_clamped_and_the_decoder_ends_in_tanh(batch, model):
    _, variables, forward = model
    params = jax.tree.map(np.asarray, variables["params"])
    assert params["encoder"]["Dense_1"]["kernel"].shape == (12, 12)  # 2d → 2d, μ then log σ²
    bias = np.zeros(12, np.float32)
    bias[6:] = [100.0, -100.0, 3.0, -3.0, 0.0, 0.0]
    params["encoder"]["Dense_1"]["bias"] = bias
    params["decoder"]["Dense_0"]["bias"] = np.full_like(params["decoder"]["Dense_0"]["bias"], 50)
    out = forward({**variables, "params": params}, batch["image"])
    bound = -math.log(1e-8)
    assert abs(bound - 18.42) < 0.01
    np.testing.assert_allclose(out.logvar[:, :2], [[bound, -bound]] * 8, rtol=1e-6)
    assert np.all(np.abs(out.logvar[:, 2:]) < bound)
    assert np.abs(np.asarray(out.reconstruction)).max() <= 1.0


TRAIN = Phase("train", 1, "adam", ())
# A phase that keeps the BatchNorm statistics also normalises with the running averages, so
# its loss can be checked against the jitted inference pass.
FROZEN_BN = Phase("frozen", 1, "adam", (), update_batch_stats=False)


def loss_fn(method, phase):
    return jax.jit(lambda p, s, b, r: method.loss(p, s, b, r, phase))


def split(variables):
    return variables["params"], {k: v for k, v in variables.items() if k != "params"}


def test_total_loss_is_the_weighted_sum_of_the_logged_terms(digits, batch, model):
    _, variables, forward = model
    weights = dict(cross_entropy=0.5, reconstruction=2.0, kl=3.0, orthonormality=0.25)
    method = build_method(tiny_config(**weights), digits)
    params, state = split(variables)
    loss = loss_fn(method, FROZEN_BN)
    total, (metrics, new_state) = loss(params, state, batch, jax.random.key(0))
    assert "inverse_volume" not in metrics
    np.testing.assert_allclose(
        total, sum(w * metrics[name] for name, w in weights.items()), rtol=1e-6
    )
    np.testing.assert_allclose(metrics["loss"], total, rtol=1e-6)
    # z = μ: the step's rng changes nothing.
    assert float(loss(params, state, batch, jax.random.key(1))[0]) == float(total)
    # Each term against an independent computation from the inference pass.
    out = forward(variables, batch["image"])
    valid = np.asarray(batch["valid"])
    logits = np.asarray(out.logits, np.float64)[valid]
    labels = np.asarray(batch["label"])[valid]
    log_softmax = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(
        metrics["cross_entropy"], -log_softmax[np.arange(len(labels)), labels].mean(), rtol=1e-5
    )
    diff = np.asarray(out.reconstruction, np.float64) - np.asarray(batch["image"], np.float64)
    np.testing.assert_allclose(metrics["reconstruction"], (diff**2)[valid].mean(), rtol=1e-5)
    grouped = params["prototypes"].reshape(10, 3, 6)
    np.testing.assert_allclose(
        metrics["orthonormality"], diversity.orthonormality_loss(grouped), rtol=1e-5
    )
    assert protovae.orthonormality_loss is diversity.orthonormality_loss
    assert set(new_state) == {"batch_stats", "prototype_state"}


def test_orthonormality_form_option(digits, batch, model):
    """model.orthonormality=dimensions: the d×d form of the paper-time official code."""
    _, variables, _ = model
    config = tiny_config(orthonormality=1.0)
    set_value(config, "model.orthonormality", "dimensions")
    method = build_method(config, digits)
    params, state = split(variables)
    _, (metrics, _) = loss_fn(method, FROZEN_BN)(params, state, batch, jax.random.key(0))
    expected = []
    for block in np.asarray(params["prototypes"], np.float64).reshape(10, 3, 6):
        centred = block - block.mean(0)
        expected.append(np.linalg.norm(centred.T @ centred - np.eye(6)))
    np.testing.assert_allclose(metrics["orthonormality"], np.mean(expected), rtol=1e-5)
    set_value(config, "model.orthonormality", "rows")
    with pytest.raises(UsageError, match="model.orthonormality"):
        build_method(config, digits)


def test_similarities_are_log_ratios_of_euclidean_distances(batch, model):
    _, variables, forward = model
    out = forward(variables, batch["image"])
    np.testing.assert_array_equal(out.z, out.mu)  # no sampling by default
    z = np.asarray(out.z, np.float64)
    prototypes = np.asarray(variables["params"]["prototypes"], np.float64)
    dist = np.linalg.norm(z[:, None] - prototypes[None], axis=-1)
    np.testing.assert_allclose(out.similarities, np.log((dist + 1) / (dist + 1e-4)), rtol=1e-4)
    w = np.asarray(variables["params"]["last_layer"]["kernel"], np.float64)
    np.testing.assert_allclose(out.logits, np.asarray(out.similarities) @ w, rtol=1e-5)


def test_sampling_flag_gives_the_reparameterisation(digits, batch, model):
    _, variables, forward = model
    key = jax.random.key(5)
    out, sampled = forward(variables, batch["image"]), forward(variables, batch["image"], key)
    expected = out.mu + np.exp(0.5 * out.logvar) * jax.random.normal(key, out.mu.shape)
    np.testing.assert_allclose(sampled.z, expected, rtol=1e-5, atol=1e-6)
    params, state = split(variables)
    for flag in (False, True):
        config = tiny_config()
        set_value(config, "model.sample_latent", flag)
        method = build_method(config, digits)
        # The loss draws random numbers from the step's rng only when sampling.
        loss = functools.partial(method.loss, params, state, batch, phase=TRAIN)
        jaxpr = jax.make_jaxpr(loss)(key)
        assert ("random_bits" in str(jaxpr)) == flag


def test_targets_are_partials_with_independent_values(batch, model):
    method, variables, forward = model
    targets = method.targets(variables)
    assert all(isinstance(t, jax.tree_util.Partial) for t in targets.values())
    score = jax.jit(lambda fn, images, picks: fn(images, picks))
    images, picks = batch["image"][:4], jnp.array([0, 3, 7, 29])
    out = forward(variables, images)
    np.testing.assert_allclose(
        score(targets["class_logit"], images, jnp.array([1, 2, 3, 4])),
        np.asarray(out.logits)[np.arange(4), [1, 2, 3, 4]],
        rtol=1e-5,
    )
    mu = np.asarray(out.mu, np.float64)
    chosen = np.asarray(variables["params"]["prototypes"], np.float64)[np.asarray(picks)]
    dist = np.linalg.norm(mu - chosen, axis=-1)
    np.testing.assert_allclose(
        score(targets["prototype_similarity"], images, picks),
        np.log((dist + 1) / (dist + 1e-4)),
        rtol=1e-4,
    )
    np.testing.assert_allclose(
        score(targets["latent_similarity"], images, picks),
        np.sum(1 / ((mu - chosen) ** 2 + 1e-4), axis=-1),
        rtol=1e-4,
    )


def test_mask_updates_freezes_inactive_prototypes(model):
    method, variables, _ = model
    updates = jax.tree.map(jnp.ones_like, variables["params"])
    active = np.ones(30, bool)
    active[[3, 11]] = False
    state = {"prototype_state": {**variables["prototype_state"], "active": jnp.asarray(active)}}
    masked = method.mask_updates(updates, state)
    assert not np.asarray(masked["prototypes"])[~active].any()
    assert not np.asarray(masked["last_layer"]["kernel"])[~active].any()
    assert np.asarray(masked["prototypes"])[active].all()
    assert np.asarray(masked["encoder"]["Dense_0"]["kernel"]).all()


OFFICIAL = {
    # config: (arch, latent, prototypes per class, batch, epochs, data)
    "protovae_mnist": ("mnist", 256, 5, 128, 10, "tfds:mnist"),
    "protovae_fmnist": ("mnist", 256, 10, 128, 10, "tfds:fashion_mnist"),
    "protovae_cifar": ("cifar10", 512, 10, 128, 36, "tfds:cifar10"),
    "protovae_svhn": ("svhn", 512, 5, 64, 36, "tfds:svhn_cropped"),
    "protovae_quickdraw": ("quickdraw", 512, 10, 128, 10, "quickdraw:quickdraw"),
    "pantypes_mnist": ("mnist", 256, 5, 128, 100, "tfds:mnist"),
    "pantypes_fmnist": ("mnist", 256, 5, 128, 100, "tfds:fashion_mnist"),
    "pantypes_cifar": ("cifar10", 512, 5, 128, 36, "tfds:cifar10"),
    "pantypes_svhn": ("svhn", 512, 5, 64, 36, "tfds:svhn_cropped"),
    "pantypes_quickdraw": ("quickdraw", 512, 10, 128, 100, "quickdraw:quickdraw"),
}


@pytest.mark.parametrize("name", sorted(OFFICIAL))
def test_configs_carry_the_official_settings(name):
    arch, latent, m, batch_size, epochs, data = OFFICIAL[name]
    config = load_config(name)
    assert (config.model.arch, config.model.latent_dim, config.model.prototypes_per_class) == (
        arch,
        latent,
        m,
    )
    assert (config.data.batch_size, config.train.epochs, config.data.name) == (
        batch_size,
        epochs,
        data,
    )
    assert config.data.normalization == "symmetric" and config.optim.lr == 1e-3
    weights = config.model.loss_weights
    expected = (1.0, None) if name.startswith("protovae") else (0.0, 1.0)
    assert (weights.orthonormality, weights.get("inverse_volume")) == expected
    assert weights.cross_entropy == weights.reconstruction == weights.kl == 1.0
    augment = config.data.augment
    cifar = name.endswith("cifar")
    assert (augment.hflip, augment.crop_padding) == ((True, 2) if cifar else (False, 0))
    assert augment.color_jitter == 0.0 and augment.rotation_degrees == 0.0
    # The official loaders train on the whole training split and keep the last batch.
    assert (config.data.val_fraction, config.data.drop_last) == (0.0, False)
    method = build_method(config, describe(config.data))
    assert method.net.arch == arch


def test_bad_model_settings_are_usage_errors(digits):
    config = tiny_config()
    set_value(config, "model.arch", "cifar10")
    with pytest.raises(ValueError, match="32×32.*data.image_size=32"):
        build_method(config, digits)
    config = tiny_config("pantypes")
    set_value(config, "model.prototypes_per_class", 7)  # more than latent_dim = 6
    with pytest.raises(ValueError, match="volume is 0"):
        build_method(config, digits)
    config = tiny_config()  # ProtoVAE's orthonormality has no such limit
    set_value(config, "model.prototypes_per_class", 7)
    build_method(config, digits)
