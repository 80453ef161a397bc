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
from protojax.methods.protovae import (
    DECODERS,
    ENCODERS,
    IMAGE_SIZES,
    ConvTranspose2d,
    Decoder,
    Encoder,
    ProtoVAENet,
    kl_to_class_prototypes,
)
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


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_encoder_and_decoder_shapes(arch):
    size, d = IMAGE_SIZES[arch], 12
    channels = 3 if arch in ("svhn", "cifar10") else 1
    images = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    z = jax.ShapeDtypeStruct((2, d), jnp.float32)
    encoder, decoder = Encoder(ENCODERS[arch], d), Decoder(DECODERS[arch], channels)

    def encode(x):
        variables = encoder.init(jax.random.key(0), x, train=False)
        return encoder.apply(variables, x, train=False)

    def decode(z):
        variables = decoder.init(jax.random.key(0), z, train=False)
        return decoder.apply(variables, z, train=False)

    mu, logvar = jax.eval_shape(encode, images)
    assert mu.shape == logvar.shape == (2, d)
    assert jax.eval_shape(decode, z).shape == (2, size, size, channels)


def conv(i, o, k):
    return i * o * k * k + o


def fc(i, o):
    return i * o + o


def bn(c):
    return 2 * c


def official_counts(arch, d, channels):
    """Parameter counts of the official PyTorch encoder and decoder, layer by layer."""
    two = 2 * d
    head = fc
    if arch == "mnist":
        enc = conv(channels, 32, 3) + bn(32) + conv(32, 64, 3) + bn(64) + head(64 * 49, two)
        dec = fc(d, 64 * 49) + bn(64 * 49)
        dec += conv(64, 32, 3) + bn(32) + conv(32, 32, 4) + bn(32)
        dec += conv(32, 32, 3) + bn(32) + conv(32, 32, 4) + bn(32) + conv(32, channels, 3)
    elif arch == "quickdraw":
        enc = conv(channels, 32, 3) + bn(32) + conv(32, 64, 3) + bn(64)
        enc += conv(64, 128, 3) + bn(128) + head(128 * 9, two)
        dec = fc(d, 128 * 9) + bn(128 * 9)
        dec += conv(128, 64, 3) + bn(64) + conv(64, 64, 4) + bn(64)
        dec += conv(64, 32, 3) + bn(32) + conv(32, 32, 4) + bn(32)
        dec += conv(32, 32, 3) + bn(32) + conv(32, 32, 4) + bn(32) + conv(32, channels, 3)
    else:
        widths = (32, 64, 128, 256)
        enc, previous = 0, channels
        for width in widths:
            enc += conv(previous, width, 3) + bn(width)
            if arch == "svhn":
                enc += conv(width, width, 4) + bn(width)
            previous = width
        enc += head(256 * 4, two)
        dec, previous = fc(d, 256 * 4) + bn(256 * 4), 256
        for width in (128, 64, 32, 32):
            dec += conv(previous, width, 3) + bn(width) + conv(width, width, 4) + bn(width)
            previous = width
        dec += conv(32, channels, 3)
    return enc + fc(two, two), dec


def count(tree):
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


@pytest.mark.parametrize("arch", sorted(ENCODERS))
def test_parameter_counts_match_the_official_architecture(arch):
    size, d, k, m = IMAGE_SIZES[arch], 16, 10, 3
    channels = 3 if arch in ("svhn", "cifar10") else 1
    net = ProtoVAENet(arch, d, k, m, channels)
    images = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    variables = jax.eval_shape(lambda x: net.init(jax.random.key(0), x, train=False), images)
    params = variables["params"]
    encoder, decoder = official_counts(arch, d, channels)
    assert count(params["encoder"]) == encoder
    assert count(params["decoder"]) == decoder
    assert params["prototypes"].shape == (k * m, d)
    assert params["last_layer"].shape == (k * m, k)  # no bias
    assert set(params) == {"encoder", "decoder", "prototypes", "last_layer"}
    assert variables["prototype_state"]["active"].shape == (k * m,)


def scatter_reference(x, w, b, stride, padding):
    """PyTorch's ConvTranspose2d by its definition: every input pixel scatters x·w."""
    n, h, wd, _ = x.shape
    k = w.shape[0]
    full = np.zeros((n, (h - 1) * stride + k, (wd - 1) * stride + k, w.shape[-1]))
    for i in range(h):
        for j in range(wd):
            for ki in range(k):
                for kj in range(k):
                    full[:, i * stride + ki, j * stride + kj] += x[:, i, j] @ w[ki, kj]
    out_h, out_w = (h - 1) * stride - 2 * padding + k, (wd - 1) * stride - 2 * padding + k
    return full[:, padding : padding + out_h, padding : padding + out_w] + b


