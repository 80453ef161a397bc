"""Gradient-support receptive fields against the arithmetic of a known conv stack."""

import flax.linen as nn
import jax
import numpy as np
import pytest

from protojax.nn.receptive_field import receptive_field_boxes

# (kernel, stride, padding) per layer of the stack below.
LAYERS = [(3, 1, 1), (3, 2, 1), (2, 2, 0), (3, 1, 0), (1, 1, 0)]
SIZE = (19, 22)


class Stack(nn.Module):
    @nn.compact
    def __call__(self, x):
        x = nn.relu(nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)))(x))
        x = nn.relu(nn.Conv(6, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))(x))
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        x = nn.relu(nn.Conv(6, (3, 3), padding="VALID")(x))
        return nn.sigmoid(nn.Conv(5, (1, 1))(x))


def arithmetic_interval(index: int, size: int) -> tuple[int, int]:
    """Input pixels [lo, hi) feeding output `index`, walking the layers backwards and
    clipping to each layer's real positions (padding holds no pixel)."""
    sizes = [size]
    for k, s, p in LAYERS:
        sizes.append((sizes[-1] + 2 * p - k) // s + 1)
    lo = hi = index
    for (k, s, p), n_in in zip(reversed(LAYERS), reversed(sizes[:-1])):
        lo, hi = max(lo * s - p, 0), min(hi * s - p + k - 1, n_in - 1)
    return lo, hi + 1


@pytest.fixture(scope="module")
def stack():
    module = Stack()
    # NumPy weights: no random-number compile for a test of structure.
    shapes = jax.eval_shape(module.init, jax.random.key(0), np.zeros((1, *SIZE, 2), np.float32))
    rng = np.random.default_rng(0)
    variables = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) / 3, shapes)
    return jax.tree_util.Partial(lambda v, x: module.apply(v, x), variables)


def test_boxes_equal_the_arithmetic_receptive_fields(stack):
    boxes = receptive_field_boxes(stack, (*SIZE, 2), num_probes=3)
    h, w = boxes.shape[:2]
    assert (h, w) == (3, 3)  # 19 → 19 → 10 → 5 → 3 and 22 → 22 → 11 → 5 → 3
    for i in range(h):
        for j in range(w):
            (y0, y1), (x0, x1) = arithmetic_interval(i, SIZE[0]), arithmetic_interval(j, SIZE[1])
            expected = (y0, x0, y1, x1)
            np.testing.assert_array_equal(boxes[i, j], expected, err_msg=f"location {(i, j)}")
    # By hand, latent (0, 0): 1×1 → [0, 0]; 3×3 valid → [0, 2]; pool 2/2 → [0, 5];
    # 3×3/2 pad 1 → [0, 11]; 3×3 pad 1 → [0, 12], so pixels [0, 13) on both axes.
    np.testing.assert_array_equal(boxes[0, 0], [0, 0, 13, 13])
    # The last row of latents reaches the bottom of the 19-pixel image.
    assert boxes[2, 0, 2] == 19


def test_results_are_cached_per_architecture_and_size(stack):
    traces = []

    def counted(x):
        traces.append(1)
        return stack(x)

    first = receptive_field_boxes(counted, (*SIZE, 2), cache_key="stack-test")
    count = len(traces)
    again = receptive_field_boxes(counted, (*SIZE, 2), cache_key="stack-test")
    assert len(traces) == count and count > 0  # served from the cache: not even traced
    np.testing.assert_array_equal(first, again)
    other = receptive_field_boxes(counted, (*SIZE, 2), cache_key="another-architecture")
    assert len(traces) > count
    np.testing.assert_array_equal(first, other)
