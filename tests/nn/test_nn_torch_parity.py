"""Parity with PyTorch: random-init reference ResNets converted by the launcher's `convert`
give the same eval-mode layer4 maps in Flax (skipped when torch is absent)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

torch = pytest.importorskip("torch")

from experiments.convert_weights import convert  # noqa: E402
from protojax.errors import CheckpointError, ProtojaxError  # noqa: E402
from protojax.nn import backbone_by_name  # noqa: E402
from protojax.nn.torch_reference import import_torchvision, torch_resnet  # noqa: E402
from protojax.nn.weights import load_variables  # noqa: E402

try:  # the real ResNet class, imported through the shim
    import_torchvision()
except ProtojaxError:
    pytest.skip("torchvision is not installed", allow_module_level=True)

SEEDS = {"resnet18": 11, "resnet50": 12}


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """arch → the .npz written by `convert(..., random_init=True)`."""
    directory = tmp_path_factory.mktemp("weights")
    return {
        arch: convert(arch=arch, out=directory / f"{arch}.npz", random_init=True, seed=seed).path
        for arch, seed in SEEDS.items()
    }


@pytest.mark.parametrize("arch", list(SEEDS))
def test_eval_outputs_match_torch_at_64px(arch, converted):
    model = backbone_by_name(arch)
    images = np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32)
    like = jax.eval_shape(model.init, jax.random.key(0), jnp.asarray(images))
    variables = load_variables(converted[arch], like=like)
    got = np.asarray(jax.jit(model.apply)(variables, images), np.float64)
    reference = torch_resnet(arch, seed=SEEDS[arch], randomize_batch_norm=True)
    with torch.no_grad():
        want = reference.features(torch.from_numpy(images.transpose(0, 3, 1, 2)))
    want = want.numpy().transpose(0, 2, 3, 1).astype(np.float64)
    assert got.shape == want.shape == (2, 2, 2, 512 if arch == "resnet18" else 2048)
    assert np.abs(want).max() > 0.1  # a non-trivial map
    assert np.max(np.abs(got - want)) / np.max(np.abs(want)) < 1e-4


def test_checkpoint_file_converts_like_random_init(converted, tmp_path):
    reference = torch_resnet("resnet18", seed=SEEDS["resnet18"], randomize_batch_norm=True)
    # A training checkpoint: wrapped in 'state_dict', with DataParallel's 'module.' prefix.
    state = {f"module.{k}": v for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "ckpt.pth")
    result = convert(
        arch="resnet18", torch_checkpoint=tmp_path / "ckpt.pth", out=tmp_path / "w.npz"
    )
    assert result.num_params == 11_689_512 - 513_000  # torchvision's count without fc
    assert result.num_torch_tensors == len(state)
    with np.load(result.path) as got, np.load(converted["resnet18"]) as want:
        assert sorted(got.files) == sorted(want.files)
        for key in got.files:
            np.testing.assert_array_equal(got[key], want[key])


def test_checkpoint_of_another_depth_or_garbage_is_an_error(tmp_path):
    torch.save(torch_resnet("resnet18").state_dict(), tmp_path / "r18.pth")
    with pytest.raises(CheckpointError, match=r"r18.pth lacks 'batch_stats/layer1_2/bn1/mean'"):
        convert(arch="resnet34", torch_checkpoint=tmp_path / "r18.pth", out=tmp_path / "w.npz")
    assert not (tmp_path / "w.npz").exists()
    (tmp_path / "bad.pth").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="Cannot read .*bad.pth as a torch state_dict"):
        convert(arch="resnet18", torch_checkpoint=tmp_path / "bad.pth", out=tmp_path / "w.npz")
