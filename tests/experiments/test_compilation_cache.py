"""The launchers' persistent compilation cache: where it goes, how to move or switch it off."""

import os

import jax
import pytest

from experiments import cli


@pytest.fixture
def restore_jax_cache_config():
    saved = {
        name: getattr(jax.config, name)
        for name in ("jax_compilation_cache_dir", "jax_persistent_cache_min_compile_time_secs")
    }
    yield
    for name, value in saved.items():
        jax.config.update(name, value)


@pytest.mark.usefixtures("restore_jax_cache_config")
def test_default_is_the_user_cache_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    monkeypatch.delenv("PROTOJAX_COMPILATION_CACHE", raising=False)
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    expected = os.path.join(tmp_path, ".cache", "protojax", "jax")
    assert cli.enable_compilation_cache() == expected
    assert os.path.isdir(expected) and jax.config.jax_compilation_cache_dir == expected
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cli.enable_compilation_cache() == os.path.join(tmp_path, "xdg", "protojax", "jax")


@pytest.mark.usefixtures("restore_jax_cache_config")
def test_env_overrides_and_switch_off(tmp_path, monkeypatch):
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "mine"))
    assert cli.enable_compilation_cache() == str(tmp_path / "mine")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "mine")
    before = jax.config.jax_compilation_cache_dir
    for off in ("0", "off", "false"):
        monkeypatch.setenv("PROTOJAX_COMPILATION_CACHE", off)
        monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "other"))
        assert cli.enable_compilation_cache() is None
        assert jax.config.jax_compilation_cache_dir == before
        assert not (tmp_path / "other").exists()


@pytest.mark.usefixtures("restore_jax_cache_config")
def test_an_unwritable_folder_leaves_the_cache_off(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    monkeypatch.delenv("PROTOJAX_COMPILATION_CACHE", raising=False)
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(blocker / "jax"))
    before = jax.config.jax_compilation_cache_dir
    assert cli.enable_compilation_cache() is None
    assert jax.config.jax_compilation_cache_dir == before
