"""LRP and PRP against NumPy references written from the rules' formulas (float64).

A layer of the reference is y = a @ M + b for a flat input a `[n]` and a matrix M `[n, m]`;
convolutions and pooling become M by applying a naive convolution to each basis vector.
"""

from functools import partial

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.explain import (
    Composite,
    Rule,
    composite_by_name,
    input_bounds,
    kmex_relevance,
    lrp,
    protopnet_relevance,
    protovae_relevance,
    prp,
)
from protojax.explain.lrp import lrp_scores
from protojax.nn.resnet import BasicBlock
from protojax.nn.small import SmallCNN


def conv_nhwc(x, kernel, pad):
    """Naive stride-1 convolution, x `[H, W, C]`, kernel `[kh, kw, C, O]`, zero padding `pad`."""
    kh, kw, _, out = kernel.shape
    xp = np.pad(x, ((pad, pad), (pad, pad), (0, 0)))
    h, w = xp.shape[0] - kh + 1, xp.shape[1] - kw + 1
    y = np.zeros((h, w, out))
    for i in range(h):
        for j in range(w):
            y[i, j] = np.einsum("abc,abco->o", xp[i : i + kh, j : j + kw], kernel)
    return y


def avg_pool2(x):
    h, w, c = x.shape
    return x.reshape(h // 2, 2, w // 2, 2, c).mean(axis=(1, 3))


def as_matrix(linear_map, in_shape):
    """M `[n, m]` with linear_map(a) = a @ M for a flat."""
    n = int(np.prod(in_shape))
    rows = [linear_map(np.eye(n)[i].reshape(in_shape)).ravel() for i in range(n)]
    return np.stack(rows)


def stab(z, eps):
    return z + eps * np.where(z >= 0, 1.0, -1.0)


def safe_div(r, z):
    return np.where(z == 0, 0.0, r / np.where(z == 0, 1.0, z))


def epsilon_rule(a, m, b, r, eps):
    z = a @ m + b
    return a * (m @ (r / stab(z, eps)))


def alpha_beta_rule(a, m, b, r, alpha, beta, eps, ignore_bias=False):
    mp, mn = np.maximum(m, 0), np.minimum(m, 0)
    ap, an = np.maximum(a, 0), np.minimum(a, 0)
    bp, bn = (0.0, 0.0) if ignore_bias else (np.maximum(b, 0), np.minimum(b, 0))
    zp = ap @ mp + an @ mn + bp
    zn = ap @ mn + an @ mp + bn
    sp, sn = r / stab(zp, eps), r / stab(zn, eps)
    pos = ap * (mp @ sp) + an * (mn @ sp)
    neg = ap * (mn @ sn) + an * (mp @ sn)
    return alpha * pos - beta * neg


def zbox_rule(a, m, r, low, high, eps):
    mp, mn = np.maximum(m, 0), np.minimum(m, 0)
    lo, hi = np.full_like(a, low), np.full_like(a, high)
    z = a @ m - lo @ mp - hi @ mn
    s = r / stab(z, eps)
    return a * (m @ s) - lo * (mp @ s) - hi * (mn @ s)


def flat_rule(ones, r, eps):
    """`ones` is the layer's matrix with every weight set to 1."""
    return ones @ (r / stab(ones.sum(axis=0), eps))


def dense_matrix(kernel):
    return np.asarray(kernel, np.float64)


def conv_matrix(kernel, in_shape, pad=1):
    kernel = np.asarray(kernel, np.float64)
    return as_matrix(lambda x: conv_nhwc(x, kernel, pad), in_shape)


def pool_matrix(in_shape):
    return as_matrix(avg_pool2, in_shape)


def max_pool_relevance(x, r):
    """Winner-take-all over 2×2 windows: x `[H, W, C]`, r `[H/2, W/2, C]`."""
    out = np.zeros_like(x)
    h, w, c = x.shape
    for i in range(h // 2):
        for j in range(w // 2):
            for k in range(c):
                window = x[2 * i : 2 * i + 2, 2 * j : 2 * j + 2, k]
                a, b = np.unravel_index(np.argmax(window), (2, 2))
                out[2 * i + a, 2 * j + b, k] = r[i, j, k]
    return out


def max_pool2(x):
    h, w, c = x.shape
    return x.reshape(h // 2, 2, w // 2, 2, c).max(axis=(1, 3))


def assert_close(actual, expected, rtol=1e-5):
    """|actual − expected| ≤ rtol · max |expected|, elementwise."""
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape
    scale = np.abs(expected).max()
    assert scale > 0
    np.testing.assert_allclose(actual, expected, rtol=0, atol=rtol * scale)


def one_hot_relevance(logits, targets):
    r = np.zeros_like(logits)
    r[np.arange(len(targets)), targets] = logits[np.arange(len(targets)), targets]
    return r


def numpy_params(variables):
    return jax.tree_util.tree_map(lambda v: np.asarray(v, np.float64), variables)


def logit_score(model, variables, images, targets):
    logits = model.apply(variables, images)
    return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]


def explain(model, variables, images, targets, **kwargs):
    return lrp(Partial(partial(logit_score, model), variables), images, targets=targets, **kwargs)


TARGETS = jnp.array([1, 2])


# --- LRP-ε on an MLP and a CNN ----------------------------------------------------------------


class MLP(nn.Module):
    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        x = x.reshape(x.shape[0], -1)
        x = nn.relu(nn.Dense(7, use_bias=self.use_bias)(x))
        x = nn.relu(nn.Dense(5, use_bias=self.use_bias)(x))
        return nn.Dense(3, use_bias=self.use_bias)(x)


def mlp_reference(p, images, targets, eps):
    out = []
    for image, target in zip(images, targets, strict=True):
        layers = [p["Dense_0"], p["Dense_1"], p["Dense_2"]]
        acts = [np.asarray(image, np.float64).ravel()]
        for k, layer in enumerate(layers):
            z = acts[-1] @ layer["kernel"] + layer.get("bias", 0.0)
            acts.append(np.maximum(z, 0) if k < 2 else z)
        r = one_hot_relevance(acts[-1][None], [target])[0]
        for k in reversed(range(3)):
            r = epsilon_rule(acts[k], layers[k]["kernel"], layers[k].get("bias", 0.0), r, eps)
        out.append(r.reshape(image.shape))
    return np.stack(out)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).normal(size=(2, 4, 4, 2)).astype(np.float32)


def test_epsilon_mlp_matches_numpy(images):
    model = MLP()
    variables = model.init(jax.random.PRNGKey(1), images)
    expected = mlp_reference(numpy_params(variables)["params"], images, TARGETS, 1e-6)
    assert_close(explain(model, variables, images, TARGETS, epsilon=1e-6), expected)
    coarse = mlp_reference(numpy_params(variables)["params"], images, TARGETS, 0.5)
    assert_close(explain(model, variables, images, TARGETS, epsilon=0.5), coarse)


class CNN(nn.Module):
    """conv → ReLU → avg-pool → conv → ReLU → max-pool → Dense, `[B, 8, 8, 2]` → `[B, 3]`."""

    use_bias: bool = True

    @nn.compact
    def __call__(self, x):
        pad = ((1, 1), (1, 1))
        x = nn.relu(nn.Conv(4, (3, 3), padding=pad, use_bias=self.use_bias)(x))
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(3, (3, 3), padding=pad, use_bias=self.use_bias)(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        return nn.Dense(3, use_bias=self.use_bias)(x.reshape(x.shape[0], -1))


def cnn_reference(p, images, targets, eps):
    c0, c1, d = p["Conv_0"], p["Conv_1"], p["Dense_0"]
    m0 = conv_matrix(c0["kernel"], (8, 8, 2))
    m1 = conv_matrix(c1["kernel"], (4, 4, 4))
    pool = pool_matrix((8, 8, 4))
    out = []
    for image, target in zip(images, targets, strict=True):
        a0 = np.asarray(image, np.float64).ravel()
        z0 = a0 @ m0 + np.tile(c0.get("bias", np.zeros(4)), 64)
        a1 = np.maximum(z0, 0)
        a2 = a1 @ pool
        z2 = a2 @ m1 + np.tile(c1.get("bias", np.zeros(3)), 16)
        a3 = np.maximum(z2, 0).reshape(4, 4, 3)
        a4 = max_pool2(a3).ravel()
        logits = a4 @ d["kernel"] + d.get("bias", 0.0)
        r = one_hot_relevance(logits[None], [target])[0]
        r = epsilon_rule(a4, d["kernel"], d.get("bias", 0.0), r, eps)
        r = max_pool_relevance(a3, r.reshape(2, 2, 3)).ravel()
        r = epsilon_rule(a2, m1, np.tile(c1.get("bias", np.zeros(3)), 16), r, eps)
        r = a1 * (pool @ safe_div(r, a1 @ pool))  # average pooling, LRP-0
        r = epsilon_rule(a0, m0, np.tile(c0.get("bias", np.zeros(4)), 64), r, eps)
        out.append(r.reshape(image.shape))
    return np.stack(out), logits


@pytest.fixture(scope="module")
def cnn_images():
    return np.random.default_rng(1).normal(size=(2, 8, 8, 2)).astype(np.float32)


def test_epsilon_cnn_matches_numpy(cnn_images):
    model = CNN()
    variables = model.init(jax.random.PRNGKey(2), cnn_images)
    params = numpy_params(variables)["params"]
    params["Conv_0"]["bias"] = np.random.default_rng(3).normal(size=4) * 0.1
    variables = {"params": params}
    expected, _ = cnn_reference(params, cnn_images, TARGETS, 0.01)
    assert_close(explain(model, variables, cnn_images, TARGETS, epsilon=0.01), expected)


def test_relevance_sums_to_the_score_without_biases(cnn_images):
    cases = [(MLP(use_bias=False), None), (CNN(use_bias=False), None)]
    cases.append((CNN(use_bias=False), "epsilon_plus"))
    for model, composite in cases:
        x = cnn_images if isinstance(model, CNN) else cnn_images[:, :4, :4]
        variables = model.init(jax.random.PRNGKey(4), x)
        relevance = explain(model, variables, x, TARGETS, composite=composite, epsilon=1e-9)
        scores = logit_score(model, variables, x, TARGETS)
        np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), scores, rtol=1e-5)


# --- z⁺, α-β, z^β and flat against NumPy on small layers ----------------------------------------


class OneLayer(nn.Module):
    conv: bool

    @nn.compact
    def __call__(self, x):
        if self.conv:
            x = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)))(x)
            return jnp.sum(x, axis=(1, 2))
        return nn.Dense(3)(x.reshape(x.shape[0], -1))


