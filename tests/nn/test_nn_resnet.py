"""ResNets: shapes at 224 px, parameter counts against torchvision's, and numerics at
8–64 px against a float64 NumPy reference with explicit torch-style padding."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.errors import UsageError
from protojax.nn import backbone_by_name, feature_channels
from protojax.nn.resnet import BasicBlock, Bottleneck, ResNet, max_pool
from protojax.nn.weights import (
    flatten_variables,
    torch_state_dict_to_variables,
    unflatten_variables,
)

# Blocks per stage and block kind, written from torchvision's resnet.py.
ARCHS = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
}
# torchvision's published parameter counts, classifier (fc, 1000 classes) included.
TORCHVISION_COUNTS = {
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
}


def torchvision_shapes(arch, stem="imagenet"):
    """torchvision's state_dict names → shapes (OIHW convs), without fc, written by hand."""
    kind, stages = ARCHS[arch]
    expansion = 1 if kind == "basic" else 4
    k = 7 if stem == "imagenet" else 3
    shapes = {"conv1.weight": (64, 3, k, k)}

    def bn(prefix, c):
        for leaf in ("weight", "bias", "running_mean", "running_var"):
            shapes[f"{prefix}.{leaf}"] = (c,)

    bn("bn1", 64)
    cin = 64
    for s, blocks in enumerate(stages, start=1):
        width = 64 * 2 ** (s - 1)
        for b in range(blocks):
            p = f"layer{s}.{b}"
            if kind == "basic":
                convs = [(width, cin, 3), (width, width, 3)]
            else:
                convs = [(width, cin, 1), (width, width, 3), (4 * width, width, 1)]
            for n, (o, i, kk) in enumerate(convs, start=1):
                shapes[f"{p}.conv{n}.weight"] = (o, i, kk, kk)
                bn(f"{p}.bn{n}", o)
            if b == 0 and (s > 1 or cin != width * expansion):
                shapes[f"{p}.downsample.0.weight"] = (width * expansion, cin, 1, 1)
                bn(f"{p}.downsample.1", width * expansion)
            cin = width * expansion
    return shapes


def hand_param_count(arch, stem="imagenet"):
    shapes = torchvision_shapes(arch, stem)
    return sum(int(np.prod(s)) for n, s in shapes.items() if not n.endswith(("_mean", "_var")))


@pytest.mark.parametrize("arch", list(ARCHS))
def test_hand_count_plus_classifier_equals_torchvision(arch):
    channels = 512 * (1 if ARCHS[arch][0] == "basic" else 4)
    assert hand_param_count(arch) + channels * 1000 + 1000 == TORCHVISION_COUNTS[arch]


@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_shapes_and_parameter_counts_at_224(arch, stem):
    layers = ("stem", "layer1", "layer2", "layer3", "layer4")
    model = backbone_by_name(arch, stem=stem, return_layers=layers)
    images = jax.ShapeDtypeStruct((2, 224, 224, 3), jnp.float32)
    (final, maps), variables = jax.eval_shape(
        lambda x: model.init_with_output(jax.random.key(0), x), images
    )
    expansion = 1 if ARCHS[arch][0] == "basic" else 4
    base = 56 if stem == "imagenet" else 224  # spatial size after the stem
    expected = {"stem": (2, base, base, 64)}
    for s in range(1, 5):
        side = base // 2 ** (s - 1)
        expected[f"layer{s}"] = (2, side, side, 64 * 2 ** (s - 1) * expansion)
    assert {name: m.shape for name, m in maps.items()} == expected
    assert final.shape == expected["layer4"]
    if stem == "imagenet":
        assert final.shape[1:3] == (7, 7)  # ProtoPNet's model.py: a 7×7 grid at 224 px
    assert final.shape[-1] == feature_channels(arch)
    # Every torch tensor has a Flax counterpart of the same size.
    shapes = torchvision_shapes(arch, stem)
    count = sum(x.size for x in jax.tree.leaves(variables["params"]))
    assert count == hand_param_count(arch, stem)
    stats = sum(x.size for x in jax.tree.leaves(variables["batch_stats"]))
    assert stats == sum(int(np.prod(s)) for n, s in shapes.items() if n.endswith(("_mean", "_var")))
    assert len(flatten_variables(variables)) == len(shapes)


