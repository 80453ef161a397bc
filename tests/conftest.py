"""Test set-up: 4 host CPU devices and a persistent compilation cache, before JAX starts."""

import os
import pathlib
import subprocess
import sys

_ROOT = pathlib.Path(__file__).resolve().parent.parent
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=4"
).strip()
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(_ROOT / ".jax_cache"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import jax  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)


import pytest  # noqa: E402


def _python(*args, env=None, merged=False, timeout=600):
    """Runs `python ARGS` from the repository root on the default single CPU device; with
    `merged`, stdout holds stderr too, interleaved as a terminal shows them."""
    return subprocess.run(
        [sys.executable, *args],
        cwd=_ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merged else subprocess.PIPE,
        text=True,
        env={**os.environ, "XLA_FLAGS": "", **(env or {})},
        timeout=timeout,
    )


@pytest.fixture(scope="session")
def python():
    """`python(*args, env=None, merged=False, timeout=600)`: a subprocess of this Python."""
    return _python
