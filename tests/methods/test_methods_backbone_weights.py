"""The paper's ProtoPNet backbones in the 224-px configs (`protopnet_cub:ARCH`), and a
`protopnet_cub` training step seeded from a converted torchvision fixture."""

import importlib.util
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy
import tensorflow_datasets as tfds

from experiments import cli
from experiments.convert_weights import convert
from protojax.config import load_config, set_value
from protojax.data.specs import describe
from protojax.errors import CheckpointError, UsageError
from protojax.methods import build_method
from protojax.nn import backbone_by_name, feature_channels
from protojax.nn.protopnet import ProtoPNetModule
from protojax.nn.weights import flatten_variables, read_donor_backbone, save_variables
from protojax.runs import train as train_run
from protojax.train import make_data_mesh

FIXTURES = pathlib.Path(__file__).resolve().parents[1] / "fixtures"


def fixture_module():
    spec = importlib.util.spec_from_file_location(
        "make_backbone_fixtures", FIXTURES / "make_backbone_fixtures.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# The paper's CUB backbones and their prototype depth: the official settings.py default
# (VGG-19, D = 128) and the ensemble notebook's members (ResNet-34 256, DenseNet-121 128).
@pytest.mark.parametrize(
    "config_name, arch, depth",
    [
        ("protopnet_cub:vgg19", "vgg19", 128),
        ("protopnet_cub", "resnet34", 256),
        ("protopnet_cub:densenet121", "densenet121", 128),
        ("protopnet_cars:vgg19", "vgg19", 128),
    ],
)
def test_paper_backbones_build_at_224(config_name, arch, depth):
    config = load_config(config_name)
    m = config.model
    assert (m.backbone, m.prototype_dim, m.add_on_layers) == (arch, depth, "regular")
    assert m.backbone_weights == f"weights/{arch}_imagenet.npz"
    assert config.data.image_size == 224 and config.data.normalization == "imagenet"
    method = build_method(config, describe(config.data))
    images = jax.ShapeDtypeStruct((1, 224, 224, 3), jnp.float32)
    variables = jax.eval_shape(method.init, jax.random.key(0), {"image": images})
    classes = 200 if "cub" in config_name else 196
    assert variables["params"]["prototypes"].shape == (classes * 10, depth)
    # Official regular add-on: 1×1 conv from the backbone's channels to D, then D → D.
    add_on = variables["params"]["add_on"]
    kernels = [add_on[name]["kernel"].shape for name in sorted(add_on)]
    assert kernels == [(1, 1, feature_channels(arch), depth), (1, 1, depth, depth)]
    latent = jax.eval_shape(
        lambda v, x: method.net.apply(v, x, method=ProtoPNetModule.latent), variables, images
    )
    assert latent.shape == (1, 7, 7, depth)  # the official 7×7 grid at 224 px
    # A file from `convert_weights --arch=ARCH` (checked against backbone_by_name) fits the
    # method's backbone scope exactly.
    alone = jax.eval_shape(backbone_by_name(arch).init, jax.random.key(0), images)
    for collection, tree in alone.items():
        want = {k: v.shape for k, v in flatten_variables(tree).items()}
        got = {k: v.shape for k, v in flatten_variables(variables[collection]["backbone"]).items()}
        assert got == want


def test_config_argument_errors_and_workdir_name():
    with pytest.raises(UsageError, match="Unknown ProtoPNet backbone 'vgg17'.*vgg19"):
        load_config("protopnet_cub:vgg17")
    with pytest.raises(UsageError, match="blackbox_digits takes no argument"):
        load_config("blackbox_digits:vgg19")
    config, name = cli.load_config("protopnet_cars:densenet121", [("model.prototype_dim", "64")])
    assert name == "protopnet_cars_densenet121"
    assert config.model.backbone == "densenet121" and config.model.prototype_dim == 64


def test_protopnet_cub_step_from_a_converted_torchvision_fixture(tmp_path):
    """A user's torchvision ResNet-18 `.safetensors` file, converted by the launcher's
    `convert`, seeds `protopnet_cub`'s backbone; one warm step leaves the frozen backbone's
    weights equal to the file's while its BatchNorm statistics move (official train mode)."""
    fixtures = fixture_module()
    with np.load(FIXTURES / "backbones" / "resnet18.npz") as data:
        meta = json.loads(str(data["meta"]))
    state_dict = fixtures.draw_state_dict(meta["manifest"], meta["seed"])
    safetensors.numpy.save_file(state_dict, tmp_path / "resnet18.safetensors")
    weights = tmp_path / "resnet18_imagenet.npz"
    convert(arch="resnet18", torch_checkpoint=tmp_path / "resnet18.safetensors", out=weights)
    assert (tmp_path / "resnet18_imagenet.npz.sha256").is_file()

    config = load_config("protopnet_cub")
    for key, value in {
        "model.backbone": "resnet18",
        "model.backbone_weights": str(weights),
        "data.image_size": 32,
        "data.batch_size": 8,
        "data.eval_batch_size": 8,
        "model.push_batch_size": 8,
        "model.save_prototype_images": False,
        "train.stop_after_steps": 1,
        "train.progress": False,
    }.items():
        set_value(config, key, value)
    with tfds.testing.mock_data(num_examples=8, policy=tfds.testing.MockPolicy.USE_CODE):
        train_run(config, tmp_path / "run", make_data_mesh(jax.devices()[:1]))

    trained = read_donor_backbone(tmp_path / "run")
    with np.load(weights) as data:
        converted = dict(data)
    params = flatten_variables(trained["params"])
    stats = flatten_variables(trained["batch_stats"])
    assert len(params) + len(stats) == len(converted)
    assert converted["params/conv1/kernel"].shape == (7, 7, 3, 64)
    for key, value in params.items():
        np.testing.assert_array_equal(value, converted[f"params/{key}"])
    # The statistics, of the same keys, moved with the batch (official train mode).
    for key, value in stats.items():
        assert not np.array_equal(value, converted[f"batch_stats/{key}"]), key


def test_black_box_loads_backbone_weights_and_keeps_its_head(tmp_path, caplog):
    config = load_config("blackbox_digits")
    set_value(config, "data.image_size", 8)
    method = build_method(config, describe(config.data))
    fresh = method.init(jax.random.key(0), {"image": np.zeros((2, 8, 8, 1), np.float32)})
    assert method.load_pretrained(fresh) is fresh  # no weights configured: from scratch

    weights = tmp_path / "small_cnn.npz"
    set_value(config, "model.backbone_weights", str(weights))
    method = build_method(config, describe(config.data))
    with pytest.raises(CheckpointError, match=r"No backbone weights at .*small_cnn\.npz.*"
                       r"--arch=small_cnn.*allow_random_init"):  # fmt: skip
        method.load_pretrained(fresh)

    rng = np.random.default_rng(1)
    saved = {
        c: jax.tree.map(lambda a: rng.normal(size=a.shape).astype(np.float32), fresh[c]["backbone"])
        for c in ("params", "batch_stats")
    }
    save_variables(weights, saved)
    loaded = method.load_pretrained(fresh)
    for collection in ("params", "batch_stats"):
        got = flatten_variables(loaded[collection]["backbone"])
        want = flatten_variables(saved[collection])
        assert sorted(got) == sorted(want)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key])
    for key in ("kernel", "bias"):  # the head keeps its fresh initialisation
        np.testing.assert_array_equal(loaded["params"]["head"][key], fresh["params"]["head"][key])

    # Weights of a shallower backbone stop with one sentence naming the first missing key.
    set_value(config, "model.backbone", "small_cnn_wide")
    message = load_error(config, (2, 8, 8, 1))
    assert "small_cnn.npz lacks 'batch_stats/BatchNorm_4/mean', which the model needs" in message
    assert "10 of 30 keys differ; 10 missing" in message and "\n" not in message

    set_value(config, "model.backbone", "small_cnn")
    set_value(config, "model.backbone_weights", str(tmp_path / "absent.npz"))
    set_value(config, "model.allow_random_init", True)
    method = build_method(config, describe(config.data))
    with caplog.at_level("WARNING", logger="protojax"):
        assert method.load_pretrained(fresh) is fresh
    assert "No backbone weights at" in caplog.text


def load_error(config, image_shape) -> str:
    """The one-sentence CheckpointError of `load_pretrained` on the config's fresh variables."""
    method = build_method(config, describe(config.data))
    variables = jax.eval_shape(
        method.init, jax.random.key(0), {"image": np.zeros(image_shape, np.float32)}
    )
    with pytest.raises(CheckpointError) as info:
        method.load_pretrained(variables)
    return str(info.value)


@pytest.mark.parametrize(
    "name, arch", [("protopnet_cub", "resnet34"), ("infodisent_cub", "resnet50")]
)
def test_big_configs_need_their_weights_file(tmp_path, name, arch):
    """Without the converted weights a fine-grained config stops with one sentence naming the
    file, the conversion command and the opt-out."""
    config = load_config(name)
    set_value(config, "data.image_size", 32)
    set_value(config, "model.backbone_weights", str(tmp_path / f"{arch}_imagenet.npz"))
    message = load_error(config, (1, 32, 32, 3))
    assert str(tmp_path / f"{arch}_imagenet.npz") in message
    assert f"python -m experiments.convert_weights --arch={arch}" in message
    assert "model.allow_random_init=True" in message