@pytest.mark.parametrize(
    ("conv", "rule"),
    [
        (False, Rule("alpha_beta", 1e-6, 1.0, 0.0)),
        (True, Rule("alpha_beta", 1e-6, 1.0, 0.0, ignore_bias=True)),
        (True, Rule("alpha_beta", 1e-6, 2.0, 1.0)),
        (False, Rule("alpha_beta", 1e-6, 2.0, 1.0, ignore_bias=True)),
    ],
    ids=["dense-zplus", "conv-zplus-nobias", "conv-alpha2beta1", "dense-alpha2beta1-nobias"],
)
def test_alpha_beta_matches_numpy(images, conv, rule):
    model = OneLayer(conv)
    variables = model.init(jax.random.PRNGKey(5), images)
    params = numpy_params(variables)["params"]
    layer = params["Conv_0" if conv else "Dense_0"]
    layer["bias"] = np.array([0.3, -0.2, 0.1])
    variables = {"params": params}
    m = conv_matrix(layer["kernel"], (4, 4, 2)) if conv else dense_matrix(layer["kernel"])
    b = np.tile(layer["bias"], 16) if conv else layer["bias"]
    expected = []
    for image, target in zip(images, TARGETS, strict=True):
        a = np.asarray(image, np.float64).ravel()
        z = a @ m + b
        # the conv score sums the map: each position's relevance is its own output
        r = np.zeros_like(z)
        r[target::3] = z[target::3]
        rel = alpha_beta_rule(a, m, b, r, rule.alpha, rule.beta, 1e-6, rule.ignore_bias)
        expected.append(rel.reshape(image.shape))
    composite = Composite(dense=rule, conv=rule)
    actual = explain(model, variables, images, TARGETS, composite=composite)
    assert_close(actual, np.stack(expected))


