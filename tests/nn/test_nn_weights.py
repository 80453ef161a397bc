"""Weight files: round trips, key and shape checks with their messages, scopes, the torch key
map and layouts, and the converter's usage errors (none of these need torch)."""

import os
import pathlib
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.errors import CheckpointError, ProtojaxError, UsageError
from protojax.nn.resnet import BasicBlock, ResNet
from protojax.nn.weights import (
    flatten_variables,
    load_configured_backbone,
    load_variables,
    save_variables,
    torch_state_dict_to_variables,
    torch_to_flax_key,
    unflatten_variables,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
IMAGES = jax.ShapeDtypeStruct((1, 16, 16, 3), jnp.float32)


def shapes_of(model):
    return jax.eval_shape(model.init, jax.random.key(0), IMAGES)


def random_like(abstract, seed=0):
    rng = np.random.default_rng(seed)
    flat = flatten_variables(abstract)
    return unflatten_variables(
        {k: rng.normal(size=v.shape).astype(np.float32) for k, v in flat.items()}
    )


def test_round_trip_is_exact_and_casts_to_the_model_dtype(tmp_path):
    model = ResNet(BasicBlock, (2,))
    variables = random_like(shapes_of(model))
    save_variables(tmp_path / "w.npz", variables)
    with np.load(tmp_path / "w.npz") as data:
        assert "params/layer1_1/bn2/scale" in data.files
        assert "batch_stats/bn1/var" in data.files
    loaded = load_variables(tmp_path / "w.npz", like=shapes_of(model))
    assert jax.tree.structure(loaded) == jax.tree.structure(variables)
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(variables)):
        np.testing.assert_array_equal(got, want)
    half = ResNet(BasicBlock, (2,), param_dtype=jnp.bfloat16)
    loaded = load_variables(tmp_path / "w.npz", like=shapes_of(half))
    kernel = loaded["params"]["conv1"]["kernel"]
    assert kernel.dtype == jnp.bfloat16
    np.testing.assert_array_equal(
        kernel, jnp.asarray(variables["params"]["conv1"]["kernel"], jnp.bfloat16)
    )


def test_shallower_weights_name_the_first_missing_key(tmp_path):
    save_variables(tmp_path / "w.npz", random_like(shapes_of(ResNet(BasicBlock, (2,)))))
    deeper = shapes_of(ResNet(BasicBlock, (3,)))
    with pytest.raises(CheckpointError) as info:
        load_variables(tmp_path / "w.npz", like=deeper)
    message = str(info.value)
    assert "lacks 'batch_stats/layer1_2/bn1/mean'" in message
    assert "architecture (depth)" in message
    assert "10 of 35 keys differ" in message  # layer1_2: 2 conv kernels + 2 BNs × 4


def test_classifier_head_is_an_unexpected_key(tmp_path):
    model = ResNet(BasicBlock, (1,))
    variables = random_like(shapes_of(model))
    variables["params"]["fc"] = {"kernel": np.zeros((64, 10), np.float32)}
    save_variables(tmp_path / "w.npz", variables)
    with pytest.raises(CheckpointError, match=r"holds 'params/fc/kernel'.*classifier head"):
        load_variables(tmp_path / "w.npz", like=shapes_of(model))


def test_wrong_stem_names_the_key_and_both_shapes(tmp_path):
    save_variables(tmp_path / "w.npz", random_like(shapes_of(ResNet(BasicBlock, (1,)))))
    cifar = shapes_of(ResNet(BasicBlock, (1,), stem="cifar"))
    with pytest.raises(CheckpointError) as info:
        load_variables(tmp_path / "w.npz", like=cifar)
    message = str(info.value)
    assert "'params/conv1/kernel' has shape (7, 7, 3, 64)" in message
    assert "expects (3, 3, 3, 64)" in message
    assert "\n" not in message


