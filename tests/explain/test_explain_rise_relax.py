"""RISE and RELAX against naive per-mask loops on the same masks, and U-RELAX by hand."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.explain import relax, rise, u_relax

B, H, W, C = 2, 6, 5, 3


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(B, H, W, C)).astype(np.float32)
    params = {
        "hidden": (rng.normal(size=(H * W * C, 4)) / 4).astype(np.float32),
        "bias": rng.normal(size=4).astype(np.float32),
    }
    masks = rng.random((25, H, W)).astype(np.float32)
    return images, params, masks


def sigmoid_score(params, images):
    flat = images.reshape(images.shape[0], -1)
    return jax.nn.sigmoid(jnp.sum(jnp.tanh(flat @ params["hidden"]), axis=-1))


def tanh_embedding(params, images):
    return jnp.tanh(images.reshape(images.shape[0], -1) @ params["hidden"] + params["bias"])


def _embed_np(params, images):
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    return np.tanh(flat @ params["hidden"] + params["bias"])


def test_rise_matches_naive_mask_loop(data):
    images, params, masks = data
    # [N, H, W, 1] masks; 25 masks in chunks of 10 (the last chunk overlaps by 5).
    got = np.asarray(rise(Partial(sigmoid_score, params), images, masks[..., None], batch_size=10))
    total = np.zeros((B, H, W))
    for mask in masks.astype(np.float64):
        flat = (images * mask[None, :, :, None]).reshape(B, -1)
        score = 1.0 / (1.0 + np.exp(-np.tanh(flat @ params["hidden"]).sum(-1)))
        total += score[:, None, None] * mask
    expected = total / (len(masks) * masks.astype(np.float64).mean())
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    explicit = rise(Partial(sigmoid_score, params), images, masks, p_keep=0.25, batch_size=10)
    np.testing.assert_allclose(explicit, total / (len(masks) * 0.25), rtol=1e-5, atol=1e-6)


def _official_relax_loop(params, image, masks):
    """The relax-xai streaming (weighted Welford) update, mask by mask, in float64."""
    reference = _embed_np(params, image[None])[0]
    weight_sum = np.full(masks.shape[1:], 1e-10)
    importance = np.zeros(masks.shape[1:])
    uncertainty = np.zeros(masks.shape[1:])
    for mask in masks.astype(np.float64):
        embedding = _embed_np(params, (image * mask[:, :, None])[None])[0]
        similarity = embedding @ reference / (np.linalg.norm(embedding) * np.linalg.norm(reference))
        weight_sum += mask
        previous = importance.copy()
        importance += mask * (similarity - importance) / weight_sum
        uncertainty += (similarity - importance) * (similarity - previous) * mask
    return importance, uncertainty, weight_sum


@pytest.mark.parametrize("bias_scale", [1.0, 8.0])
def test_relax_matches_official_streaming_loop(data, bias_scale):
    """Bias scale 8 makes the embeddings nearly constant: the similarities lie in [0.958, 1),
    where the uncentred closed form S2 − 2R̄S1 + R̄²S0 in float32 is off by 2.5e-3 (relative)."""
    images, params, masks = data
    params = dict(params, bias=bias_scale * params["bias"])
    embed_fn = Partial(tanh_embedding, params)
    got = relax(embed_fn, images, masks, batch_size=10)
    normalized = relax(embed_fn, images, masks, batch_size=10, normalize_uncertainty=True)
    for b in range(B):
        importance, uncertainty, weight_sum = _official_relax_loop(params, images[b], masks)
        np.testing.assert_allclose(got.importance[b], importance, rtol=1e-5, atol=1e-6)
        scale = uncertainty.max()
        np.testing.assert_allclose(got.uncertainty[b], uncertainty, rtol=1e-5, atol=1e-5 * scale)
        np.testing.assert_allclose(
            normalized.uncertainty[b],
            uncertainty / (weight_sum - 1e-10 - 1.0),
            rtol=1e-5,
            atol=1e-5 * scale,
        )
    np.testing.assert_allclose(normalized.importance, got.importance)


def test_u_relax_hand_case():
    importance = np.array([[[1.0, 2.0], [3.0, 4.0]], [[5.0, 6.0], [7.0, 8.0]]], np.float32)
    # Image 0: median of {1, 3, 2, 4} is 2.5; image 1 has a tie at its median 2.
    uncertainty = np.array([[[1.0, 3.0], [2.0, 4.0]], [[2.0, 2.0], [1.0, 5.0]]], np.float32)
    expected = np.array([[[1.0, 0.0], [3.0, 0.0]], [[5.0, 6.0], [7.0, 0.0]]])
    np.testing.assert_array_equal(u_relax(importance, uncertainty), expected)