@pytest.mark.parametrize("kind", ["zbox", "flat"])
def test_first_layer_rules_match_numpy(images, kind):
    """z^β (bounds −1, 1) or flat on the first conv, then the ε-rule on a Dense layer."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)))(x))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model = Net()
    variables = model.init(jax.random.PRNGKey(6), images)
    p = numpy_params(variables)["params"]
    m = conv_matrix(p["Conv_0"]["kernel"], (4, 4, 2))
    ones = conv_matrix(np.ones_like(p["Conv_0"]["kernel"]), (4, 4, 2))
    b0 = np.tile(p["Conv_0"]["bias"], 16)
    expected = []
    for image, target in zip(images, TARGETS, strict=True):
        a0 = np.asarray(image, np.float64).ravel()
        a1 = np.maximum(a0 @ m + b0, 0)
        logits = a1 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        r = one_hot_relevance(logits[None], [target])[0]
        r = epsilon_rule(a1, p["Dense_0"]["kernel"], p["Dense_0"]["bias"], r, 1e-6)
        if kind == "zbox":
            r = zbox_rule(a0, m, r, -1.0, 1.0, 1e-6)
        else:
            r = flat_rule(ones, r, 1e-6)
        expected.append(r.reshape(image.shape))
    first = Rule(kind, 1e-6, low=-1.0, high=1.0)
    composite = Composite(dense=Rule("epsilon", 1e-6), conv=Rule("epsilon"), first=first)
    actual = explain(model, variables, images, TARGETS, composite=composite)
    assert_close(actual, np.stack(expected))


def test_conv_transpose_epsilon_matches_numpy(images):
    """ConvTranspose (stride 2) → ReLU → Dense; the transposed conv's matrix is read off its
    Jacobian, the rule is the NumPy formula."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.relu(nn.ConvTranspose(2, (3, 3), strides=(2, 2))(x))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model = Net()
    variables = model.init(jax.random.PRNGKey(20), images)
    p = numpy_params(variables)["params"]
    layer = nn.ConvTranspose(2, (3, 3), strides=(2, 2), use_bias=False)
    kernel = {"params": {"kernel": variables["params"]["ConvTranspose_0"]["kernel"]}}
    jacobian = jax.jacfwd(lambda v: layer.apply(kernel, v[None])[0])(jnp.zeros(images.shape[1:]))
    m = np.asarray(jacobian, np.float64).reshape(-1, images[0].size).T
    b = np.tile(p["ConvTranspose_0"]["bias"], m.shape[1] // 2)
    expected = []
    for image, target in zip(images, TARGETS, strict=True):
        a0 = np.asarray(image, np.float64).ravel()
        a1 = np.maximum(a0 @ m + b, 0)
        logits = a1 @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
        r = one_hot_relevance(logits[None], [target])[0]
        r = epsilon_rule(a1, p["Dense_0"]["kernel"], p["Dense_0"]["bias"], r, 1e-3)
        expected.append(epsilon_rule(a0, m, b, r, 1e-3).reshape(image.shape))
    assert_close(explain(model, variables, images, TARGETS, epsilon=1e-3), np.stack(expected))


# --- BatchNorm canonisation and residual sums ---------------------------------------------------


def randomise_batch_stats(variables, seed):
    """Non-trivial BN statistics and affine parameters, so canonisation has work to do."""
    rng = np.random.default_rng(seed)

    def fill(path, v):
        name = path[-1].key
        if name == "mean":
            return jnp.asarray(rng.normal(size=v.shape) * 0.3, v.dtype)
        if name == "var":
            return jnp.asarray(rng.uniform(0.5, 2.0, size=v.shape), v.dtype)
        if name == "scale" and any(getattr(k, "key", "").startswith("BatchNorm") for k in path):
            return jnp.asarray(rng.uniform(0.5, 1.5, size=v.shape), v.dtype)
        if name == "bias" and any(
            "BatchNorm" in getattr(k, "key", "") or "bn" in getattr(k, "key", "") for k in path
        ):
            return jnp.asarray(rng.normal(size=v.shape) * 0.2, v.dtype)
        return v

    return jax.tree_util.tree_map_with_path(fill, variables)


class ConvBNHead(nn.Module):
    """A backbone (conv → BN → ReLU …) followed by global average pooling and a Dense head."""

    backbone: nn.Module

    @nn.compact
    def __call__(self, x):
        x = self.backbone(x)
        return nn.Dense(3)(jnp.mean(x, axis=(1, 2)))


@pytest.mark.parametrize(
    "backbone", [SmallCNN(widths=(4,)), BasicBlock(width=4, stride=2)], ids=["small", "resnet"]
)
def test_canonised_batchnorm_keeps_the_forward_pass(cnn_images, backbone):
    model = ConvBNHead(backbone)
    variables = randomise_batch_stats(model.init(jax.random.PRNGKey(7), cnn_images), 8)
    score = Partial(partial(logit_score, model), variables)
    np.testing.assert_allclose(
        lrp_scores(score, cnn_images, targets=TARGETS, composite="prp"),
        jax.jit(score)(cnn_images, TARGETS),
        rtol=1e-5,
        atol=1e-6,
    )


def test_fused_batchnorm_matches_numpy(images):
    """Conv → BN → ReLU → Dense: the ε-rule on the conv with BN folded into it."""

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.Conv(3, (3, 3), padding=((1, 1), (1, 1)))(x)
            x = nn.relu(nn.BatchNorm(use_running_average=True)(x))
            return nn.Dense(3)(x.reshape(x.shape[0], -1))

    model = Net()
    variables = randomise_batch_stats(model.init(jax.random.PRNGKey(9), images), 10)
    v = numpy_params(variables)
    conv, bn, stats = v["params"]["Conv_0"], v["params"]["BatchNorm_0"], v["batch_stats"]
    a = bn["scale"] / np.sqrt(stats["BatchNorm_0"]["var"] + 1e-5)
    m = conv_matrix(conv["kernel"] * a, (4, 4, 2))
    b = np.tile((conv["bias"] - stats["BatchNorm_0"]["mean"]) * a + bn["bias"], 16)
    dense = v["params"]["Dense_0"]
    expected = []
    for image, target in zip(images, TARGETS, strict=True):
        a0 = np.asarray(image, np.float64).ravel()
        a1 = np.maximum(a0 @ m + b, 0)
        logits = a1 @ dense["kernel"] + dense["bias"]
        r = one_hot_relevance(logits[None], [target])[0]
        r = epsilon_rule(a1, dense["kernel"], dense["bias"], r, 1e-3)
        expected.append(epsilon_rule(a0, m, b, r, 1e-3).reshape(image.shape))
    assert_close(explain(model, variables, images, TARGETS, epsilon=1e-3), np.stack(expected))


class Residual(nn.Module):
    """conv → ReLU → [conv → ReLU → conv] + shortcut → ReLU → mean → Dense, all bias-free."""

    @nn.compact
    def __call__(self, x):
        conv = lambda: nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)  # noqa: E731
        h = nn.relu(conv()(x))
        h = nn.relu(h + conv()(nn.relu(conv()(h))))
        return nn.Dense(3, use_bias=False)(jnp.mean(h, axis=(1, 2)))