def test_allow_missing_keeps_the_fresh_values(tmp_path):
    model = ResNet(BasicBlock, (2,))
    fresh = random_like(shapes_of(model), seed=1)
    partial = random_like(shapes_of(model), seed=2)
    del partial["params"]["layer1_1"]
    del partial["batch_stats"]["layer1_1"]
    save_variables(tmp_path / "w.npz", partial)
    loaded = load_variables(tmp_path / "w.npz", like=fresh, allow_missing=True)
    flat, want_fresh, want_file = (flatten_variables(t) for t in (loaded, fresh, partial))
    assert set(flat) == set(want_fresh)
    for key, value in flat.items():
        want = want_file.get(key, want_fresh[key])
        np.testing.assert_array_equal(value, want)
    assert sum("layer1_1" in k for k in flat) == 10
    with pytest.raises(CheckpointError, match="holds only shapes"):
        load_variables(tmp_path / "w.npz", like=shapes_of(model), allow_missing=True)


def test_scope_replaces_only_the_backbone(tmp_path):
    backbone = ResNet(BasicBlock, (1,))
    weights = random_like(shapes_of(backbone), seed=3)
    save_variables(tmp_path / "w.npz", weights)
    fresh = random_like(shapes_of(backbone), seed=4)
    head = {"kernel": np.ones((64, 3), np.float32)}
    like = {
        "params": {"backbone": fresh["params"], "head": head},
        "batch_stats": {"backbone": fresh["batch_stats"]},
    }
    loaded = load_variables(tmp_path / "w.npz", like=like, scope="backbone")
    np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], head["kernel"])
    for collection in ("params", "batch_stats"):
        got = flatten_variables(loaded[collection]["backbone"])
        want = flatten_variables(weights[collection])
        assert set(got) == set(want)
        for key in got:
            np.testing.assert_array_equal(got[key], want[key])
    with pytest.raises(CheckpointError, match="no submodule 'encoder'"):
        load_variables(tmp_path / "w.npz", like=like, scope="encoder")


def test_missing_and_corrupt_files(tmp_path):
    like = shapes_of(ResNet(BasicBlock, (1,)))
    with pytest.raises(CheckpointError, match="No weight file at .*convert_weights"):
        load_variables(tmp_path / "absent.npz", like=like)
    (tmp_path / "bad.npz").write_bytes(b"not a zip file")
    with pytest.raises(CheckpointError, match="Cannot read .*bad.npz"):
        load_variables(tmp_path / "bad.npz", like=like)


@pytest.mark.parametrize(
    "name,ndim,key",
    [
        ("conv1.weight", 4, "params/conv1/kernel"),
        ("bn1.weight", 1, "params/bn1/scale"),
        ("bn1.bias", 1, "params/bn1/bias"),
        ("layer1.0.bn2.running_mean", 1, "batch_stats/layer1_0/bn2/mean"),
        ("layer2.0.downsample.0.weight", 4, "params/layer2_0/downsample_0/kernel"),
        ("layer4.2.downsample.1.running_var", 1, "batch_stats/layer4_2/downsample_1/var"),
        ("fc.weight", 2, "params/fc/kernel"),
        ("layer3.5.bn3.num_batches_tracked", 0, None),
    ],
)
def test_torch_key_map(name, ndim, key):
    assert torch_to_flax_key(name, ndim) == key


def test_unknown_torch_kind_is_an_error():
    with pytest.raises(CheckpointError, match="'layer1.0.attn.in_proj_weight'"):
        torch_to_flax_key("layer1.0.attn.in_proj_weight", 2)


def test_layouts_and_dropped_keys():
    rng = np.random.default_rng(5)
    conv = rng.normal(size=(8, 4, 3, 2))  # O, I, kH, kW
    linear = rng.normal(size=(10, 8))  # out, in
    state_dict = {
        "conv1.weight": conv,
        "bn1.running_var": np.arange(8.0),
        "bn1.num_batches_tracked": np.array(3),
        "head.weight": linear,
        "fc.weight": linear,
        "fc.bias": np.zeros(10),
    }
    variables = torch_state_dict_to_variables(state_dict)
    assert set(flatten_variables(variables)) == {
        "params/conv1/kernel",
        "batch_stats/bn1/var",
        "params/head/kernel",
    }
    kernel = variables["params"]["conv1"]["kernel"]
    assert kernel.shape == (3, 2, 4, 8)
    for o, i, h, w in np.ndindex(conv.shape):
        assert kernel[h, w, i, o] == conv[o, i, h, w]
    np.testing.assert_array_equal(variables["params"]["head"]["kernel"], linear.T)
    np.testing.assert_array_equal(variables["batch_stats"]["bn1"]["var"], np.arange(8.0))


