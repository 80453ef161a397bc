"""The calling convention: Partial score functions reuse the compiled explainer; clear errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.explain import (
    gradcam,
    integrated_gradients,
    occlusion,
    relax,
    relax_masks,
    rise,
    saliency,
)

B, H, W, C = 2, 4, 4, 1
TRACES = {"count": 0}


def counted_linear_score(weights, images):
    """s = Σ w ⊙ x; counts how often JAX traces it (a Python side effect runs only then)."""
    TRACES["count"] += 1
    return jnp.sum(weights * images, axis=(1, 2, 3))


def counted_features(scale, images):
    TRACES["count"] += 1
    return scale * images


def channel_sum_head(v, features):
    return jnp.sum(features * v, axis=(1, 2, 3))


def counted_embedding(matrix, images):
    TRACES["count"] += 1
    return jnp.tanh(images.reshape(images.shape[0], -1) @ matrix)


IMAGES = np.random.default_rng(0).random((B, H, W, C)).astype(np.float32)
MASKS = np.random.default_rng(1).random((6, H, W)).astype(np.float32)
WEIGHTS = np.random.default_rng(2).normal(size=(H, W, C)).astype(np.float32)
EMBED = np.random.default_rng(3).normal(size=(H * W * C, 3)).astype(np.float32)

# Each explainer as a function of its parameters; all are linear in them except RELAX.
# SmoothGrad's check is in test_explain_gradients.py.
EXPLAINERS = {
    "saliency": lambda p: saliency(Partial(counted_linear_score, p), IMAGES),
    "integrated_gradients": lambda p: integrated_gradients(
        Partial(counted_linear_score, p), IMAGES, steps=3
    ),
    "gradcam": lambda p: gradcam(
        Partial(counted_features, 1.0), Partial(channel_sum_head, p), IMAGES
    ),
    "occlusion": lambda p: occlusion(Partial(counted_linear_score, p), IMAGES, patch=2, stride=2),
    "rise": lambda p: rise(Partial(counted_linear_score, p), IMAGES, MASKS, batch_size=4),
    "relax": lambda p: relax(Partial(counted_embedding, p), IMAGES, MASKS, batch_size=4),
}


@pytest.mark.parametrize("name", sorted(EXPLAINERS))
def test_new_parameters_do_not_recompile(name):
    explain = EXPLAINERS[name]
    params = EMBED if name == "relax" else WEIGHTS
    first = explain(params)
    traces = TRACES["count"]
    assert traces > 0
    second = explain(params + 1.0 if name == "relax" else 2.0 * params)
    assert TRACES["count"] == traces, f"{name} re-traced for new parameter values"
    if name == "relax":  # the new parameters are used, not the traced-in old ones
        assert not np.allclose(first.importance, second.importance)
    else:
        np.testing.assert_allclose(second, 2.0 * np.asarray(first), rtol=1e-5, atol=1e-6)


def _score(images):
    return jnp.sum(images, axis=(1, 2, 3))


@pytest.mark.parametrize(
    "call,message",
    [
        (lambda: saliency(_score, IMAGES[0]), r"must be a \[B, H, W, C\] batch"),
        (lambda: saliency(_score, IMAGES.astype(np.int32)), "must be floating point"),
        (lambda: saliency(_score, IMAGES, targets=np.zeros(3, int)), r"shape \[2\]"),
        (lambda: saliency(lambda x: x[:, 0, 0], IMAGES), "one score per image"),
        (lambda: saliency("model", IMAGES), "score_fn must be callable"),
        (lambda: rise(_score, IMAGES, MASKS[:, :3]), "masks are 3x4 but the images are 4x4"),
        (lambda: rise(_score, IMAGES, MASKS[..., None, None]), r"\[N, H, W\] or \[N, H, W, 1\]"),
        (lambda: rise(_score, IMAGES, MASKS, batch_size=0), "batch_size must be a positive"),
        (lambda: integrated_gradients(_score, IMAGES, method="simpson"), "method must be one"),
        (lambda: integrated_gradients(_score, IMAGES, steps=1), "steps must be at least 2"),
        (lambda: integrated_gradients(_score, IMAGES, baseline=np.zeros(3)), "does not broadcast"),
        (lambda: occlusion(_score, IMAGES, patch=5, stride=1), "larger than the 4x4"),
        (lambda: occlusion(_score, IMAGES, patch=2.5, stride=1), "patch must be a positive int"),
        (lambda: relax_masks(jax.random.key(0), 4, 3, grid=7), "must exceed grid // 2"),
        (lambda: relax(lambda x: jnp.sum(x), IMAGES, MASKS), "one embedding per image"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_user_errors_say_what_is_wrong(call, message):
    with pytest.raises(ValueError, match=message):
        call()