def test_residual_sum_conserves_relevance(cnn_images):
    model = Residual()
    variables = model.init(jax.random.PRNGKey(11), cnn_images)
    relevance = explain(model, variables, cnn_images, TARGETS, epsilon=1e-9)
    scores = logit_score(model, variables, cnn_images, TARGETS)
    np.testing.assert_allclose(relevance.sum(axis=(1, 2, 3)), scores, rtol=1e-4)


# --- PRP ---------------------------------------------------------------------------------------

LATENT = 3


class TinyProtoVAEEncoder(nn.Module):
    """The ProtoVAE MNIST encoder's layers, smaller: [conv → ReLU → BN → avg-pool] × 2 →
    Dense → ReLU → Dense, split into (μ, log σ²)."""

    @nn.compact
    def __call__(self, x):
        for _ in range(2):
            x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)))(x)
            x = nn.BatchNorm(use_running_average=True)(nn.relu(x))
            x = nn.avg_pool(x, (2, 2), strides=(2, 2))
        x = x.reshape(x.shape[0], -1)
        hidden = nn.relu(nn.Dense(2 * LATENT)(x))
        return jnp.split(nn.Dense(2 * LATENT)(hidden), 2, axis=-1)


def mu_of(model, variables, images):
    return model.apply(variables, images)[0]