def test_converter_usage_errors():
    from experiments.convert_weights import convert

    with pytest.raises(UsageError, match="exactly one of"):
        convert(arch="resnet18", out="x.npz")
    with pytest.raises(UsageError, match="Unknown --arch 'vgg17'"):
        convert(arch="vgg17", out="x.npz", random_init=True)


def test_missing_torch_gives_the_install_command(monkeypatch):
    from protojax.nn.torch_reference import torch_resnet

    monkeypatch.setitem(sys.modules, "torch", None)  # makes `import torch` fail
    with pytest.raises(ProtojaxError, match=r"pip install -e '\.\[torch\]'"):
        torch_resnet("resnet18")


def test_launcher_exit_code_and_last_line(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "experiments.convert_weights", "--arch=resnet18",
         f"--out={tmp_path / 'w.npz'}", "--random_init", "--torch_checkpoint=x.pth"],
        cwd=ROOT, capture_output=True, text=True, timeout=120,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )  # fmt: skip
    assert result.returncode == 2
    lines = (result.stdout + result.stderr).strip().splitlines()
    assert lines[-1] == "Pass exactly one of --torch_checkpoint=PATH and --random_init."


def test_checksum_mismatch_is_one_clear_sentence(tmp_path):
    model = ResNet(BasicBlock, (1,))
    digest = save_variables(tmp_path / "w.npz", random_like(shapes_of(model)))
    sidecar = (tmp_path / "w.npz.sha256").read_text()
    assert sidecar == f"{digest}  w.npz\n" and len(digest) == 64
    # Another valid weight file under the same name: readable, but not the checksummed one.
    save_variables(tmp_path / "other.npz", random_like(shapes_of(model), seed=9))
    (tmp_path / "other.npz").replace(tmp_path / "w.npz")
    with pytest.raises(CheckpointError) as info:
        load_variables(tmp_path / "w.npz", like=shapes_of(model))
    message = str(info.value)
    assert "does not match its checksum in w.npz.sha256" in message
    assert f"expected {digest[:12]}…" in message and "convert the weights again" in message
    assert "\n" not in message
    # Without the sidecar, the file loads (checksums are verified when present).
    (tmp_path / "w.npz.sha256").unlink()
    load_variables(tmp_path / "w.npz", like=shapes_of(model))


def test_bfloat16_and_float16_safetensors_load_exactly(tmp_path):
    import ml_dtypes
    import safetensors.numpy

    from protojax.nn.weights import read_state_dict

    rng = np.random.default_rng(3)
    full = rng.normal(size=(64, 3, 7, 7)).astype(np.float32)
    stored = {
        "conv1.weight": full.astype(ml_dtypes.bfloat16),
        "bn1.weight": rng.uniform(0.5, 1.5, 64).astype(np.float16),
        "bn1.num_batches_tracked": np.array(7, np.int64),
    }
    safetensors.numpy.save_file(stored, tmp_path / "half.safetensors")
    with open(tmp_path / "half.safetensors", "rb") as file:  # the file really holds BF16
        assert b'"dtype":"BF16"' in file.read(200)
    got = read_state_dict(tmp_path / "half.safetensors")
    assert got["conv1.weight"].dtype == got["bn1.weight"].dtype == np.float32
    assert got["bn1.num_batches_tracked"].dtype == np.int64
    # bfloat16 → float32 is exact: the values are the float32 ones with 16 mantissa bits cut.
    want = (full.view(np.uint32) + 0x7FFF + ((full.view(np.uint32) >> 16) & 1)) >> 16 << 16
    np.testing.assert_array_equal(got["conv1.weight"].view(np.uint32), want)
    assert np.max(np.abs(got["conv1.weight"] - full)) <= np.max(np.abs(full)) * 2**-8
    np.testing.assert_array_equal(got["bn1.weight"], stored["bn1.weight"].astype(np.float32))
    variables = torch_state_dict_to_variables(got)
    kernel = variables["params"]["conv1"]["kernel"]
    np.testing.assert_array_equal(kernel, got["conv1.weight"].transpose(2, 3, 1, 0))