def test_dtypes():
    images = jax.ShapeDtypeStruct((1, 64, 64, 3), jnp.float32)
    mixed = backbone_by_name("resnet18", dtype=jnp.bfloat16)
    out, variables = jax.eval_shape(lambda x: mixed.init_with_output(jax.random.key(0), x), images)
    assert out.dtype == jnp.bfloat16
    assert {x.dtype for x in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    half = backbone_by_name("resnet18", dtype=jnp.bfloat16, param_dtype=jnp.bfloat16)
    variables = jax.eval_shape(half.init, jax.random.key(0), images)
    assert {x.dtype for x in jax.tree.leaves(variables["params"])} == {jnp.dtype(jnp.bfloat16)}


def test_registry_errors():
    with pytest.raises(UsageError, match="Unknown stem 'tiny'"):
        backbone_by_name("resnet18", stem="tiny")
    with pytest.raises(UsageError, match="Unknown backbone 'resnet19'"):
        backbone_by_name("resnet19")
    with pytest.raises(UsageError, match="Unknown backbone"):
        feature_channels("resnet19")
    assert feature_channels("small_cnn") == 64
    model = backbone_by_name("resnet18", return_layers=("layer5",))
    with pytest.raises(UsageError, match="Unknown ResNet layer 'layer5'"):
        jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match=r"\[B, H, W, C\]"):
        jax.eval_shape(backbone_by_name("resnet18").init, jax.random.key(0), jnp.zeros((32, 32, 3)))


# ---- float64 NumPy reference, torch-style explicit padding -----------------------------------