def protovae_prp_reference(v, images, prototypes, targets, composite):
    """The official PRP rules (`ProtoVAE:prp.py`) on the forward-preserving canonisation:
    z^β (−1, 1) for the first conv and z⁺ for the second, both ignoring the bias; ε = 1e-6 for
    Dense layers (`prp`; z⁺ ignoring the bias for `prp_zplus`) and pooling; a BN after a ReLU
    passes relevance unchanged; nothing flows through an inactive ReLU."""

    def dense_rule(x, layer, r):
        if composite == "prp":
            return epsilon_rule(x, layer["kernel"], layer["bias"], r, 1e-6)
        return alpha_beta_rule(x, layer["kernel"], 0.0, r, 1.0, 0.0, 1e-12, ignore_bias=True)

    p, stats = v["params"], v["batch_stats"]

    def bn(x, k):
        s = stats[f"BatchNorm_{k}"]
        scale = p[f"BatchNorm_{k}"]["scale"] / np.sqrt(s["var"] + 1e-5)
        return (x - s["mean"]) * scale + p[f"BatchNorm_{k}"]["bias"]

    m0 = conv_matrix(p["Conv_0"]["kernel"], (8, 8, 1))
    m1 = conv_matrix(p["Conv_1"]["kernel"], (4, 4, 4))
    pool0, pool1 = pool_matrix((8, 8, 4)), pool_matrix((4, 4, 4))
    d0, d1 = p["Dense_0"], p["Dense_1"]
    out = []
    for image, target in zip(images, targets, strict=True):
        a0 = np.asarray(image, np.float64).ravel()
        r0 = np.maximum(a0 @ m0 + np.tile(p["Conv_0"]["bias"], 64), 0)
        n0 = bn(r0.reshape(64, 4), 0).ravel()
        a1 = n0 @ pool0
        r1 = np.maximum(a1 @ m1 + np.tile(p["Conv_1"]["bias"], 16), 0)
        n1 = bn(r1.reshape(16, 4), 1).ravel()
        a2 = n1 @ pool1
        hidden = np.maximum(a2 @ d0["kernel"] + d0["bias"], 0)
        mu = (hidden @ d1["kernel"] + d1["bias"])[:LATENT]
        r = np.concatenate([1.0 / ((mu - prototypes[target]) ** 2 + 1e-4), np.zeros(LATENT)])
        r = dense_rule(hidden, d1, r)
        r = dense_rule(a2, d0, r)
        r = epsilon_rule(n1, pool1, 0.0, r, 1e-6) * (r1 > 0)
        r = alpha_beta_rule(a1, m1, 0.0, r, 1.0, 0.0, 1e-12, ignore_bias=True)
        r = epsilon_rule(n0, pool0, 0.0, r, 1e-6) * (r0 > 0)
        out.append(zbox_rule(a0, m0, r, -1.0, 1.0, 1e-6).reshape(image.shape))
    return np.stack(out)