def test_conv_transpose_matches_the_pytorch_definition():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(2, 3, 5, 4)).astype(np.float32)
    layer = ConvTranspose2d(6)
    variables = jax.jit(layer.init)(jax.random.key(0), x)
    k = np.asarray(variables["params"]["kernel"])
    assert np.abs(k).max() <= 0.08 and np.abs(k).max() > 0.07  # U(−0.08, 0.08)
    variables = jax.tree.map(lambda v: v + 0.1, variables)  # a non-zero bias too
    got = np.asarray(jax.jit(layer.apply)(variables, x))
    w = np.asarray(variables["params"]["kernel"], np.float64)
    b = np.asarray(variables["params"]["bias"], np.float64)
    assert got.shape == (2, 6, 10, 6)  # (H − 1)·2 − 2 + 4 = 2H
    np.testing.assert_allclose(got, scatter_reference(x, w, b, 2, 1), atol=1e-5)
    # lax's dilated-input form with the flipped kernel gives the same.
    lax = jax.lax.conv_general_dilated(
        x,
        w[::-1, ::-1].astype(np.float32),
        (1, 1),
        ((2, 2), (2, 2)),
        lhs_dilation=(2, 2),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
    )
    np.testing.assert_allclose(got, np.asarray(lax) + b, atol=1e-5)


# --- the MNIST pair against a float64 NumPy forward with PyTorch's semantics -----------
# NCHW tensors, torch weight layouts, torch's (C, H, W) flatten and view. The Flax kernels
# are carried over by the fixed permutations the module docstring names.


def np_conv(x, w, b, padding):
    """Conv2d (cross-correlation, stride 1): x `[B, I, H, W]`, w `[O, I, k, k]`."""
    k = w.shape[-1]
    xp = np.pad(x, ((0, 0), (0, 0), (padding, padding), (padding, padding)))
    h, wd = xp.shape[2] - k + 1, xp.shape[3] - k + 1
    out = np.zeros((x.shape[0], w.shape[0], h, wd))
    for ki in range(k):
        for kj in range(k):
            out += np.einsum("bihw,oi->bohw", xp[:, :, ki : ki + h, kj : kj + wd], w[:, :, ki, kj])
    return out + b[None, :, None, None]


def np_conv_transpose(x, w, b, stride=2, padding=1):
    """ConvTranspose2d by its definition: input pixel (i, j) scatters x·w[:, :, ki, kj] to
    (i·stride − padding + ki, j·stride − padding + kj); w `[I, O, k, k]`."""
    n, _, h, wd = x.shape
    k = w.shape[-1]
    full = np.zeros((n, w.shape[1], (h - 1) * stride + k, (wd - 1) * stride + k))
    for i in range(h):
        for j in range(wd):
            for ki in range(k):
                for kj in range(k):
                    full[:, :, i * stride + ki, j * stride + kj] += x[:, :, i, j] @ w[:, :, ki, kj]
    out_h, out_w = (h - 1) * stride - 2 * padding + k, (wd - 1) * stride - 2 * padding + k
    return full[:, :, padding : padding + out_h, padding : padding + out_w] + b[None, :, None, None]


def np_batch_norm(x, bn, stats, train):
    """BatchNorm over the batch (and spatial) axes of channel axis 1, eps 1e-5. Train mode
    normalises with the biased batch variance and returns the running averages updated with
    momentum 0.1 (biased, as the module docstring says); eval mode uses the running ones."""
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    if train:
        mean, var = x.mean(axes), x.var(axes)
        updated = {"mean": 0.9 * stats["mean"] + 0.1 * mean, "var": 0.9 * stats["var"] + 0.1 * var}
    else:
        mean, var, updated = stats["mean"], stats["var"], stats
    y = (x - mean.reshape(shape)) / np.sqrt(var.reshape(shape) + 1e-5)
    return y * bn["scale"].reshape(shape) + bn["bias"].reshape(shape), updated


def relu(x):
    return np.maximum(x, 0.0)


def torch_conv(layer):
    """Flax Conv `[k, k, I, O]` → torch `[O, I, k, k]`."""
    return layer["kernel"].transpose(3, 2, 0, 1), layer["bias"]


