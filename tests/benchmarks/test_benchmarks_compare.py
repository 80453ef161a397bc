"""What `benchmarks/compare.py` shares with the package: its protojax train-step builder, its
synthetic batches, and the alternated timing and ratio. It needs no torch; the PyTorch side
is not run here (CI has no torch)."""

import importlib.util
import pathlib
import sys

import jax
import numpy as np
import pytest

from protojax.config import load_config, set_value

_ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def compare():
    spec = importlib.util.spec_from_file_location("compare", _ROOT / "benchmarks" / "compare.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["compare"] = module  # its dataclass looks itself up there
    spec.loader.exec_module(module)
    return module


def test_synthetic_batch_follows_the_method_protocol(compare):
    batch = compare.synthetic_batch((8, 6, 3), 5, 4, seed=2)
    assert batch["image"].shape == (4, 8, 6, 3) and batch["image"].dtype == np.float32
    assert -1 <= batch["image"].min() and batch["image"].max() <= 1
    assert batch["label"].dtype == np.int32 and set(batch["label"]) <= set(range(5))
    np.testing.assert_array_equal(batch["index"], np.arange(4))
    assert batch["valid"].all()
    again = compare.synthetic_batch((8, 6, 3), 5, 4, seed=2)
    np.testing.assert_array_equal(batch["image"], again["image"])


def test_train_step_trains_the_named_phase(compare):
    """The step is the engine's: it advances the step counter, changes the trainable
    parameters of its phase only, and lowers the loss on a repeated batch."""
    config = load_config("protopnet_digits")
    set_value(config, "data.batch_size", 8)
    step, state, batch, method = compare.protojax_train_step(config, phase="warm")
    assert batch["image"].shape[0] == 8
    before = jax.tree.map(np.asarray, state.variables["params"])
    losses = []
    for _ in range(4):
        state, metrics = step(state)
        losses.append(float(metrics["loss"]))
    assert int(state.step) == 4
    after = state.variables["params"]
    # The warm phase trains the add-on layers and prototypes; the backbone stays frozen.
    assert not np.allclose(before["prototypes"], after["prototypes"])
    frozen = jax.tree.leaves(before["backbone"]), jax.tree.leaves(after["backbone"])
    assert all(np.array_equal(a, b) for a, b in zip(*frozen, strict=True))
    assert losses[-1] < losses[0]
    with pytest.raises(ValueError, match="No phase named 'nope'"):
        compare.protojax_train_step(config, phase="nope")


def test_alternate_interleaves_and_summarize_takes_medians(compare):
    order = []
    timing = compare.alternate(
        {"protojax": lambda: order.append("a"), "reference": lambda: order.append("b")},
        repeats=3,
        steps=2,
    )
    assert "".join(order) == "aabbaabbaabb"
    assert len(timing["load"]) == 3 and all(v >= 0 for v in timing["load"])
    for times in (timing["seconds"], timing["cpu_seconds"]):
        assert {k: len(v) for k, v in times.items()} == {"protojax": 6, "reference": 6}
    summary = compare.summarize({"protojax": [1.0, 3.0, 2.0], "reference": [4.0, 8.0, 6.0]}, 10)
    assert summary["protojax_s_median"] == 2.0 and summary["reference_s_median"] == 6.0
    assert summary["protojax_rate"] == 5.0 and summary["reference_rate"] == pytest.approx(1.667)
    assert summary["ratio"] == 3.0  # protojax three times as fast