@pytest.fixture(scope="module")
def digit_like():
    return np.random.default_rng(12).uniform(-1, 1, size=(2, 8, 8, 1)).astype(np.float32)


@pytest.mark.parametrize("composite", ["prp", "prp_zplus"])
def test_protovae_prp_matches_numpy_reference(digit_like, composite):
    model = TinyProtoVAEEncoder()
    variables = randomise_batch_stats(model.init(jax.random.PRNGKey(13), digit_like), 14)
    # Non-zero Conv and Dense biases: the rules differ in whether a bias absorbs relevance.
    rng = np.random.default_rng(16)
    variables = jax.tree_util.tree_map_with_path(
        lambda path, v: (
            v + 0.1 * rng.normal(size=v.shape).astype(v.dtype)
            if path[-1].key == "bias" and "BatchNorm" not in path[-2].key
            else v
        ),
        variables,
    )
    prototypes = np.random.default_rng(15).normal(size=(4, LATENT)).astype(np.float32)
    targets = jnp.array([0, 3])
    relevance = prp(
        Partial(partial(mu_of, model), variables),
        protovae_relevance(prototypes),
        digit_like,
        targets=targets,
        composite=composite,
    )
    expected = protovae_prp_reference(
        numpy_params(variables), digit_like, prototypes, targets, composite
    )
    # Small denominators amplify float32 rounding to 1.1e-4 of the scale in the worst pixel
    # (median 3e-7); keeping the Dense bias in z⁺ would be off by 0.12.
    assert_close(relevance, expected, rtol=5e-4)