def test_densenet_published_norm_dot_1_keys_map_like_the_class_names():
    """torchvision's published DenseNet files name `norm1` … `conv2` of each dense layer
    `norm.1` … `conv.2`; both spellings give the same variables."""
    import json
    import re

    from protojax.nn.weights import check_variables

    fixtures = ROOT / "tests" / "fixtures"
    sys.path.insert(0, str(fixtures))
    try:
        import make_backbone_fixtures
    finally:
        sys.path.remove(str(fixtures))
    with np.load(fixtures / "backbones" / "densenet121.npz") as data:
        meta = json.loads(str(data["meta"]))
    modern = make_backbone_fixtures.draw_state_dict(meta["manifest"], meta["seed"])
    published = {
        re.sub(r"(denselayer\d+\.(?:norm|conv))([12])\.", r"\1.\2.", k): v
        for k, v in modern.items()
    }
    assert "features.denseblock4.denselayer16.norm.2.running_var" in published
    assert "features.transition3.norm.weight" in published  # not a numbered norm: unchanged
    # 58 dense layers × (two norms of 5 tensors, two convs of 1).
    assert sum(bool(re.search(r"\.(norm|conv)\.[12]\.", k)) for k in published) == 58 * 12
    a = flatten_variables(torch_state_dict_to_variables(modern, family="densenet"))
    b = flatten_variables(torch_state_dict_to_variables(published, family="densenet"))
    assert sorted(a) == sorted(b)
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    assert "params/denseblock4/denselayer16/conv2/kernel" in b
    assert "batch_stats/transition3/norm/var" in b
    from protojax.nn import DenseNet

    config = {**meta["config"], "block_config": tuple(meta["config"]["block_config"])}
    like = jax.eval_shape(DenseNet(**config).init, jax.random.key(0), IMAGES)
    check_variables(b, flatten_variables(like), source="densenet121")


def test_donor_workdir_without_a_checkpoint_names_the_training_command(tmp_path):
    from protojax.nn.weights import load_backbone

    model = ResNet(BasicBlock, (1,))
    variables = {c: {"backbone": t} for c, t in shapes_of(model).items()}
    donor = tmp_path / "blackbox_run"
    donor.mkdir()
    (donor / "config.json").write_text("{}")  # a run that was set up but never saved a step
    for checkpoints in (None, "checkpoints", "checkpoints/3"):
        if checkpoints:
            (donor / checkpoints).mkdir()  # empty folders: no checkpoint with a state
        with pytest.raises(CheckpointError) as info:
            load_backbone(variables, donor, arch="resnet18")
        message = str(info.value)
        assert f"The run in {donor} has no checkpoint yet; train it first" in message
        assert f"--workdir={donor})" in message and "\n" not in message


def test_load_configured_backbone_reads_the_model_section(tmp_path):
    from protojax.nn import BackboneNet

    class Features(BackboneNet):
        def __call__(self, images):
            return self.backbone(images)

    net = Features("small_cnn", "imagenet", 3)
    fresh = net.init(jax.random.key(0), jnp.zeros((1, 12, 12, 3)))
    donor = net.init(jax.random.key(1), jnp.zeros((1, 12, 12, 3)))
    path = tmp_path / "backbone.npz"
    save_variables(path, {c: tree["backbone"] for c, tree in donor.items()})
    model = {"backbone": "small_cnn", "backbone_weights": "", "allow_random_init": False}
    assert load_configured_backbone(fresh, model) is fresh
    loaded = load_configured_backbone(fresh, {**model, "backbone_weights": str(path)})
    for got, want in zip(jax.tree.leaves(loaded), jax.tree.leaves(donor), strict=True):
        np.testing.assert_array_equal(got, want)
    missing = {**model, "allow_random_init": True}
    assert load_configured_backbone(fresh, missing, str(tmp_path / "none.npz")) is fresh
    with pytest.raises(CheckpointError, match="No backbone weights"):
        load_configured_backbone(fresh, model, str(tmp_path / "none.npz"))
