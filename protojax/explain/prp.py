"""Prototypical relevance propagation (PRP, Gautam et al., Pattern Recognition 2023).

PRP explains a prototype's similarity by LRP: a relevance is placed on the latent
representation, from the prototype, and propagated to the pixels with the LRP rules of
`protojax.explain.lrp` (by default the `prp` composite of the official code: z^β for the
first layer, z⁺ ignoring the bias for the other convolutions, ε = 1e-6 for Dense layers; the
explain and evaluate launchers default to `prp_zplus`, z⁺ for Dense layers too, whose maps
follow the image where the ε-rule's do not: docs/fidelity.md, "PRP").

The relevance functions below build that latent relevance for each family of prototypes:

- `protovae_relevance`: ProtoVAE and Pantypes (official `prp.py`), R_d = 1/((μ_d − p_d)² + ε);
- `kmex_relevance`: KMEx (official `utils/evaluation.py`), whose similarity has an identity
  backward pass;
- `protopnet_relevance`: ProtoPNet's patch prototypes, as PRP's `l2_lrp` rule.

Each returns a `jax.tree_util.Partial` holding the prototypes, `relevance_fn(latent, targets)`
with `targets [B]` the prototype index explained for each image.

One departure from the official code: its canoniser folds every BatchNorm into the conv
before it, even across the ReLU of ProtoVAE's Conv → ReLU → BN blocks, which changes the
forward pass (the folded shift moves inside the ReLU). Here the forward pass is the trained
model's: only a BN that reads a Dense/Conv output directly is folded, and a BN after a ReLU
passes its relevance unchanged (`Composite.batchnorm = "pass"`, the official BN rule).
Pooling uses LRP-0 where the official code adds ε = 1e-6.

Method contract: `features_fn` is a Partial of the method's embedding function and its
variables (for ProtoVAE, `Partial(method.embed, variables)`, μ), and the images are in the
model's input range; the `prp` composite's first layer assumes inputs in [−1, 1] (the
`symmetric` normalisation), other ranges pass `composite_by_name("prp", low=..., high=...)`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from protojax.explain.common import as_pytree_callable, check_images, check_targets
from protojax.explain.lrp import Composite, Rule, input_relevance, resolve_composite

KMEX_SEEDS = ("ones", "similarity")


def prp(
    features_fn: Callable[[jax.Array], jax.Array],
    relevance_fn: Callable[..., jax.Array],
    images: jax.Array,
    *,
    targets: jax.Array | None = None,
    composite: str | Composite | None = "prp",
    rule: str | Rule = "epsilon",
    epsilon: float = 1e-6,
) -> jax.Array:
    """LRP from a relevance placed on a latent representation, `[B, H, W, C]`.

    Args:
      features_fn: `features_fn(images [B, H, W, C]) -> latent [B, ...]`: the output of a
        Dense/Conv layer, or a slice or reshape of one (such as μ, half of an encoder's last
        Dense), computed through Flax modules in inference mode, ideally a
        `jax.tree_util.Partial` whose leaves are the variables.
      relevance_fn: `relevance_fn(latent) -> [B, ...]`, or `relevance_fn(latent, targets)`
        when `targets` is given: the relevance at the latent, of the latent's shape.
      images: `[B, H, W, C]`.
      targets: optional `[B]` prototype indices passed to `relevance_fn`.
      composite, rule, epsilon: as in `protojax.explain.lrp.lrp`; build the official
        composite for other input bounds with `composite_by_name("prp", low=..., high=...)`.

    Returns:
      `[B, H, W, C]` relevance.
    """
    features_fn = as_pytree_callable(features_fn, "features_fn")
    relevance_fn = as_pytree_callable(relevance_fn, "relevance_fn")
    images = check_images(images)
    targets = check_targets(targets, images.shape[0])
    composite = resolve_composite(rule, epsilon, composite)
    return _prp(features_fn, relevance_fn, images, targets, composite)


@partial(jax.jit, static_argnames=("composite",))
def _prp(features_fn, relevance_fn, images, targets, composite):
    return input_relevance(lambda x: prp_score(features_fn, relevance_fn, x, targets), images,
                           composite)  # fmt: skip


def prp_score(features_fn, relevance_fn, images: jax.Array, targets=None) -> jax.Array:
    """The score `[B]` whose LRP is PRP: Σ_d latent_d · stop_gradient(R_d / latent_d), equal
    to the total latent relevance Σ_d R_d, with gradient R / latent at the latent, so that
    LRP hands each latent dimension exactly R_d. `lrp(Partial(prp_score, features_fn,
    relevance_fn), images, targets=..., composite="prp")` equals `prp(features_fn,
    relevance_fn, images, targets=...)`: methods export it as their `prp` target.
    """
    latent = features_fn(images)
    relevance = relevance_fn(latent) if targets is None else relevance_fn(latent, targets)
    relevance = jax.lax.stop_gradient(jnp.asarray(relevance, latent.dtype))
    if relevance.shape != latent.shape:
        raise ValueError(
            f"relevance_fn must return the latent's shape {latent.shape}; got {relevance.shape}."
        )
    # The gradient R / latent gives the latent the relevance latent ⊙ R / latent = R.
    nonzero = jnp.abs(latent) > 1e-30
    gradient = jnp.where(nonzero, relevance / jnp.where(nonzero, latent, 1.0), 0.0)
    seeded = latent * jax.lax.stop_gradient(gradient)
    return jnp.sum(seeded.reshape(seeded.shape[0], -1), axis=1)


def _check_prototypes(prototypes) -> jax.Array:
    prototypes = jnp.asarray(prototypes)
    if prototypes.ndim != 2:
        raise ValueError(f"prototypes must be [P, D]; got shape {prototypes.shape}.")
    return prototypes


def _protovae(prototypes, epsilon, mu, targets):
    return 1.0 / ((mu - prototypes[targets]) ** 2 + epsilon)


def _protovae_autograd(prototypes, epsilon, mu, targets):
    delta = mu - prototypes[targets]
    return -2.0 * delta / (delta**2 + epsilon) ** 2


def protovae_relevance(prototypes, *, epsilon: float = 1e-4, autograd_seed: bool = False):
    """ProtoVAE's (and Pantypes') latent relevance for prototype `targets[b]`.

    R_bd = 1/((μ_bd − p_d)² + ε) per latent dimension d, ε = 1e-4 (`ProtoVAE:prp.py`): the
    dimensions where the image sits close to the prototype carry its relevance.

    The official script builds this R with autograd operations and calls backward on it, so
    its encoder actually receives ∂R/∂μ = −2(μ − p)/((μ − p)² + ε)²; `autograd_seed=True`
    reproduces that.

    Args:
      prototypes: `[P, d]` latent prototypes.
      epsilon: ε.
      autograd_seed: seed the derivative of R, as the official script does in effect.

    Returns:
      `relevance_fn(mu [B, d], targets [B]) -> [B, d]`, a Partial holding the prototypes.
    """
    fn = _protovae_autograd if autograd_seed else _protovae
    return Partial(fn, _check_prototypes(prototypes), epsilon)


def _kmex_ones(prototypes, embedding, targets):
    del prototypes, targets
    return jnp.ones_like(embedding)


def _kmex_similarity(prototypes, embedding, targets):
    squared = (embedding - prototypes[targets]) ** 2
    return jnp.log((squared + 1.0) / (squared + 1e-8))


def kmex_relevance(prototypes, *, seed: str = "ones"):
    """KMEx's latent relevance for centroid `targets[b]`.

    The official `sim` autograd function has forward log((Δ² + 1)/(Δ² + 1e-8)) per dimension,
    Δ = embedding − prototype, and an identity backward, seeded with ones: every embedding
    dimension gets relevance 1 whatever the prototype (`seed="ones"`, the official code), so
    the map is the same for all prototypes of an image. `seed="similarity"` places that
    per-dimension similarity itself on the embedding instead, which depends on the prototype.

    Returns:
      `relevance_fn(embedding [B, D], targets [B]) -> [B, D]`, a Partial holding the
      prototypes `[P, D]`.
    """
    if seed not in KMEX_SEEDS:
        raise ValueError(f"Unknown KMEx seed {seed!r}; choose one of {KMEX_SEEDS}.")
    fn = _kmex_ones if seed == "ones" else _kmex_similarity
    return Partial(fn, _check_prototypes(prototypes))


def _protopnet(prototypes, epsilon, features, targets):
    # features [B, h, w, D]; the prototype explained [B, 1, 1, D]
    delta2 = (features - prototypes[targets][:, None, None, :]) ** 2
    distances = jnp.sum(delta2, axis=-1)  # [B, h, w]
    similarity = jnp.log((distances + 1.0) / (distances + epsilon))
    b = features.shape[0]
    flat = similarity.reshape(b, -1)
    winner = jax.nn.one_hot(jnp.argmax(flat, axis=1), flat.shape[1], dtype=features.dtype)
    at_patch = (winner * flat).reshape(similarity.shape)  # max pooling: the winner takes all
    closeness = 1.0 / (delta2**2 + 1e-12)
    share = closeness / (jnp.sum(closeness, axis=-1, keepdims=True) + 1e-12)
    return share * at_patch[..., None]


def _protopnet_after_sigmoid(prototypes, epsilon, logits, targets):
    return _protopnet(prototypes, epsilon, jax.nn.sigmoid(logits), targets)


def protopnet_relevance(prototypes, *, epsilon: float = 1e-4, sigmoid: bool = False):
    """ProtoPNet's patch-prototype relevance for prototype `targets[b]` (PRP, Gautam et al.
    2023, its `l2_lrp` rule).

    The similarity map s_hw = log((d_hw + 1)/(d_hw + ε)), d the squared L2 distance between
    the latent patch and the 1×1 prototype, is max-pooled: the closest patch takes the whole
    similarity as relevance, shared among its D channels in proportion to
    1/((z_c − p_c)⁴ + 1e-12), so that the channels closest to the prototype carry it.

    Args:
      prototypes: `[P, D]` (1×1 patches).
      epsilon: ε of the similarity.
      sigmoid: the latent given is the input of the add-on's final sigmoid (the output of its
        last conv, where the LRP rules start); the relevance is computed on its sigmoid and
        passes the sigmoid unchanged, as in the official code.

    Returns:
      `relevance_fn(features [B, h, w, D], targets [B]) -> [B, h, w, D]`, a Partial holding
      the prototypes.
    """
    fn = _protopnet_after_sigmoid if sigmoid else _protopnet
    return Partial(fn, _check_prototypes(prototypes), epsilon)
