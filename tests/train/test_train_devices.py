"""One data-parallel path for every device count: the same run on 1 and 4 devices, and on
two processes of 2 devices each, ends with the same parameters."""

import json
import os
import pathlib
import socket
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.methods import build_method
from protojax.runs import train as train_run
from protojax.train import make_data_mesh
from protojax.train.loop import restore_variables

ROOT = pathlib.Path(__file__).resolve().parents[2]


def small_config(steps, batch_size=32):
    """8-px digits; `steps` > 0 stops there, 0 trains the whole (single) epoch."""
    config = load_config("blackbox_digits")
    for key, value in [
        ("data.image_size", 8),
        ("data.batch_size", batch_size),
        ("data.eval_batch_size", 128),
        ("train.epochs", 1),
        ("train.stop_after_steps", steps),
        ("train.progress", False),
        ("train.log_every_steps", 5),
    ]:
        set_value(config, key, value)
    return config


def assert_close_per_leaf(a, b, rtol=1e-5):
    """Each leaf agrees within rtol relative: ‖x − y‖ ≤ rtol · ‖x‖ (Frobenius norms)."""
    for (path, x), (_, y) in zip(
        jax.tree_util.tree_flatten_with_path(a)[0], jax.tree_util.tree_flatten_with_path(b)[0]
    ):
        x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
        error, scale = np.linalg.norm(x - y), max(np.linalg.norm(x), 1e-12)
        assert error <= rtol * scale, (jax.tree_util.keystr(path), error / scale)


@pytest.fixture(scope="module")
def digits8():
    return load_digits(image_size=8)


@pytest.fixture(scope="module")
def four_device_params(tmp_path_factory, digits8):
    config = small_config(10)
    workdir = tmp_path_factory.mktemp("four")
    train_run(config, workdir, make_data_mesh(jax.devices()[:4]), dataset=digits8)
    method = build_method(config, digits8)
    return restore_variables(method, config, digits8, workdir)


def test_one_and_four_devices_give_the_same_parameters(tmp_path, digits8, four_device_params):
    config = small_config(10)
    train_run(config, tmp_path, make_data_mesh(jax.devices()[:1]), dataset=digits8)
    one = restore_variables(build_method(config, digits8), config, digits8, tmp_path)
    assert_close_per_leaf(one, four_device_params)


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class PredictionFigure:
    """A figure as methods make them: a pass over the test split on the mesh (collective
    where the mesh spans processes), its results brought to NumPy on every process, and the
    figure written by the main process."""

    def figures(self, variables, ctx):
        import matplotlib.pyplot as plt

        predict = jax.jit(lambda v, x: jnp.argmax(self.predict(v, x), axis=-1))
        predicted = np.concatenate(
            [
                ctx.host(predict(variables, batch["image"]))[ctx.host(batch["valid"])]
                for batch in ctx.ordered_batches("test")
            ]
        )
        counts = np.bincount(predicted, minlength=self.num_classes)
        print("predicted per class", jax.process_index(), counts.tolist(), flush=True)
        fig, ax = plt.subplots()
        ax.bar(range(self.num_classes), counts)
        return [ctx.save_figure(fig, "predicted.png")]


WORKER = """
import sys
import jax
jax.distributed.initialize(
    coordinator_address=sys.argv[1], num_processes=2, process_id=int(sys.argv[2])
)
sys.path.insert(0, sys.argv[4])
from test_train_devices import PredictionFigure, small_config  # noqa: E402
from protojax.data.digits import load_digits
from protojax.methods.blackbox import BlackBox
from protojax.train import make_data_mesh, run

class Method(PredictionFigure, BlackBox):
    pass

assert jax.process_count() == 2 and len(jax.devices()) == 4 and len(jax.local_devices()) == 2
config, digits = small_config(0, batch_size=256), load_digits(image_size=8)
run(Method(config, digits), config, sys.argv[3], make_data_mesh(), dataset=digits)
print("done", jax.process_index())
"""


def test_two_processes_match_one_process_with_four_devices(tmp_path, digits8):
    """jax.distributed on loopback with JAX's default (gloo) CPU collectives, as the launcher
    leaves them: 2 processes × 2 devices each train one epoch of 5 steps, evaluate, and make a
    figure from a pass over the test split; only process 0 writes the records and figures."""
    address = f"127.0.0.1:{_free_port()}"
    workdir = tmp_path / "two"
    env = {
        **os.environ,
        "XLA_FLAGS": "--xla_force_host_platform_device_count=2",
        "JAX_PLATFORMS": "cpu",
        "PYTHONPATH": str(ROOT),
    }
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                WORKER,
                address,
                str(i),
                str(workdir),
                str(ROOT / "tests/train"),
            ],
            env=env,
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [p.communicate(timeout=300)[0] for p in procs]
    for i, (proc, out) in enumerate(zip(procs, outputs)):
        assert proc.returncode == 0, f"process {i} failed:\n{out[-3000:]}"
        assert f"done {i}" in out
    config = small_config(0, batch_size=256)
    single = tmp_path / "single"
    summary = train_run(config, single, make_data_mesh(jax.devices()[:4]), dataset=digits8)
    method = build_method(config, digits8)
    expected = restore_variables(method, config, digits8, single)
    got = restore_variables(method, config, digits8, workdir)
    assert_close_per_leaf(got, expected)
    two = json.loads((workdir / "summary.json").read_text())
    assert two["steps"] == summary["steps"] == 5
    assert two["test_accuracy"] == pytest.approx(summary["test_accuracy"], abs=1 / 360)
    # Each process gathered all 360 test predictions; they agree with a NumPy argmax of
    # the final model on the test images.
    test = digits8.split("test")
    batch = test.get_batch(np.arange(len(test)))
    predicted = np.argmax(np.asarray(method.predict(got, batch["image"])), axis=1)
    counts = np.bincount(predicted, minlength=10).tolist()
    for i, out in enumerate(outputs):
        assert f"predicted per class {i} {counts}" in out
    assert "figures/predicted.png" in two["figures"]
    assert (workdir / "figures" / "predicted.png").stat().st_size > 1000
    kinds = [
        json.loads(line)["kind"] for line in (workdir / "metrics.jsonl").read_text().splitlines()
    ]
    assert kinds == ["train", "epoch", "summary"], "only process 0 writes metrics.jsonl"