@jax.jit
def seeds(prototypes, latent, patches, targets):
    return (
        protovae_relevance(prototypes)(latent, targets),
        protovae_relevance(prototypes, autograd_seed=True)(latent, targets),
        jax.grad(lambda z: jnp.sum(1 / ((z - prototypes[targets]) ** 2 + 1e-4)))(latent),
        kmex_relevance(prototypes)(latent, targets),
        kmex_relevance(prototypes, seed="similarity")(latent, targets),
        protopnet_relevance(prototypes)(patches, targets),
        protopnet_relevance(prototypes, sigmoid=True)(patches, targets),
        protopnet_relevance(prototypes)(jax.nn.sigmoid(patches), targets),
    )


def test_prp_seeds_match_their_formulas():
    rng = np.random.default_rng(16)
    prototypes = rng.normal(size=(5, 4)).astype(np.float32)
    latent = rng.normal(size=(2, 4)).astype(np.float32)
    targets = jnp.array([4, 1])
    patches = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
    protovae, autograd_seed, autograd, ones, similarity, protopnet, after_sigmoid, sigmoided = (
        seeds(prototypes, latent, patches, targets)
    )
    delta = latent - prototypes[np.asarray(targets)]
    np.testing.assert_allclose(protovae, 1 / (delta**2 + 1e-4), rtol=1e-5)
    np.testing.assert_allclose(autograd_seed, autograd, rtol=1e-4)
    np.testing.assert_array_equal(ones, np.ones((2, 4)))
    np.testing.assert_allclose(similarity, np.log((delta**2 + 1) / (delta**2 + 1e-8)), rtol=1e-5)
    for b, t in enumerate(np.asarray(targets)):
        d2 = (patches[b].astype(np.float64) - prototypes[t]) ** 2
        sim = np.log((d2.sum(-1) + 1) / (d2.sum(-1) + 1e-4))
        i, j = np.unravel_index(np.argmax(sim), sim.shape)
        expected = np.zeros((3, 3, 4))
        closeness = 1 / (d2[i, j] ** 2 + 1e-12)
        expected[i, j] = sim[i, j] * closeness / closeness.sum()
        np.testing.assert_allclose(protopnet[b], expected, rtol=1e-4, atol=1e-7)
        assert np.isclose(protopnet[b].sum(), sim.max(), rtol=1e-5)
    np.testing.assert_allclose(after_sigmoid, sigmoided, rtol=1e-6)


