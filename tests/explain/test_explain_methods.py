"""Every explainer on every method's default target (the predicted class's logit), as the
explain launcher runs them: through the method's exported targets, on images in [0, 1] that
the loaded method normalises itself.

Each method is built from its digits config, shrunk, with freshly initialised weights: the
explainers' properties checked here (shapes, finite maps, saliency against `jax.grad`,
integrated gradients' completeness, PRP against `explain.prp.prp` and its conservation) do
not depend on training. The weights that start at zero are drawn instead, so that the scores
depend on the image: KMEx's centroids (fitted by k-means in a run) and InfoDisent's head (0 at
its start). Pantypes is ProtoVAE with another loss: it inherits ProtoVAE's targets and own
explanation, which is checked instead of running the explainers a second time on the same
network.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.tree_util import Partial

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.data.pipeline import normalize
from protojax.explain import EXPLAINERS, explain_all
from protojax.explain.lrp import composite_by_name
from protojax.explain.prp import kmex_relevance, protovae_relevance, prp
from protojax.methods import build_method
from protojax.runs import LoadedMethod

B = 2
# Small settings: the properties hold for any number of samples or masks. Integrated gradients
# take 256 steps, which cost little to run, so that the quadrature error of these ReLU networks
# stays well inside completeness's tolerance (at most 0.6 of it here; 64 steps exceed it for FLINT).
OPTIONS = {
    "smoothgrad": {"num_samples": 2},
    "integrated_gradients": {"steps": 256},
    "rise": {"num_masks": 8},
    "relax": {"num_masks": 8},
}
METHODS = {
    "blackbox": ("blackbox_digits", {"data.image_size": 16}),
    "protopnet": (
        "protopnet_digits",
        {"data.image_size": 8, "model.prototypes_per_class": 2, "model.prototype_dim": 8},
    ),
    "protovae": ("protovae_digits", {"model.prototypes_per_class": 2}),
    "flint": ("flint_digits", {}),
    "kmex": ("kmex_digits", {"data.image_size": 16, "model.per_class": 2}),
    "infodisent": ("infodisent_digits", {"data.image_size": 12}),
}
PRP_METHODS = ("protopnet", "protovae", "kmex")


def _drawn(name, method, variables, images):
    """The variables with KMEx's centroids or InfoDisent's head drawn at random."""
    rng = np.random.default_rng(0)
    if name == "kmex":
        z = np.asarray(method.embed(variables, images))
        scale = z.std() + 1e-3
        count = method.num_prototypes
        centroids = z[np.arange(count) % len(z)] + scale * rng.normal(size=(count, z.shape[1]))
        state = {**variables["kmex"], "centroids": jnp.asarray(centroids, jnp.float32)}
        return {**variables, "kmex": state}
    if name == "infodisent":
        kernel = variables["params"]["head"]["kernel"]
        head = {
            **variables["params"]["head"],
            "kernel": jnp.asarray(rng.uniform(size=kernel.shape), kernel.dtype),
        }
        return {**variables, "params": {**variables["params"], "head": head}}
    return variables


# Compilation dominates this file's time (the tiny models run in milliseconds): the reference
# values are computed in one program per method, and the model is initialised by one. The key
# is an RBG key: XLA compiles its random bits (the initializers', SmoothGrad's noise, RISE's and
# RELAX's masks) about five times faster on CPU than threefry's.
KEY = jax.random.key(0, impl="rbg")


@jax.jit
def _references(predict, targets, images):
    """What the explainers are checked against: the logits, the predicted class, its logit
    and probability, the embedding, the logit of a black image and the logit's input gradient
    (a vector-Jacobian product, independent of the explainers' code)."""
    logits = predict(images)
    predicted = jnp.argmax(logits, axis=1)
    score = targets["class_logit"]
    scores, vjp = jax.vjp(lambda x: score(x, predicted), images)
    return {
        "logits": logits,
        "predicted": predicted,
        "score": scores,
        "probability": targets["class_probability"](images, predicted),
        "embedding": targets["embedding"](images),
        "black": score(0 * images, predicted),
        "gradient": vjp(jnp.ones_like(scores))[0],
    }


@pytest.fixture(scope="module", params=list(METHODS))
def model(request):
    name, overrides = METHODS[request.param]
    config = load_config(name)
    for key, value in overrides.items():
        set_value(config, key, value)
    dataset = load_digits(image_size=config.data.image_size)
    method = build_method(config, dataset)
    images = dataset.split("test").get_batch(np.arange(B))["image"]
    normalized = normalize(images, config.data.normalization)
    variables = jax.jit(method.init)(KEY, {"image": normalized})
    variables = _drawn(request.param, method, variables, normalized)
    loaded = LoadedMethod(method, config.data.normalization)
    return request.param, method, loaded, variables, jnp.asarray(images)


def test_every_explainer_on_the_default_target(model):
    name, method, loaded, variables, images = model
    targets = loaded.targets(variables)
    ref = jax.device_get(_references(Partial(loaded.predict, variables), targets, images))
    logits, predicted = ref["logits"], jnp.asarray(ref["predicted"])
    score = targets["class_logit"]

    # The targets every method exports (interface §1).
    np.testing.assert_array_equal(predicted, logits.argmax(axis=1))
    np.testing.assert_allclose(ref["score"], logits.max(axis=1), rtol=1e-5)
    softmax = np.exp(logits - logits.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    np.testing.assert_allclose(ref["probability"], softmax.max(axis=1), rtol=1e-5)
    embedding = ref["embedding"]
    assert embedding.ndim == 2 and embedding.shape[0] == B

    has_prp = name in PRP_METHODS
    assert ("prp" in targets) == has_prp
    prototypes = jnp.asarray([1, 0]) if has_prp else None
    # PRP's first layer is bounded by the model inputs' range, as the launcher sets it.
    low, high = (
        float(loaded.normalize(np.full((1, 1, 1, 1), v, np.float32)).item()) for v in (0, 1)
    )
    options = {**OPTIONS, "prp": {"low": low, "high": high}}
    result = explain_all(
        score, images, rng=KEY, targets=predicted, embed_fn=targets["embedding"],
        prp_fn=targets.get("prp"), prp_targets=prototypes, options=options, image_batch=B,
    )  # fmt: skip
    expected = [e for e in EXPLAINERS if e != "prp" or has_prp]
    assert list(result.maps) == expected and result.nonfinite == {}
    for explainer, maps in result.maps.items():
        assert maps.shape == (B, *images.shape[1:3]), explainer
        assert np.all(np.isfinite(maps)) and np.any(maps != 0), explainer
    assert np.all(result.maps["gradcam"] >= 0) and np.all(result.uncertainty >= 0)

    # Saliency is max_c |∂ score / ∂ pixel|, pixels in [0, 1].
    grads = ref["gradient"]
    np.testing.assert_allclose(result.maps["saliency"], np.abs(grads).max(-1), rtol=1e-4, atol=1e-7)
    # Completeness: IG sums to score(x) − score(black), up to the 256-step quadrature.
    gap = ref["score"] - ref["black"]
    total = result.maps["integrated_gradients"].sum(axis=(1, 2))
    np.testing.assert_allclose(total, gap, rtol=0.02, atol=1e-3 * np.abs(gap).max())

    if name == "protovae":  # the prp target's LRP is PRP from μ, with the composite asked for
        zplus = explain_all(
            None, images, rng=KEY, prp_fn=targets["prp"], prp_targets=prototypes,
            explainers=["prp"], options={"prp": {"composite": "prp_zplus", "low": low,
                                                 "high": high}}, image_batch=B,
        )  # fmt: skip
        for composite, maps in (("prp", result.maps["prp"]), ("prp_zplus", zplus.maps["prp"])):
            direct = prp(
                Partial(method.embed, variables),
                protovae_relevance(variables["params"]["prototypes"]),
                normalize(images, "symmetric"),
                targets=prototypes,
                composite=composite_by_name(composite, low=-1.0, high=1.0),
            )
            np.testing.assert_allclose(maps, np.asarray(direct).sum(-1), rtol=1e-4, atol=1e-6)
        assert not np.allclose(zplus.maps["prp"], result.maps["prp"])
    if name == "kmex":  # the official seed: relevance 1 on each embedding dimension
        direct = prp(
            Partial(method.embed, variables),
            kmex_relevance(variables["kmex"]["centroids"]),
            loaded.normalize(images),
            targets=prototypes,
            composite=composite_by_name("prp", low=low, high=high),
        )
        np.testing.assert_allclose(
            result.maps["prp"], np.asarray(direct).sum(-1), rtol=1e-4, atol=1e-6
        )
        # The prp rules hold no bias (and the fresh Dense biases are 0): the pixels' relevance
        # sums to the embedding's, one per non-zero dimension (a zero one passes none).
        totals = result.maps["prp"].sum(axis=(1, 2))
        np.testing.assert_allclose(totals, (embedding != 0).sum(axis=1), rtol=1e-4)
        # The identity backward ignores the centroid: the same map for every one.
        other = explain_all(
            None, images, rng=KEY, prp_fn=targets["prp"],
            prp_targets=jnp.asarray([3, 2]), explainers=["prp"], options=options, image_batch=B,
        )  # fmt: skip
        np.testing.assert_allclose(other.maps["prp"], result.maps["prp"], rtol=1e-5, atol=1e-7)


def test_pantypes_explains_as_protovae():
    from protojax.methods import pantypes, protovae

    assert pantypes.Pantypes.targets is protovae.ProtoVAE.targets
    assert pantypes.own_explanation is protovae.own_explanation
