"""Deletion and insertion curves: a hand-computed case and a naive loop over the steps."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.metrics import deletion_curve, insertion_curve, perturbation_curve
from protojax.metrics.faithfulness import _curve_scores


def _pixel_sum(images):
    return images.sum(axis=(1, 2, 3))


# One 2 × 2 image with pixel values 1, 2 / 3, 4 (sum 10); the saliency ranks (0, 1) first,
# then (1, 0), (0, 0), (1, 1).
_IMAGE = np.array([[1.0, 2.0], [3.0, 4.0]], np.float32)[None, :, :, None]
_SALIENCY = np.array([[0.5, 0.9], [0.7, 0.1]], np.float32)[None]


def test_deletion_and_insertion_hand_case():
    deletion = perturbation_curve(_pixel_sum, _IMAGE, _SALIENCY, mode="deletion", steps=4)
    # Removing 2, 3, 1, 4 in turn: 10, 8, 5, 4, 0.
    np.testing.assert_allclose(deletion.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(deletion.scores, [[10, 8, 5, 4, 0]])
    # Trapezoids of width 1/4: (9 + 6.5 + 4.5 + 2) / 4 = 5.5.
    np.testing.assert_allclose(deletion.per_example, [5.5])
    np.testing.assert_allclose(deletion.aggregate, 5.5)
    # Inserting 2, 3, 1, 4 into zeros: 0, 2, 5, 6, 10; AUC (1 + 3.5 + 5.5 + 8) / 4 = 4.5.
    insertion = insertion_curve(_pixel_sum, _IMAGE, _SALIENCY, steps=4)
    np.testing.assert_allclose(insertion.scores, [[0, 2, 5, 6, 10]])
    np.testing.assert_allclose(insertion.fractions, [0, 0.25, 0.5, 0.75, 1])
    np.testing.assert_allclose(insertion.per_example, [4.5])
    np.testing.assert_allclose(insertion.aggregate, 4.5)
    # fill = 1: each removed pixel becomes 1: 10, 9, 7, 7, 4; AUC (9.5 + 8 + 7 + 5.5) / 4 = 7.5.
    with_fill = deletion_curve(_pixel_sum, _IMAGE, _SALIENCY, steps=4, fill=1.0)
    np.testing.assert_allclose(with_fill.scores, [[10, 9, 7, 7, 4]])
    np.testing.assert_allclose(with_fill.per_example, [7.5])
    # The public functions are perturbation_curve in each mode, field for field.
    for got, want in zip(
        with_fill,
        perturbation_curve(_pixel_sum, _IMAGE, _SALIENCY, mode="deletion", steps=4, fill=1.0),
    ):
        np.testing.assert_array_equal(got, want)


def test_ties_follow_pixel_index_and_uneven_steps():
    tied = np.ones((1, 2, 2), np.float32)
    # All tied: removal in row-major order, 1, 2, 3, 4: 10, 9, 7, 4, 0.
    curve = perturbation_curve(_pixel_sum, _IMAGE, tied, mode="deletion", steps=4)
    np.testing.assert_allclose(curve.scores, [[10, 9, 7, 4, 0]])
    # 3 steps over 4 pixels: ⌊k·4/3⌋ = 0, 1, 2, 4 pixels removed.
    curve = perturbation_curve(_pixel_sum, _IMAGE, tied, mode="deletion", steps=3)
    np.testing.assert_allclose(curve.fractions, [0, 0.25, 0.5, 1])
    np.testing.assert_allclose(curve.scores, [[10, 9, 7, 0]])
    np.testing.assert_allclose(curve.per_example, [0.25 * 9.5 + 0.25 * 8 + 0.5 * 3.5])


def _naive_curve(score, images, saliency, fill, steps, insertion, targets=None):
    """Builds every perturbed image in a Python loop, then scores them in one call."""
    b, h, w, _ = images.shape
    n = h * w
    perturbed, owners = [], []
    for i in range(b):
        order = np.lexsort((np.arange(n), -saliency[i].ravel()))  # by -saliency, then index
        for k in range(steps + 1):
            changed = np.zeros(n, bool)
            changed[order[: (k * n) // steps]] = True
            changed = changed.reshape(h, w)[..., None]
            base, other = (fill[i], images[i]) if insertion else (images[i], fill[i])
            perturbed.append(np.where(changed, other, base))
            owners.append(i)
    args = (np.stack(perturbed),) if targets is None else (np.stack(perturbed), targets[owners])
    scores = np.asarray(score(*args), np.float64).reshape(b, steps + 1)
    fractions = ((np.arange(steps + 1) * n) // steps) / n
    return scores, np.trapezoid(scores, fractions, axis=1)


def _tanh_score(images):
    weights = jnp.linspace(-1.0, 1.0, images[0].size).reshape(images.shape[1:])
    return jnp.tanh(jnp.sum(images * weights, axis=(1, 2, 3)))


@pytest.mark.parametrize(("mode", "batch_size"), [("deletion", None), ("insertion", 4)])
def test_matches_naive_loop(mode, batch_size):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(3, 5, 6, 2)).astype(np.float32)
    saliency = rng.integers(0, 4, size=(3, 5, 6)).astype(np.float32)  # many ties
    fill = rng.normal(size=(3, 5, 6, 2)).astype(np.float32)  # e.g. a blurred copy
    curve = perturbation_curve(
        _tanh_score, images, saliency, mode=mode, steps=7, fill=fill, batch_size=batch_size
    )
    scores, auc = _naive_curve(_tanh_score, images, saliency, fill, 7, mode == "insertion")
    np.testing.assert_allclose(curve.scores, scores, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curve.per_example, auc, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(curve.aggregate, auc.mean(), rtol=1e-5, atol=1e-6)


def _channel_score(images, targets):
    return jnp.take_along_axis(images.mean(axis=(1, 2)), targets[:, None], axis=1)[:, 0]


def test_targets_follow_their_examples():
    rng = np.random.default_rng(1)
    images = rng.random((3, 4, 4, 3)).astype(np.float32)
    saliency = rng.random((3, 4, 4)).astype(np.float32)
    targets = np.array([2, 0, 1])
    fill = np.broadcast_to(np.float32(0.5), images.shape)
    curve = perturbation_curve(
        _channel_score,
        images,
        saliency,
        mode="deletion",
        steps=5,
        fill=0.5,
        batch_size=2,
        targets=targets,
    )
    scores, _ = _naive_curve(_channel_score, images, saliency, fill, 5, False, targets)
    np.testing.assert_allclose(curve.scores, scores, rtol=1e-5)


def _linear_score(weight, images):
    return weight * images.sum(axis=(1, 2, 3))


def test_partial_score_fn_does_not_recompile_for_new_parameters():
    first = perturbation_curve(
        jax.tree_util.Partial(_linear_score, jnp.float32(1.0)),
        _IMAGE,
        _SALIENCY,
        mode="deletion",
        steps=4,
    )
    compiled = _curve_scores._cache_size()
    second = perturbation_curve(
        jax.tree_util.Partial(_linear_score, jnp.float32(2.0)),
        _IMAGE,
        _SALIENCY,
        mode="deletion",
        steps=4,
    )
    assert _curve_scores._cache_size() == compiled
    np.testing.assert_allclose(second.scores, 2 * np.asarray(first.scores))
    # Under an outer jit, a score_fn closing over traced parameters works the same.
    traced = jax.jit(
        lambda w: deletion_curve(lambda x: _linear_score(w, x), _IMAGE, _SALIENCY, steps=4)
    )(jnp.float32(3.0))
    np.testing.assert_allclose(traced.per_example, 3 * np.asarray(first.per_example))
    np.testing.assert_allclose(traced.scores, 3 * np.asarray(first.scores))


def test_rejects_bad_inputs():
    with pytest.raises(ValueError, match="mode"):
        perturbation_curve(_pixel_sum, _IMAGE, _SALIENCY, mode="morf")
    with pytest.raises(ValueError, match="same"):
        deletion_curve(_pixel_sum, _IMAGE, np.zeros((1, 3, 2)))
    with pytest.raises(ValueError, match="reduce_channels"):
        deletion_curve(_pixel_sum, _IMAGE, np.zeros((1, 2, 2, 3)))
    with pytest.raises(ValueError, match="broadcast"):
        deletion_curve(_pixel_sum, _IMAGE, _SALIENCY, fill=np.zeros(3))
    with pytest.raises(ValueError, match=r"\[N\] scores"):
        deletion_curve(lambda x: x.sum(axis=(1, 2)), _IMAGE, _SALIENCY)


def test_structureless_maps_use_row_major_order_and_only_the_order_matters():
    images = np.arange(1.0, 7.0, dtype=np.float32).reshape(1, 2, 3, 1)
    row_major = -np.arange(6, dtype=np.float32).reshape(1, 2, 3)  # ranks pixels 0, 1, ..., 5
    reference = deletion_curve(_pixel_sum, images, row_major, steps=6)
    # Removing 1, 2, ..., 6 in turn from 21.
    np.testing.assert_allclose(reference.scores, [[21, 20, 18, 15, 11, 6, 0]])
    for constant in (0.0, 2.0, -3.0):  # all zeros, positive, negative: row-major order
        same = deletion_curve(_pixel_sum, images, np.full((1, 2, 3), constant), steps=6)
        np.testing.assert_array_equal(same.scores, reference.scores)
    # An all-negative map orders pixels as the same map shifted to positive values.
    negative = np.array([[[-5.0, -1.0, -3.0], [-2.0, -6.0, -4.0]]], np.float32)
    shifted = insertion_curve(_pixel_sum, images, negative + 10.0, steps=6)
    np.testing.assert_array_equal(
        insertion_curve(_pixel_sum, images, negative, steps=6).scores, shifted.scores
    )
    # Inserting pixels 2, 4, 3, 6, 1, 5 (values 2, 4, 3, 6, 1, 5) into zeros.
    np.testing.assert_allclose(shifted.scores, [[0, 2, 6, 9, 15, 16, 21]])
