"""Concept maps and superpixelification against hand-made activations and NumPy loops."""

import jax
import jax.numpy as jnp
import numpy as np

from protojax.explain.concepts import (
    apply_concepts,
    best_segment_iou,
    concept_features,
    concept_maps,
    fit_concepts,
    superpixelify,
)


def halves(images):
    """Two layers whose vectors differ between the left and right halves (and a 'stripe'
    column in the coarse layer) with very different scales, so normalisation matters."""
    b, h, w, _ = images.shape
    fine = np.zeros((b, h, w, 2), np.float32)
    fine[:, :, : w // 2, 0] = 100.0
    fine[:, :, w // 2 :, 1] = 100.0
    coarse = np.zeros((b, h // 2, w // 2, 3), np.float32)
    coarse[..., 2] = 0.01
    return {"fine": jnp.asarray(fine), "coarse": jnp.asarray(coarse)}


def test_features_are_unit_norm_per_layer_and_resized_to_the_grid():
    maps = halves(jnp.zeros((2, 8, 8, 1)))
    features = concept_features(maps, grid=(8, 8), layers=("fine", "coarse"))
    assert features.shape == (2, 8, 8, 5)
    np.testing.assert_allclose(np.linalg.norm(features[..., :2], axis=-1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(features[..., 2:], axis=-1), 1.0, rtol=1e-6)
    # A constant coarse map stays constant when upsampled: [0, 0, 1] after normalisation.
    np.testing.assert_allclose(features[..., 2:], np.broadcast_to([0, 0, 1], (2, 8, 8, 3)))


def test_concept_maps_split_the_halves_at_the_image_size():
    images = jnp.zeros((3, 16, 16, 1))
    result = concept_maps(halves, images, k=2, rng=jax.random.key(0), grid=(8, 8))
    assert result.labels.shape == (3, 16, 16) and result.labels.dtype == jnp.int32
    assert result.grid_labels.shape == (3, 8, 8) and result.centroids.shape == (3, 2, 5)
    for labels in np.asarray(result.labels):
        left, right = labels[:, :8], labels[:, 8:]
        assert len(np.unique(left)) == 1 and len(np.unique(right)) == 1
        assert left[0, 0] != right[0, 0]


def test_dataset_concepts_give_the_same_label_to_the_same_part_everywhere():
    def parts(images):
        # Image i has its "object" (feature [0, 1]) at rows i..i+3, background ([1, 0]) elsewhere.
        b, h, w, _ = images.shape
        maps = np.zeros((b, h, w, 2), np.float32)
        maps[..., 0] = 1.0
        for i in range(b):
            maps[i, i : i + 4, :, :] = (0.0, 1.0)
        return {"layer": jnp.asarray(maps)}

    images = jnp.zeros((4, 8, 8, 1))
    concepts = fit_concepts(parts, images, k=2, rng=jax.random.key(1), pixels_per_image=40)
    assert concepts.centroids.shape == (2, 2) and concepts.grid == (8, 8)
    result = apply_concepts(concepts, parts, images)
    object_label = int(result.labels[0, 0, 0])
    for i in range(4):
        assert np.all(np.asarray(result.labels[i, i : i + 4]) == object_label)
        background = np.delete(np.asarray(result.labels[i]), np.arange(i, i + 4), axis=0)
        assert np.all(background == 1 - object_label)


def test_superpixelify_is_the_mean_within_each_segment():
    rng = np.random.default_rng(0)
    saliency = rng.normal(size=(2, 6, 5)).astype(np.float32)
    labels = rng.integers(0, 4, size=(2, 6, 5))
    expected = np.empty_like(saliency)
    for b in range(2):
        for segment in np.unique(labels[b]):
            inside = labels[b] == segment
            expected[b][inside] = saliency[b][inside].mean()
    got = superpixelify(jnp.asarray(saliency), jnp.asarray(labels))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_best_segment_iou_picks_the_segment_that_best_covers_the_mask():
    labels = np.zeros((2, 4, 4), np.int32)
    labels[0, :2] = 1  # segment 1: the top half
    labels[1, :, :1] = 2  # segment 2: the first column
    masks = np.zeros((2, 4, 4), bool)
    masks[0, :2, :3] = True  # 6 pixels inside the 8 of segment 1: IoU 6 / 8
    masks[1, :, :2] = True  # 4 of segment 2's 4 pixels, union 8: IoU 0.5; segment 0: 4 / 16
    np.testing.assert_allclose(best_segment_iou(labels, masks), [0.75, 0.5])