def torch_conv_transpose(layer):
    """Our ConvTranspose2d kernel `[k, k, I, O]` → torch's `[I, O, k, k]`."""
    return layer["kernel"].transpose(2, 3, 0, 1), layer["bias"]


def hwc_to_chw(h, w, c):
    """The permutation of flattened features from Flax's (H, W, C) order to torch's
    (C, H, W): feature `hwc_to_chw(...)[t]` in (H, W, C) order is feature t in (C, H, W)."""
    return np.arange(h * w * c).reshape(h, w, c).transpose(2, 0, 1).reshape(-1)


def np_mnist_encoder(x, params, stats, train):
    """x `[B, 1, 28, 28]` → (μ, log σ²), updated running stats."""
    updated = {}
    for i in range(2):
        x = relu(np_conv(x, *torch_conv(params[f"Conv_{i}"]), padding=1))
        name = f"BatchNorm_{i}"
        x, updated[name] = np_batch_norm(x, params[name], stats[name], train)
        b, c, h, w = x.shape
        x = x.reshape(b, c, h // 2, 2, w // 2, 2).mean(axis=(3, 5))  # AvgPool2d(2)
    b, c, h, w = x.shape
    x = x.reshape(b, -1)  # torch's flatten: (C, H, W)
    first = params["Dense_0"]
    x = relu(x @ first["kernel"][hwc_to_chw(h, w, c)] + first["bias"])
    x = x @ params["Dense_1"]["kernel"] + params["Dense_1"]["bias"]
    d = x.shape[1] // 2
    return x[:, :d], np.clip(x[:, d:], np.log(1e-8), -np.log(1e-8)), updated


def np_mnist_decoder(z, params, stats, train):
    """z `[B, d]` → images `[B, 1, 28, 28]`, updated running stats."""
    order = hwc_to_chw(7, 7, 64)  # (C, H, W) feature t is Flax's feature order[t]
    first, bn0 = params["Dense_0"], params["BatchNorm_0"]
    x = relu(z @ first["kernel"][:, order] + first["bias"][order])
    x, moved = np_batch_norm(
        x,
        {k: v[order] for k, v in bn0.items()},
        {k: v[order] for k, v in stats["BatchNorm_0"].items()},
        train,
    )
    updated = {"BatchNorm_0": {k: v[np.argsort(order)] for k, v in moved.items()}}
    x = x.reshape(len(z), 64, 7, 7)  # torch's view
    for stage in range(2):
        bn_conv, bn_up = f"BatchNorm_{2 * stage + 1}", f"BatchNorm_{2 * stage + 2}"
        x = relu(np_conv(x, *torch_conv(params[f"Conv_{stage}"]), padding=1))
        x, updated[bn_conv] = np_batch_norm(x, params[bn_conv], stats[bn_conv], train)
        x = relu(np_conv_transpose(x, *torch_conv_transpose(params[f"ConvTranspose2d_{stage}"])))
        x, updated[bn_up] = np_batch_norm(x, params[bn_up], stats[bn_up], train)
    return np.tanh(np_conv(x, *torch_conv(params["Conv_2"]), padding=1)), updated


def randomised(variables, rng):
    """Every parameter and running statistic redrawn, so that neither BatchNorm nor a
    misplaced ReLU is an identity: kernels N(0, 1/fan_in) (activations stay O(1), where
    float32 agrees with float64 to ~1e-6), biases N(0, 0.2²), BN scales U(0.5, 1.5),
    running variances U(0.2, 2). Rounded to float32, the values both forwards use."""
    params = {}
    for name, layer in variables["params"].items():
        params[name] = {
            key: rng.normal(scale=0.2, size=v.shape)
            if key == "bias"
            else rng.uniform(0.5, 1.5, v.shape)
            if key == "scale"
            else rng.normal(scale=1 / np.sqrt(np.prod(v.shape[:-1])), size=v.shape)
            for key, v in layer.items()
        }
    stats = {
        name: {
            "mean": rng.normal(scale=0.3, size=s["mean"].shape),
            "var": rng.uniform(0.2, 2.0, s["var"].shape),
        }
        for name, s in variables["batch_stats"].items()
    }
    return jax.tree.map(lambda v: np.asarray(v, np.float32).astype(np.float64), (params, stats))


def as_float32(tree):
    return jax.tree.map(lambda v: np.asarray(v, np.float32), tree)


def compare_stats(got, expected):
    assert set(got) == set(expected)
    for name in expected:
        for key in ("mean", "var"):
            np.testing.assert_allclose(
                got[name][key], expected[name][key], rtol=1e-5, atol=1e-6, err_msg=(name, key)
            )


@pytest.mark.parametrize("train", [False, True], ids=["eval", "train"])
def test_mnist_pair_matches_a_numpy_forward_with_pytorch_semantics(train):
    """Conv → ReLU → BN (batch statistics in train mode, running ones in eval mode),
    AvgPool2, the flatten, the Dense layers, the clamp; and the decoder's BN1d, view,
    ConvTranspose2d(4, s2, p1) by its scatter definition, the final tanh."""
    rng = np.random.default_rng(3)
    d = 8
    images = rng.uniform(-1, 1, size=(2, 28, 28, 1)).astype(np.float32)
    encoder, decoder = Encoder(ENCODERS["mnist"], d), Decoder(DECODERS["mnist"], 1)
    shapes = jax.eval_shape(lambda x: encoder.init(jax.random.key(0), x, train=False), images)
    enc_params, enc_stats = randomised(shapes, rng)
    assert set(enc_params) == {
        "Conv_0",
        "BatchNorm_0",
        "Conv_1",
        "BatchNorm_1",
        "Dense_0",
        "Dense_1",
    }
    # Push some log σ² past the clamp.
    enc_params["Dense_1"]["bias"][d : d + 2] = [40.0, -40.0]
    variables = as_float32({"params": enc_params, "batch_stats": enc_stats})
    (mu, logvar), moved = jax.jit(
        lambda v, x: encoder.apply(v, x, train=train, mutable=["batch_stats"])
    )(variables, images)
    expected_mu, expected_logvar, expected_stats = np_mnist_encoder(
        images.transpose(0, 3, 1, 2).astype(np.float64), enc_params, enc_stats, train
    )
    np.testing.assert_allclose(mu, expected_mu, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(logvar, expected_logvar, rtol=1e-5, atol=1e-5)
    assert np.abs(expected_logvar).max() == pytest.approx(-np.log(1e-8))
    compare_stats(moved["batch_stats"], expected_stats)

    z = rng.normal(size=(2, d)).astype(np.float32)
    shapes = jax.eval_shape(lambda z: decoder.init(jax.random.key(0), z, train=False), z)
    dec_params, dec_stats = randomised(shapes, rng)
    variables = as_float32({"params": dec_params, "batch_stats": dec_stats})
    rebuilt, moved = jax.jit(
        lambda v, z: decoder.apply(v, z, train=train, mutable=["batch_stats"])
    )(variables, z)
    expected_images, expected_stats = np_mnist_decoder(
        z.astype(np.float64), dec_params, dec_stats, train
    )
    assert rebuilt.shape == (2, 28, 28, 1)
    assert 0.1 < np.abs(expected_images).mean() < 0.99  # tanh neither tiny nor saturated
    # ~5e-6 apart; with Flax's default one-pass variance E[x²] − E[x]² the train-mode
    # decoder was 2.5e-3 off: after a ReLU the mean is large next to the spread.
    np.testing.assert_allclose(rebuilt, expected_images.transpose(0, 2, 3, 1), atol=3e-5)
    compare_stats(moved["batch_stats"], expected_stats)


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
        return method.net.apply(variables, images, train=False, noise_rng=noise_rng)

    return method, variables, forward


def test_init_follows_the_official_code(model):
    method, variables, _ = model
    state = variables["prototype_state"]
    np.testing.assert_array_equal(state["prototype_class"], np.arange(30) // 3)
    assert state["active"].all()
    params = jax.tree.map(np.asarray, variables["params"])
    expected = np.where((np.arange(30) // 3)[:, None] == np.arange(10)[None, :], 1.0, -0.5)
    np.testing.assert_array_equal(params["last_layer"], expected)
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
    w = np.asarray(variables["params"]["last_layer"], np.float64)
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
    assert not np.asarray(masked["last_layer"])[~active].any()
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
    expected = (1.0, 0.0) if name.startswith("protovae") else (0.0, 1.0)
    assert (weights.orthonormality, weights.inverse_volume) == expected
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
    config = tiny_config()
    set_value(config, "model.prototypes_per_class", 7)  # more than latent_dim = 6
    with pytest.raises(ValueError, match="volume is 0"):
        build_method(config, digits)
