"""`import protojax` stays light: no TensorFlow, no PyTorch, and grain/tfds only lazily."""

import subprocess
import sys

CODE = """
import sys
import protojax
import protojax.config, protojax.data, protojax.nn, protojax.prototypes, protojax.train
import protojax.methods, protojax.methods.blackbox
loaded = [m for m in ("tensorflow", "torch", "grain", "tensorflow_datasets") if m in sys.modules]
print(",".join(loaded))
"""


def test_import_protojax_loads_no_heavy_frameworks():
    out = subprocess.run(
        [sys.executable, "-c", CODE], capture_output=True, text=True, check=True
    ).stdout.strip()
    assert out == "", f"imported at import time: {out}"


def test_model_code_runs_without_ml_collections_grain_tfds_or_sklearn():
    """As on accelerator images: only jax, flax, optax, orbax and chex are present."""
    code = """
import sys
for name in ("ml_collections", "grain", "tensorflow_datasets", "sklearn", "tensorflow", "torch"):
    sys.modules[name] = None
from protojax.config import ConfigDict
from protojax.data.specs import describe
from protojax.methods import build_method
import importlib.util
spec = importlib.util.spec_from_file_location("c", "experiments/configs/blackbox_digits.py")
module = importlib.util.module_from_spec(spec); spec.loader.exec_module(module)
config = module.get_config()
method = build_method(config, describe(config.data))
print(type(config).__module__, method.name)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["protojax.config", "blackbox"]