def conv_ref(x, kernel_hwio, stride, pad):
    """x [B,H,W,I] ⊛ kernel [kh,kw,I,O], zero padding `pad` on every side (torch Conv2d)."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    kh, kw = kernel_hwio.shape[:2]
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    out = np.zeros((x.shape[0], ho, wo, kernel_hwio.shape[3]))
    for i in range(kh):
        for j in range(kw):
            patch = x[
                :, i : i + stride * (ho - 1) + 1 : stride, j : j + stride * (wo - 1) + 1 : stride
            ]
            out += patch @ kernel_hwio[i, j]
    return out


def max_pool_ref(x, window=3, stride=2, pad=1):
    """torch MaxPool2d(window, stride, pad): padding counts as −inf."""
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), constant_values=-np.inf)
    ho = (x.shape[1] - window) // stride + 1
    wo = (x.shape[2] - window) // stride + 1
    out = np.full((x.shape[0], ho, wo, x.shape[3]), -np.inf)
    for i in range(window):
        for j in range(window):
            out = np.maximum(
                out,
                x[
                    :,
                    i : i + stride * (ho - 1) + 1 : stride,
                    j : j + stride * (wo - 1) + 1 : stride,
                ],
            )
    return out


def bn_ref(x, scale, bias, mean, var):
    return (x - mean) / np.sqrt(var + 1e-5) * scale + bias


def relu(x):
    return np.maximum(x, 0.0)


def randomized(variables, seed):
    """Random values in every leaf, positive variances, as float32."""
    flat = flatten_variables(variables)
    rng = np.random.default_rng(seed)
    out = {}
    for key, leaf in flat.items():
        if key.endswith("/var"):
            value = rng.uniform(0.5, 2.0, leaf.shape)
        elif key.endswith("/scale"):
            value = rng.uniform(0.5, 1.5, leaf.shape)
        elif key.endswith("/kernel"):
            fan_in = np.prod(leaf.shape[:-1])
            value = rng.normal(0, np.sqrt(2.0 / fan_in), leaf.shape)
        else:
            value = rng.normal(0, 0.1, leaf.shape)
        out[key] = value.astype(np.float32)
    return unflatten_variables(out)


def relative_error(got, want):
    return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


def block_ref(x, v, kind, stride, has_downsample):
    p, s = v["params"], v["batch_stats"]

    def cbn(y, name, bn_name, stride_, pad):
        y = conv_ref(y, p[name]["kernel"].astype(np.float64), stride_, pad)
        return bn_ref(
            y, p[bn_name]["scale"], p[bn_name]["bias"], s[bn_name]["mean"], s[bn_name]["var"]
        )

    if kind == "basic":
        y = relu(cbn(x, "conv1", "bn1", stride, 1))
        y = cbn(y, "conv2", "bn2", 1, 1)
    else:  # torchvision v1.5: the stride sits on the 3×3 conv
        y = relu(cbn(x, "conv1", "bn1", 1, 0))
        y = relu(cbn(y, "conv2", "bn2", stride, 1))
        y = cbn(y, "conv3", "bn3", 1, 0)
    shortcut = cbn(x, "downsample_0", "downsample_1", stride, 0) if has_downsample else x
    return relu(y + shortcut)


@pytest.mark.parametrize("size", [8, 9])
@pytest.mark.parametrize(
    "kind,width,stride,cin,has_downsample",
    [
        ("basic", 8, 2, 4, True),
        ("basic", 4, 1, 4, False),
        ("bottleneck", 4, 2, 8, True),
        ("bottleneck", 4, 1, 8, True),  # channel change only: a stride-1 downsample
        ("bottleneck", 2, 1, 8, False),
    ],
)
def test_block_matches_reference(kind, width, stride, cin, has_downsample, size):
    block = (BasicBlock if kind == "basic" else Bottleneck)(width, stride)
    x = np.random.default_rng(0).normal(size=(2, size, size, cin)).astype(np.float32)
    variables = randomized(jax.eval_shape(block.init, jax.random.key(0), x), seed=1)
    assert ("downsample_0" in variables["params"]) == has_downsample
    got = jax.jit(block.apply)(variables, x)
    want = block_ref(
        x.astype(np.float64), jax.tree.map(np.asarray, variables), kind, stride, has_downsample
    )
    assert got.shape == want.shape
    assert relative_error(got, want) < 1e-5


@pytest.mark.parametrize("size", [32, 33])
@pytest.mark.parametrize("stem", ["imagenet", "cifar"])
def test_stem_matches_reference(stem, size):
    model = ResNet(BasicBlock, (1,), stem=stem, return_layers=("stem",))
    x = np.random.default_rng(size).normal(size=(2, size, size, 3)).astype(np.float32)
    variables = randomized(jax.eval_shape(model.init, jax.random.key(0), x), seed=2)
    _, maps = jax.jit(model.apply)(variables, x)
    p, s = jax.tree.map(
        lambda a: np.asarray(a, np.float64), (variables["params"], variables["batch_stats"])
    )
    stride, pad = (2, 3) if stem == "imagenet" else (1, 1)
    want = conv_ref(x.astype(np.float64), p["conv1"]["kernel"], stride, pad)
    want = relu(
        bn_ref(want, p["bn1"]["scale"], p["bn1"]["bias"], s["bn1"]["mean"], s["bn1"]["var"])
    )
    if stem == "imagenet":
        want = max_pool_ref(want)
    assert maps["stem"].shape == want.shape
    assert relative_error(maps["stem"], want) < 1e-5


@pytest.mark.parametrize("size", [6, 7])
def test_max_pool_pads_with_minus_infinity(size):
    # Negative inputs: zero padding would leak zeros into the border windows.
    x = -np.abs(np.random.default_rng(3).normal(size=(2, size, size, 3))) - 1.0
    got = np.asarray(max_pool(jnp.asarray(x, jnp.float32)))
    want = max_pool_ref(x)
    assert got.shape == want.shape == (2, (size - 1) // 2 + 1, (size - 1) // 2 + 1, 3)
    np.testing.assert_allclose(got, want, rtol=1e-6)
    assert np.all(got < 0)


def resnet_ref(x, sd, arch, stem):
    """The whole network in float64 NumPy, walking torchvision's state_dict names."""
    kind, stages = ARCHS[arch]

    def conv(y, name, stride, pad):
        return conv_ref(y, sd[name + ".weight"].transpose(2, 3, 1, 0), stride, pad)

    def bn(y, name):
        return bn_ref(
            y, *(sd[f"{name}.{k}"] for k in ("weight", "bias", "running_mean", "running_var"))
        )

    maps = {}
    if stem == "imagenet":
        y = max_pool_ref(relu(bn(conv(x, "conv1", 2, 3), "bn1")))
    else:
        y = relu(bn(conv(x, "conv1", 1, 1), "bn1"))
    maps["stem"] = y
    for s, blocks in enumerate(stages, start=1):
        for b in range(blocks):
            p = f"layer{s}.{b}"
            stride = 2 if s > 1 and b == 0 else 1
            if kind == "basic":
                z = relu(bn(conv(y, p + ".conv1", stride, 1), p + ".bn1"))
                z = bn(conv(z, p + ".conv2", 1, 1), p + ".bn2")
            else:
                z = relu(bn(conv(y, p + ".conv1", 1, 0), p + ".bn1"))
                z = relu(bn(conv(z, p + ".conv2", stride, 1), p + ".bn2"))
                z = bn(conv(z, p + ".conv3", 1, 0), p + ".bn3")
            if p + ".downsample.0.weight" in sd:
                y = bn(conv(y, p + ".downsample.0", stride, 0), p + ".downsample.1")
            y = relu(z + y)
        maps[f"layer{s}"] = y
    return maps


def random_state_dict(arch, stem, seed):
    rng = np.random.default_rng(seed)
    sd = {}
    for name, shape in torchvision_shapes(arch, stem).items():
        if name.endswith("running_var"):
            sd[name] = rng.uniform(0.5, 2.0, shape)
        elif name.endswith(".weight") and len(shape) == 1:
            sd[name] = rng.uniform(0.5, 1.5, shape)
        elif len(shape) == 4:
            sd[name] = rng.normal(0, np.sqrt(2.0 / np.prod(shape[1:])), shape)
        else:
            sd[name] = rng.normal(0, 0.1, shape)
    sd["bn1.num_batches_tracked"] = np.array(7)
    sd["fc.weight"] = rng.normal(size=(1000, 512))
    sd["fc.bias"] = rng.normal(size=(1000,))
    return {k: v.astype(np.float32) for k, v in sd.items()}


