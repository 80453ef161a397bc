"""Grad-CAM at a named Flax layer, and every explainer run together by `explain_all`."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.explain import (
    default_gradcam_layer,
    explain_all,
    gradcam,
    integrated_gradients,
    layer_gradcam,
    layer_outputs,
    lrp,
    occlusion,
    reduce_channels,
    relax,
    relax_masks,
    rise,
    rise_masks,
    saliency,
    smoothgrad,
)
from protojax.explain.runner import EXPLAINERS
from protojax.nn import backbone_by_name

B, SIZE, K = 3, 8, 4


class Residual(nn.Module):
    """conv → `trunk` (a conv whose output also skips past `mix`) → mean → dense logits."""

    @nn.compact
    def __call__(self, x):
        x = jnp.tanh(nn.Conv(4, (3, 3), name="stem")(x))
        a = nn.Conv(6, (3, 3), name="trunk")(x)
        y = a + jnp.tanh(nn.Conv(6, (1, 1), name="mix")(a))
        return nn.Dense(K, name="dense")(jnp.mean(y, axis=(1, 2)))


class WithBackbone(nn.Module):
    def setup(self):
        self.backbone = backbone_by_name("small_cnn")
        self.head = nn.Dense(K)

    def __call__(self, x):
        return self.head(jnp.mean(self.backbone(x), axis=(1, 2)))


def _logit(model, variables, images, classes):
    logits = model.apply(variables, images)
    return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


@pytest.fixture(scope="module")
def residual():
    model = Residual()
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(B, SIZE, SIZE, 2)).astype(np.float32))
    variables = model.init(jax.random.key(0), images)
    return model, variables, images


def test_layer_gradcam_equals_gradcam_on_the_model_split_at_that_layer(residual):
    model, variables, images = residual
    classes = jnp.asarray([0, 3, 1])
    params = variables["params"]

    def features(params, x):
        x = jnp.tanh(nn.Conv(4, (3, 3)).apply({"params": params["stem"]}, x))
        return nn.Conv(6, (3, 3)).apply({"params": params["trunk"]}, x)

    def head(params, a, classes):
        # The skip connection reads the layer's output twice; the split must too.
        y = a + jnp.tanh(nn.Conv(6, (1, 1)).apply({"params": params["mix"]}, a))
        logits = nn.Dense(K).apply({"params": params["dense"]}, jnp.mean(y, axis=(1, 2)))
        return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]

    expected = gradcam(Partial(features, params), Partial(head, params), images, targets=classes)
    score = Partial(functools.partial(_logit, model), variables)
    got = layer_gradcam(score, images, layer="trunk", targets=classes)
    assert got.shape == (B, SIZE, SIZE)
    assert float(jnp.max(expected)) > 0
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)


def test_layers_listed_and_the_default_layer_is_the_backbone_or_the_last_map(residual):
    model, variables, images = residual
    score = Partial(functools.partial(_logit, model), variables)
    classes = jnp.zeros((B,), jnp.int32)
    listed = layer_outputs(score, images, targets=classes)
    assert [(o.path, o.shape) for o in listed] == [
        ("stem", (B, SIZE, SIZE, 4)),
        ("trunk", (B, SIZE, SIZE, 6)),
        ("mix", (B, SIZE, SIZE, 6)),
    ]
    assert default_gradcam_layer(score, images, targets=classes) == "mix"

    net = WithBackbone()
    net_vars = net.init(jax.random.key(1), jnp.zeros((1, SIZE, SIZE, 1)))
    net_score = Partial(functools.partial(_logit, net), net_vars)
    grey = images[..., :1]
    assert default_gradcam_layer(net_score, grey, targets=classes) == "backbone"
    maps = layer_gradcam(net_score, grey, layer="backbone", targets=classes)
    assert maps.shape == (B, SIZE, SIZE) and bool(jnp.all(maps >= 0))

    with pytest.raises(ValueError, match="layer 'trunks' is not a module the score calls; .*trunk"):
        layer_gradcam(score, images, layer="trunks", targets=classes)
    with pytest.raises(ValueError, match=r"layer 'dense' returns \(3, 4\), not a \[B, h, w, K\]"):
        layer_gradcam(score, images, layer="dense", targets=classes)


def test_explain_all_matches_each_explainer_called_alone_and_flags_nan(residual):
    model, variables, images = residual
    images = jnp.concatenate([images, -images[:1]])  # B + 1 = 4 images, two chunks of 2
    score = Partial(functools.partial(_logit, model), variables)
    embed = Partial(model.apply, variables)  # the logits as an embedding
    classes = jnp.asarray([2, 0, 1, 3])
    rng = jax.random.key(7)
    options = {
        "smoothgrad": {"num_samples": 3},
        "integrated_gradients": {"steps": 4},
        "rise": {"num_masks": 6},
        "relax": {"num_masks": 5},
    }
    # Two images at a time, so two samples at a time with batch_size 4.
    got = explain_all(
        score, images, rng=rng, targets=classes, embed_fn=embed, options=options,
        batch_size=4, image_batch=2,
    )  # fmt: skip
    # Every explainer whose inputs are given: PRP needs a prp_fn.
    assert list(got.maps) == [e for e in EXPLAINERS if e != "prp"] and got.nonfinite == {}
    assert got.settings["occlusion"]["patch"] == 2 and got.settings["occlusion"]["stride"] == 1
    assert got.settings["gradcam"]["layer"] == "mix"

    noise, rise_key, relax_key = jax.random.split(rng, 3)
    rise_m, relax_m = rise_masks(rise_key, 6, SIZE), relax_masks(relax_key, 5, SIZE)

    def alone(x, c, start):
        kw = {"targets": c}
        sg = smoothgrad(score, x, rng=jax.random.fold_in(noise, start), num_samples=3, **kw)
        return {
            "saliency": reduce_channels(saliency(score, x, **kw), "max_abs"),
            "smoothgrad": reduce_channels(sg, "abs_sum"),
            "integrated_gradients": reduce_channels(
                integrated_gradients(score, x, steps=4, **kw), "sum"
            ),
            "gradcam": layer_gradcam(score, x, layer="mix", **kw),
            "occlusion": occlusion(score, x, patch=2, stride=1, **kw),
            "rise": rise(score, x, rise_m, p_keep=0.5, **kw),
            "relax": relax(embed, x, relax_m).importance,
            "lrp": reduce_channels(lrp(score, x, composite="epsilon_plus_flat", **kw), "sum"),
        }

    chunks = [alone(images[s : s + 2], classes[s : s + 2], s) for s in (0, 2)]
    for name in got.maps:
        expected = np.concatenate([chunk[name] for chunk in chunks])
        assert got.maps[name].shape == (B + 1, SIZE, SIZE)
        np.testing.assert_allclose(got.maps[name], expected, rtol=2e-4, atol=1e-6, err_msg=name)
    assert got.uncertainty.shape == (B + 1, SIZE, SIZE)
    assert np.any(got.maps["smoothgrad"][0] != got.maps["smoothgrad"][2])

    def nan_for_dark(images, classes):  # NaN once a mask darkens the image enough
        return jnp.where(jnp.mean(images, axis=(1, 2, 3)) < -0.05, jnp.nan, score(images, classes))

    flagged = explain_all(
        nan_for_dark, images, rng=rng, targets=classes, explainers=["saliency", "rise"],
        options={"rise": {"num_masks": 6}}, image_batch=2,
    )  # fmt: skip
    assert "saliency" not in flagged.nonfinite
    assert flagged.nonfinite["rise"] == int(np.sum(~np.isfinite(flagged.maps["rise"]))) > 0

    with pytest.raises(ValueError, match="Unknown explainer 'lime'"):
        explain_all(score, images, rng=rng, explainers=["lime"])
    with pytest.raises(ValueError, match="Unknown option 'steps' for rise"):
        explain_all(score, images, rng=rng, explainers=["rise"], options={"rise": {"steps": 2}})
    with pytest.raises(ValueError, match="pass embed_fn"):
        explain_all(score, images, rng=rng, explainers=["relax"])
