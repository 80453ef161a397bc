"""Channel explanations against naive loops: top channels by contribution, each channel's
extremes, its top-activating images, and locations mapped to boxes."""

import jax.numpy as jnp
import numpy as np

from protojax.explain import channels


def test_top_channels_match_a_naive_loop():
    rng = np.random.default_rng(0)
    values = rng.normal(size=(3, 6)).astype(np.float32)
    weights = np.abs(rng.normal(size=(6, 4))).astype(np.float32)
    positive = rng.integers(0, 5, size=(3, 6, 2))
    negative = rng.integers(0, 5, size=(3, 6, 2))
    classes = np.array([2, 0, 3])
    top = channels.top_channels(values, positive, negative, weights, classes, k=2)
    for b in range(3):
        scored = sorted(range(6), key=lambda d: -values[b, d] * weights[d, classes[b]])[:2]
        assert top.channels[b].tolist() == scored
        for j, d in enumerate(scored):
            np.testing.assert_allclose(
                top.contributions[b, j], values[b, d] * weights[d, classes[b]]
            )
            assert top.values[b, j] == values[b, d] and top.weights[b, j] == weights[d, classes[b]]
            assert top.positive_locations[b, j].tolist() == positive[b, d].tolist()
            assert top.negative_locations[b, j].tolist() == negative[b, d].tolist()


def test_channel_extremes_and_top_activating_match_numpy():
    rng = np.random.default_rng(1)
    maps = rng.normal(size=(5, 3, 4, 6)).astype(np.float32)
    shown = np.array([4, 1])
    ext = channels.channel_extremes(jnp.asarray(maps), shown)
    for b in range(5):
        for s, c in enumerate(shown):
            m = maps[b, :, :, c]
            assert ext.positive[b, s] == max(m.max(), 0) and ext.negative[b, s] == max(-m.min(), 0)
            assert tuple(ext.positive_locations[b, s]) == np.unravel_index(m.argmax(), m.shape)
            assert tuple(ext.negative_locations[b, s]) == np.unravel_index(m.argmin(), m.shape)
    gallery = channels.top_activating(ext, k=2)
    for s in range(2):
        order = np.argsort(-np.asarray(ext.positive[:, s]), kind="stable")[:2]
        assert gallery.indices[s].tolist() == order.tolist()
        np.testing.assert_array_equal(
            gallery.locations[s], np.asarray(ext.positive_locations)[order, s]
        )
    negative = channels.top_activating(ext, k=1, negative=True)
    assert negative.indices[:, 0].tolist() == np.argmax(np.asarray(ext.negative), axis=0).tolist()


def test_location_boxes_index_the_box_grid():
    boxes = np.arange(2 * 3 * 4).reshape(2, 3, 4)
    assert channels.location_boxes(np.array([[1, 2], [0, 0]]), boxes).tolist() == [
        boxes[1, 2].tolist(),
        boxes[0, 0].tolist(),
    ]