def test_resnet18_from_torch_names_matches_reference_at_64px():
    """Key map, layouts and the whole forward pass, without torch."""
    layers = ("stem", "layer1", "layer2", "layer3", "layer4")
    model = backbone_by_name("resnet18", return_layers=layers)
    sd = random_state_dict("resnet18", "imagenet", seed=4)
    variables = torch_state_dict_to_variables(sd)
    x = np.random.default_rng(5).normal(size=(2, 64, 64, 3)).astype(np.float32)
    final, maps = jax.jit(model.apply)(variables, x)
    want = resnet_ref(
        x.astype(np.float64),
        {k: v.astype(np.float64) for k, v in sd.items()},
        "resnet18",
        "imagenet",
    )
    for name in layers:
        assert maps[name].shape == want[name].shape, name
        assert relative_error(maps[name], want[name]) < 1e-5, name
    np.testing.assert_array_equal(final, maps["layer4"])


def test_train_mode_updates_batch_stats_with_torch_momentum():
    model = ResNet(BasicBlock, (1,), stem="cifar", return_layers=("stem",))
    x = np.random.default_rng(6).normal(1.0, 2.0, size=(4, 8, 8, 3)).astype(np.float32)
    variables = randomized(jax.eval_shape(model.init, jax.random.key(0), x), seed=7)
    apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"]))
    (_, maps), updates = apply(variables, x)
    p = jax.tree.map(lambda a: np.asarray(a, np.float64), variables["params"])
    pre = conv_ref(x.astype(np.float64), p["conv1"]["kernel"], 1, 1)
    batch_mean, batch_var = pre.mean(axis=(0, 1, 2)), pre.var(axis=(0, 1, 2))
    old = variables["batch_stats"]["bn1"]
    new = updates["batch_stats"]["bn1"]
    # torch momentum 0.1: running = 0.9 · running + 0.1 · batch.
    np.testing.assert_allclose(
        new["mean"], 0.9 * old["mean"] + 0.1 * batch_mean, rtol=1e-5, atol=1e-6
    )
    np.testing.assert_allclose(new["var"], 0.9 * old["var"] + 0.1 * batch_var, rtol=1e-5, atol=1e-6)
    want = relu(bn_ref(pre, p["bn1"]["scale"], p["bn1"]["bias"], batch_mean, batch_var))
    assert relative_error(maps["stem"], want) < 1e-5


def test_initialisation_follows_torchvision():
    model = ResNet(Bottleneck, (1,))
    # An rbg key: its sampler compiles in a fraction of threefry's time on CPU.
    key = jax.random.key(0, impl="rbg")
    variables = jax.jit(model.init)(key, jnp.zeros((1, 32, 32, 3)))
    params = variables["params"]
    kernel = np.asarray(params["conv1"]["kernel"])  # [7, 7, 3, 64]: fan_out = 64 · 49
    np.testing.assert_allclose(kernel.std(), np.sqrt(2.0 / (64 * 49)), rtol=0.03)
    assert abs(kernel.mean()) < 3 * np.sqrt(2.0 / (64 * 49)) / np.sqrt(kernel.size)
    # No zero-initialised residual BN: every BN starts at scale 1, bias 0.
    for key, leaf in flatten_variables(params).items():
        if key.endswith("/scale"):
            np.testing.assert_array_equal(leaf, 1.0)
        if key.endswith("/bias"):
            np.testing.assert_array_equal(leaf, 0.0)
    for key, leaf in flatten_variables(variables["batch_stats"]).items():
        np.testing.assert_array_equal(leaf, 1.0 if key.endswith("/var") else 0.0)


def test_bfloat16_compute_close_to_float32():
    x = np.random.default_rng(8).normal(size=(2, 32, 32, 3)).astype(np.float32)
    full = ResNet(BasicBlock, (1, 1))
    mixed = ResNet(BasicBlock, (1, 1), dtype=jnp.bfloat16)
    variables = randomized(jax.eval_shape(full.init, jax.random.key(0), x), seed=9)
    want = np.asarray(jax.jit(full.apply)(variables, x), np.float64)
    got = jax.jit(mixed.apply)(variables, x)
    assert got.dtype == jnp.bfloat16
    assert relative_error(got.astype(jnp.float32), want) < 3e-2
