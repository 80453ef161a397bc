"""Grad-CAM against a hand-computed case and occlusion against a naive window loop."""

import jax.numpy as jnp
import numpy as np
from jax.tree_util import Partial

from protojax.explain import gradcam, occlusion

# Bilinear 2 → 4 upsampling with half-pixel centres: output i samples input (i + ½)/2 − ½,
# i.e. −¼, ¼, ¾, 1¼, clamped at the edges.
UPSAMPLE_2_TO_4 = np.array([[1.0, 0.0], [0.75, 0.25], [0.25, 0.75], [0.0, 1.0]])


def pooled_features(scale, images):
    """A = scale · 2×2 average pool of the image: `[B, 4, 4, K]` → `[B, 2, 2, K]`."""
    b, h, w, k = images.shape
    return scale * images.reshape(b, h // 2, 2, w // 2, 2, k).mean(axis=(2, 4))


def quadratic_head(v, features, targets):
    """score = Σ_k V[t, k] Σ_hw A_k² / 2, so ∂score/∂A_k = V[t, k] A_k."""
    return jnp.sum(0.5 * v[targets][:, None, None, :] * features**2, axis=(1, 2, 3))


def test_gradcam_matches_hand_computed_case():
    rng = np.random.default_rng(0)
    images = rng.normal(size=(2, 4, 4, 3)).astype(np.float32)
    v = np.array([[1.0, -2.0, 0.5], [-1.0, 0.5, 2.0]], np.float32)
    targets = np.array([1, 0])
    got = np.asarray(
        gradcam(
            Partial(pooled_features, 1.5),
            Partial(quadratic_head, v),
            images,
            targets=targets,
        )
    )
    a = 1.5 * images.reshape(2, 2, 2, 2, 2, 3).mean(axis=(2, 4))  # [B, 2, 2, K]
    alpha = v[targets] * a.mean(axis=(1, 2))  # spatial mean of V[t, k] A_k
    coarse = np.einsum("bk,bhwk->bhw", alpha, a)
    assert (coarse < 0).any() and (coarse > 0).any()  # the ReLU matters
    expected = np.einsum(
        "ih,bhw,jw->bij", UPSAMPLE_2_TO_4, np.maximum(coarse, 0.0), UPSAMPLE_2_TO_4
    )
    assert got.shape == (2, 4, 4)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def _mlp_logits_np(params, images):
    flat = images.reshape(images.shape[0], -1).astype(np.float64)
    return np.tanh(flat @ params["hidden"]) @ params["out"]


def mlp_class_score(params, images, targets):
    logits = jnp.tanh(images.reshape(images.shape[0], -1) @ params["hidden"]) @ params["out"]
    return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]


def test_occlusion_matches_naive_window_loop():
    rng = np.random.default_rng(1)
    b, h, w, c = 2, 8, 6, 2
    images = rng.normal(size=(b, h, w, c)).astype(np.float32)
    params = {
        "hidden": (rng.normal(size=(h * w * c, 6)) / 4).astype(np.float32),
        "out": rng.normal(size=(6, 3)).astype(np.float32),
    }
    targets = np.array([2, 1])
    fill = np.array([0.25, -0.5], np.float32)  # per channel
    patch, stride = (3, 2), (2, 3)
    # 3 × 2 = 6 windows in chunks of 4; rows 7 and columns 2 and 5 are in no window.
    got = np.asarray(
        occlusion(
            Partial(mlp_class_score, params),
            images,
            patch=patch,
            stride=stride,
            fill=fill,
            batch_size=4,
            targets=targets,
        )
    )
    reference = _mlp_logits_np(params, images)[np.arange(b), targets]
    total, count = np.zeros((b, h, w)), np.zeros((h, w))
    for top in range(0, h - patch[0] + 1, stride[0]):
        for left in range(0, w - patch[1] + 1, stride[1]):
            occluded = images.astype(np.float64).copy()
            occluded[:, top : top + patch[0], left : left + patch[1], :] = fill
            score = _mlp_logits_np(params, occluded)[np.arange(b), targets]
            total[:, top : top + patch[0], left : left + patch[1]] += (reference - score)[
                :, None, None
            ]
            count[top : top + patch[0], left : left + patch[1]] += 1
    expected = np.where(count > 0, total / np.maximum(count, 1), 0.0)
    assert got.shape == (b, h, w)
    assert np.all(got[:, 7, :] == 0) and np.all(got[:, :, [2, 5]] == 0)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)
