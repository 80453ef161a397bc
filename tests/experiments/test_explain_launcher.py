"""The explain launcher on runs of methods it does not explain: exit 2, one sentence last,
before any checkpoint is read (a workdir holding only config.json suffices)."""

import json

import pytest

from protojax import config as config_lib


@pytest.mark.parametrize(
    "name, method, hint",
    [
        ("protovae_digits", "protovae", " (its decoded prototypes, reconstructions and latent PCA"),
        ("blackbox_digits", "blackbox", "."),
    ],
    ids=["protovae", "blackbox"],  # Pantypes takes ProtoVAE's branch
)
def test_other_methods_stop_with_the_supported_one_named(python, tmp_path, name, method, hint):
    config = config_lib.to_dict(config_lib.load_config(name))
    (tmp_path / "config.json").write_text(json.dumps(config))
    result = python("-m", "experiments.explain", f"--workdir={tmp_path}", "--num_images=2")
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    expected = (
        f"error: experiments.explain supports protopnet runs only; {tmp_path} is a {method} run"
    )
    assert last.startswith(expected + hint), last
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json"]
