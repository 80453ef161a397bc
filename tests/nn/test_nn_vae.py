"""ProtoVAE's encoders and decoders (`protojax.nn.vae`): shapes, the official parameter
counts, ConvTranspose2d by its scatter definition, and the mnist pair against a NumPy forward
with PyTorch semantics."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.nn.vae import DECODERS, ENCODERS, IMAGE_SIZES, ConvTranspose2d, Decoder, Encoder


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
    size, d = IMAGE_SIZES[arch], 16
    channels = 3 if arch in ("svhn", "cifar10") else 1
    images = jax.ShapeDtypeStruct((2, size, size, channels), jnp.float32)
    encoder, decoder = Encoder(ENCODERS[arch], d), Decoder(DECODERS[arch], channels)
    key = jax.random.key(0)
    enc = jax.eval_shape(lambda x: encoder.init(key, x, train=False), images)["params"]
    z = jax.ShapeDtypeStruct((2, d), jnp.float32)
    dec = jax.eval_shape(lambda z: decoder.init(key, z, train=False), z)["params"]
    assert (count(enc), count(dec)) == official_counts(arch, d, channels)


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


@pytest.mark.parametrize(
    "map_hw, kernel, padding",
    [((2, 2), 3, ((1, 1), (1, 1))), ((1, 1), 3, ((1, 1), (1, 1))), ((1, 2), 4, ((2, 1), (2, 1)))],
)
def test_small_map_conv_as_patches_matches_the_convolution_and_its_gradients(
    map_hw, kernel, padding
):
    """Maps smaller than the kernel go through the patch product (XLA:CPU's kernel gradient
    of such convolutions is slow); values and both gradients equal lax's convolution."""
    from protojax.nn.layers import conv_general_dilated

    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(3, *map_hw, 5)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(kernel, kernel, 5, 7)), jnp.float32)

    def loss(x, k, conv):
        y = conv(x, k, (1, 1), padding, dimension_numbers=("NHWC", "HWIO", "NHWC"))
        return jnp.sum(jnp.sin(y)), y

    (_, want), want_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(
        x, k, jax.lax.conv_general_dilated
    )
    (_, got), got_grads = jax.value_and_grad(loss, (0, 1), has_aux=True)(x, k, conv_general_dilated)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    for g, w in zip(got_grads, want_grads):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