# --- jit, errors ------------------------------------------------------------------------------


MLP_MODEL = MLP()
TRACES = {"count": 0}


def counted_mlp_logit(variables, images, targets):
    TRACES["count"] += 1
    return logit_score(MLP_MODEL, variables, images, targets)


def test_lrp_reuses_its_compilation_and_runs_under_jit(images):
    first = MLP_MODEL.init(jax.random.PRNGKey(17), images)
    second = MLP_MODEL.init(jax.random.PRNGKey(18), images)
    TRACES["count"] = 0
    for variables in (first, second):
        relevance = lrp(Partial(counted_mlp_logit, variables), images, targets=TARGETS)
        expected = mlp_reference(numpy_params(variables)["params"], images, TARGETS, 1e-6)
        assert_close(relevance, expected)
    assert TRACES["count"] == 1
    jitted = jax.jit(lambda v, x: lrp(Partial(counted_mlp_logit, v), x, targets=TARGETS))
    np.testing.assert_allclose(jitted(second, images), relevance, rtol=1e-6)


def test_errors_say_what_is_wrong(images):
    model = MLP()
    variables = model.init(jax.random.PRNGKey(18), images)
    with pytest.raises(ValueError, match="Unknown LRP composite"):
        explain(model, variables, images, TARGETS, composite="nope")
    with pytest.raises(ValueError, match="first layer"):
        explain(model, variables, images, TARGETS, rule=Rule("zbox"))
    with pytest.raises(ValueError, match="alpha − beta"):
        explain(model, variables, images, TARGETS, rule=Rule("alpha_beta", alpha=2.0, beta=2.0))

    class TrainModeBN(nn.Module):
        @nn.compact
        def __call__(self, x):
            x = nn.BatchNorm(use_running_average=False)(nn.Dense(3)(x.reshape(x.shape[0], -1)))
            return x

    bn_model = TrainModeBN()
    bn_vars = bn_model.init(jax.random.PRNGKey(19), images)

    def score(v, x, t):
        out, _ = bn_model.apply(v, x, mutable=["batch_stats"])
        return jnp.take_along_axis(out, t[:, None], axis=1)[:, 0]

    with pytest.raises(ValueError, match="inference mode"):
        lrp(Partial(score, bn_vars), images, targets=TARGETS)
    assert composite_by_name("prp", low=0.0, high=1.0).first.low == 0.0


def test_input_bounds_are_the_normalised_ends_of_the_pixel_range():
    assert input_bounds(None, 3) == {"low": 0.0, "high": 1.0}
    assert input_bounds(lambda x: 2.0 * x - 1.0, 1) == {"low": -1.0, "high": 1.0}
    mean, std = np.array([0.5, 0.25, 0.0]), np.array([0.5, 0.25, 2.0])
    bounds = input_bounds(lambda x: (x - mean) / std, 3)
    np.testing.assert_allclose(bounds["low"], [-1.0, -1.0, 0.0])
    np.testing.assert_allclose(bounds["high"], [1.0, 3.0, 0.5])
    assert isinstance(bounds["low"], tuple) and isinstance(bounds["high"][0], float)
