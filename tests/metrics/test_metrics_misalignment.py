"""The spatial-misalignment benchmark on a toy prototype whose response is hand-computable."""

import jax
import jax.numpy as jnp
import numpy as np

from protojax.metrics import spatial_misalignment

_Y, _X = np.mgrid[0:16, 0:16]
_BUMP = np.exp(-((_Y - 4.0) ** 2 + (_X - 4.0) ** 2) / 4.0).astype(np.float32)


def _activations(images):
    # Prototype 0 (class 0): a fixed bump scaled by the image's mean, so every pixel, inside
    # its box or not, moves it (a non-local prototype). Prototype 1 (class 1): constant 0.3.
    b = images.shape[0]
    mean = jnp.mean(images, axis=(1, 2, 3))
    first = jnp.asarray(_BUMP)[None] * mean[:, None, None]
    second = jnp.full((b, 16, 16), 0.3)
    maps = jnp.stack([first, second], axis=-1)
    logits = jnp.max(maps, axis=(1, 2))
    return logits, maps


def test_spatial_misalignment_hand_case():
    images = np.full((2, 16, 16, 1), 0.5, np.float32)
    result = spatial_misalignment(
        jax.tree_util.Partial(_activations),
        images,
        np.array([0, 0]),
        np.array([0, 1]),
        rng=jax.random.PRNGKey(0),
        margin=1,
        random_start=False,
    )
    hot = _BUMP >= np.percentile(_BUMP, 95)
    rows, cols = np.flatnonzero(hot.any(1)), np.flatnonzero(hot.any(0))
    box = [rows[0] - 1, cols[0] - 1, rows[-1] + 2, cols[-1] + 2]
    np.testing.assert_array_equal(result.box, [box, box])
    free = 1 - (box[2] - box[0]) * (box[3] - box[1]) / 256
    # 40 signed steps of 0.01 lower every free pixel by ε = 0.4: the mean falls by 0.4·free.
    after = 0.5 - 0.4 * free
    np.testing.assert_allclose(result.per_example, 100 * (1 - after / 0.5), rtol=1e-4)
    np.testing.assert_array_equal(result.top_prototype, [0, 0])
    np.testing.assert_array_equal(result.prc, [1.0, 1.0])  # 0.3 now beats the top prototype
    np.testing.assert_allclose(result.plc, [0.0, 0.0])  # the bump stays where it was
    assert float(result.accuracy_before) == 1.0 and float(result.accuracy_after) == 0.0
    inside = np.zeros((16, 16), bool)
    inside[box[0] : box[2], box[1] : box[3]] = True
    np.testing.assert_array_equal(result.adversarial[0, inside], 0.5)
    np.testing.assert_allclose(result.adversarial[0, ~inside], 0.1, rtol=1e-5)


def test_no_steps_change_nothing():
    images = np.random.default_rng(0).uniform(size=(2, 16, 16, 1)).astype(np.float32)
    result = spatial_misalignment(
        jax.tree_util.Partial(_activations),
        images,
        np.array([0, 1]),
        np.array([0, 1]),
        rng=jax.random.PRNGKey(0),
        iterations=0,
        random_start=False,
    )
    np.testing.assert_allclose(result.per_example, 0.0, atol=1e-5)
    np.testing.assert_array_equal(result.prc, 0.0)
    np.testing.assert_allclose(result.plc, 0.0)
    assert float(result.accuracy_before) == float(result.accuracy_after)
