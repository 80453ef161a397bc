"""ProtoVAE (Gautam et al., NeurIPS 2022): a VAE whose latent space holds class prototypes.

The network (`protojax.nn.protovae`): the encoder maps an image to (μ, log σ²); z = μ is
compared with M prototypes per class by Euclidean (not squared) distance, turned into
similarities log((d + 1) / (d + 1e-4)), and the shared prototype layer
(`protojax.prototypes.layer`: a bias-free last layer, 1 to the own class and −0.5 elsewhere)
classifies the similarities. The decoder reconstructs the image from z and shows every
prototype as an image. The loss is

    L = w_ce·CE + w_rec·MSE(decoder(z), x) + w_kl·KL-to-class-prototypes + w_orth·orthonormality

with all weights 1 (`settings.py` of SrishtiGautam/ProtoVAE). The encoders and decoders are the
official ones, layer for layer (`protojax.nn.vae`; `model.arch`: mnist and fmnist, quickdraw,
svhn, cifar10).

The orthonormality term follows the latest official `model.py` (since 3430af8, 2023-03-14),
the M×M form ‖P̃_k P̃_kᵀ − I_M‖_F; the code released with the paper (fa1d9e1, 2022-10-11) used
the d×d form ‖P̃_kᵀ P̃_k − I_d‖_F, which `model.orthonormality=dimensions` selects. It is logged
at weight 0 too, as the official Pantypes code logs it. It is the method's diversity term:
`ProtoVAE.diversity_terms` is the hook a subclass overrides to use another (Pantypes' volume).

The official code never samples the latent (`if(~is_train): z = mu` is always true,
`model.py:297-299`), so z = μ here by default, which reproduces the published numbers;
`model.sample_latent=True` gives the intended reparameterisation z = μ + σ·ε during training.

Against the shared layer's choices (see `protojax.prototypes.layer`): the official ProtoVAE
keeps its last layer as a bare parameter, here `last_layer/kernel` as in ProtoPNet, and keeps
no `active` flags (every prototype classifies); eliminated prototypes (Pantypes) leave the
logits, the KL and the diversity terms, and `mask_updates` freezes them.

Every departure from the official code is listed in docs/fidelity.md.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict, compute_dtype
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.explain import figures
from protojax.explain.prp import protovae_relevance, prp_score
from protojax.methods.common import ClassTargets, accuracy, cross_entropy, masked_mean, pick
from protojax.nn.protovae import ProtoVAENet
from protojax.nn.vae import vae_arch
from protojax.prototypes import layer
from protojax.prototypes.distances import squared_l2_distances
from protojax.prototypes.diversity import (
    ORTHONORMALITY_FORMS,
    orthonormality_loss,
    prototype_log_volume,
)
from protojax.train import optim
from protojax.train.protocol import Method, Phase

# ProtoVAE's relevance seed ε in 1 / ((μ − p)² + ε) (the official `prp.py`).
PRP_EPS = 1e-4


def kl_to_class_prototypes(
    mu: jax.Array,
    logvar: jax.Array,
    prototypes: jax.Array,
    similarities: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    *,
    active: jax.Array | None = None,
) -> jax.Array:
    """ProtoVAE's KL between each posterior and the prototypes of its true class.

    For sample b of class c and prototype j of class c,
    KL_bj = mean over the d dimensions of KL(N(μ_b, diag σ_b²) ‖ N(p_j, I))
          = ½·mean_d(σ² + (μ − p_j)² − 1 − log σ²)
    (a mean, not a sum, over dimensions), and the sample's loss is the similarity-weighted
    average Σ_j s_bj·KL_bj / Σ_j s_bj over the class's (active) prototypes. Gradients flow
    through the similarities too, as in the official code.

    Args:
      mu, logvar: `[B, d]` posterior mean and log-variance.
      prototypes: `[P, d]`.
      similarities: `[B, P]` positive similarities (the weights).
      labels: `[B]` int true classes.
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; inactive prototypes are left out.

    Returns:
      `[B]` float32 per-sample KL; average it over the valid rows.
    """
    if mu.ndim != 2 or logvar.shape != mu.shape:
        raise ValueError(
            f"mu and logvar must both be [B, d], got {mu.shape} and {logvar.shape}; flatten "
            "the latent first."
        )
    b, d = mu.shape
    p = prototypes.shape[0]
    if prototypes.shape != (p, d) or similarities.shape != (b, p):
        raise ValueError(
            f"prototypes must be [P, d] and similarities [B, P] with B={b}, d={d}; got "
            f"{prototypes.shape} and {similarities.shape}."
        )
    if labels.shape != (b,) or prototype_class.shape != (p,):
        raise ValueError(
            f"labels must be [B]={b} and prototype_class [P]={p}, got {labels.shape} and "
            f"{prototype_class.shape}."
        )
    logvar = logvar.astype(jnp.float32)
    # Σ_d (μ − p)² from one matmul; the σ terms do not depend on the prototype.
    spread = jnp.mean(jnp.exp(logvar) - 1.0 - logvar, axis=-1)  # [B]
    kl = 0.5 * (spread[:, None] + squared_l2_distances(mu, prototypes) / d)  # [B, P]
    mask = prototype_class[None, :] == labels[:, None]
    if active is not None:
        mask = mask & active[None, :]
    weights = jnp.where(mask, similarities.astype(jnp.float32), 0.0)
    # A class without active prototypes contributes 0 rather than 0 / 0.
    return jnp.sum(weights * kl, axis=-1) / jnp.maximum(jnp.sum(weights, axis=-1), 1e-30)


def reconstruction_error(reconstruction: jax.Array, images: jax.Array) -> jax.Array:
    """Per-sample mean squared error over pixels and channels, `[B, H, W, C]` → `[B]`."""
    diff = reconstruction.astype(jnp.float32) - images.astype(jnp.float32)
    return jnp.mean(diff * diff, axis=(1, 2, 3))


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            # mnist (also fmnist and digits at 28 px), quickdraw (28 px), svhn or cifar10
            # (32 px): the official encoder/decoder pair.
            "arch": "mnist",
            "latent_dim": 256,
            "prototypes_per_class": 5,
            "similarity_eps": 1e-4,
            # False: z = μ, as the official code behaves; True: z = μ + σ·ε in training.
            "sample_latent": False,
            # A term of weight 0 leaves the loss; the diversity terms are still logged.
            "loss_weights": {
                "cross_entropy": 1.0,
                "reconstruction": 1.0,
                "kl": 1.0,
                "orthonormality": 1.0,
            },
            # prototypes: ‖P̃P̃ᵀ − I_M‖ as the latest official model.py; dimensions:
            # ‖P̃ᵀP̃ − I_d‖ as the code released with the paper (fa1d9e1).
            "orthonormality": "prototypes",
        }
    )


def default_optim_config() -> ConfigDict:
    # One Adam for encoder, prototypes, decoder and last layer; no decay, no schedule.
    return ConfigDict({"lr": 1e-3})


class ProtoVAE(ClassTargets, Method):
    """ProtoVAE under the method protocol (see the module docstring)."""

    name = "protovae"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        model = config.model
        arch = vae_arch(model.arch, dataset.image_shape)
        unknown = set(model.loss_weights) - set(self.default_model_config().loss_weights)
        if unknown:
            raise UsageError(f"Unknown model.loss_weights {sorted(unknown)}.")
        if model.orthonormality not in ORTHONORMALITY_FORMS:
            raise UsageError(
                f"Unknown model.orthonormality '{model.orthonormality}'; use one of "
                f"{', '.join(ORTHONORMALITY_FORMS)}."
            )
        self.config = config
        self.class_names = tuple(dataset.class_names)
        self.num_classes = dataset.num_classes
        self.prototypes_per_class = model.prototypes_per_class
        self.loss_weights = {k: float(v) for k, v in model.loss_weights.items() if v}
        self.net = ProtoVAENet(
            arch,
            model.latent_dim,
            dataset.num_classes,
            model.prototypes_per_class,
            dataset.image_shape[-1],
            model.similarity_eps,
            compute_dtype(config),
        )

    @staticmethod
    def default_model_config() -> ConfigDict:
        """This method's `config.model` defaults (a subclass names its own)."""
        return default_model_config()

    # --- the protocol ------------------------------------------------------------------
    def init(self, rng, batch):
        active = jnp.ones((self.num_classes * self.prototypes_per_class,), bool)
        images = jnp.asarray(batch["image"])
        variables = dict(self.net.init({"params": rng}, images, active, train=False))
        variables[layer.STATE] = layer.initial_prototype_state(
            self.num_classes, self.prototypes_per_class
        )
        return variables

    def grouped(self, variables) -> tuple[jax.Array, jax.Array]:
        """Prototypes `[K, M, d]` and their `active` flags `[K, M]`, grouped by class."""
        return layer.grouped(variables, self.num_classes)

    def diversity_terms(self, grouped, active) -> dict[str, jax.Array]:
        """The loss's diversity terms of the class-grouped prototypes `[K, M, d]` (`active
        [K, M]`): ProtoVAE's orthonormality. Every term returned is logged, whatever its
        weight; a subclass with another diversity term overrides this hook."""
        form = self.config.model.orthonormality
        return {"orthonormality": orthonormality_loss(grouped, active=active, form=form)}

    def loss_terms(self, params, state, batch, rng, phase):
        """(terms, outputs, new_state): every weighted loss term as a scalar, and the
        diversity terms whatever their weight."""
        prototype_state = state[layer.STATE]
        outputs, updates = self.net.apply(
            {"params": params, **layer.model_collections(state)},
            batch["image"],
            prototype_state["active"],
            train=phase.update_batch_stats,
            noise_rng=rng if self.sample_latent else None,
            mutable=["batch_stats"],
        )
        labels, valid = batch["label"], batch["valid"]
        terms = {
            "cross_entropy": cross_entropy(outputs.logits, labels, valid),
            "reconstruction": masked_mean(
                reconstruction_error(outputs.reconstruction, batch["image"]), valid
            ),
            "kl": masked_mean(
                kl_to_class_prototypes(
                    outputs.mu,
                    outputs.logvar,
                    params["prototypes"],
                    outputs.similarities,
                    labels,
                    prototype_state["prototype_class"],
                    active=prototype_state["active"],
                ),
                valid,
            ),
        }
        terms = {name: value for name, value in terms.items() if name in self.loss_weights}
        terms |= self.diversity_terms(*self.grouped({"params": params, **state}))
        return terms, outputs, {**state, **updates}

    @property
    def sample_latent(self) -> bool:
        return self.config.model.sample_latent

    def loss(self, params, state, batch, rng, phase):
        terms, outputs, new_state = self.loss_terms(params, state, batch, rng, phase)
        total = sum(weight * terms[name] for name, weight in self.loss_weights.items())
        metrics = {
            "loss": total,
            **terms,
            "accuracy": accuracy(outputs.logits, batch["label"], batch["valid"]),
        }
        return total, (metrics, new_state)

    def mask_updates(self, updates, state):
        """Freezes inactive prototypes and their last-layer rows (Adam's moments would
        otherwise keep moving them after elimination)."""
        return layer.mask_updates(updates, state[layer.STATE]["active"])

    def _infer(self, variables, images):
        active = variables[layer.STATE]["active"]
        return self.net.apply(
            layer.model_collections(variables), images, active, method=ProtoVAENet.infer
        )

    def predict(self, variables, images):
        return self._infer(variables, images)[2]

    def embed(self, variables, images):
        """μ `[B, d]`, the latent that classifies (z = μ at inference)."""
        return self.net.apply(
            layer.model_collections(variables), images, method=ProtoVAENet.encode
        )[0]

    def phases(self, config):
        adam = optim.adam(config.optim.lr)
        return [Phase("train", config.train.epochs, "adam", ((".*", adam),))]

    def targets(self, variables):
        """Score functions `fn(images [B,H,W,C], targets [B]) -> [B]`:

        - `class_logit` and `class_probability`: of class `targets`;
        - `prototype_similarity`: the similarity log((d + 1)/(d + eps)) to prototype `targets`;
        - `latent_similarity`: Σ_d 1/((μ_d − p_d)² + 1e-4) for prototype `targets`, the
          per-dimension latent similarity that seeds ProtoVAE's PRP explanations;
        - `prp`: the same total relevance as `explain.prp.prp_score`, whose LRP (composite
          `prp`) is PRP for prototype `targets`;

        and `embedding(images) -> [B, d]`, μ.
        """
        prp = jax.tree_util.Partial(
            prp_score,
            jax.tree_util.Partial(self.embed, variables),
            protovae_relevance(variables["params"]["prototypes"], epsilon=PRP_EPS),
        )
        return {
            **self.class_targets(variables),
            "prp": prp,
            "prototype_similarity": jax.tree_util.Partial(self._prototype_similarity, variables),
            "latent_similarity": jax.tree_util.Partial(self._latent_similarity, variables),
        }

    def _prototype_similarity(self, variables, images, prototypes):
        return pick(self._infer(variables, images)[1], prototypes)

    def _latent_similarity(self, variables, images, prototypes):
        mu = self.embed(variables, images)
        chosen = variables["params"]["prototypes"][prototypes.astype(jnp.int32)]  # [B, d]
        return jnp.sum(1.0 / ((mu - chosen) ** 2 + PRP_EPS), axis=-1)

    # --- summary and figures --------------------------------------------------------------
    def log_volume(self, variables) -> float:
        """`prototype_log_volume` of the active prototypes: mean over classes of
        ½·logdet(P_k P_kᵀ), uncentred."""
        grouped, active = self.grouped(variables)
        return float(prototype_log_volume(grouped, active=active))

    def summarize(self, variables, ctx):
        return {"prototype_log_volume": self.log_volume(variables)}

    @functools.cached_property
    def _decode(self):
        return jax.jit(
            lambda variables, z: self.net.apply(
                layer.model_collections(variables), z, method=ProtoVAENet.decode
            )
        )

    @functools.cached_property
    def _inputs_and_reconstructions(self):
        def forward(variables, batch):
            outputs = self.net.apply(
                layer.model_collections(variables),
                batch["image"],
                variables[layer.STATE]["active"],
                train=False,
            )
            return {"image": batch["image"], "rebuilt": outputs.reconstruction}

        return jax.jit(forward)

    @functools.cached_property
    def _latents_and_labels(self):
        return jax.jit(
            lambda variables, batch: {
                "mu": self.embed(variables, batch["image"]),
                "label": batch["label"],
            }
        )

    def _display(self, images: np.ndarray) -> np.ndarray:
        from protojax.data.pipeline import denormalize

        normalization = self.config.data.normalization
        return np.clip(denormalize(np.asarray(images, np.float32), normalization), 0, 1)

    def figures(self, variables, ctx):
        return [
            self.prototype_figure(variables, ctx),
            self.reconstruction_figure(variables, ctx),
            self.latent_figure(variables, ctx),
        ]

    def prototype_figure(self, variables, ctx):
        """Decoded prototypes, one row per class; eliminated ones are crossed out."""
        decoded = self._display(self._decode(variables, variables["params"]["prototypes"]))
        fig = figures.decoded_prototypes(
            decoded,
            np.asarray(variables[layer.STATE]["active"]),
            prototypes_per_class=self.prototypes_per_class,
            class_names=self.class_names,
            title=f"{self.name}: decoded prototypes (rows: classes)",
        )
        return ctx.save_figure(fig, "prototypes.png")

    def reconstruction_figure(self, variables, ctx, *, per_class: int = 2):
        """`per_class` test images of each of the first ten classes (top) above their
        reconstructions."""
        labels = ctx.dataset.split("test").labels
        chosen = np.concatenate(
            [np.flatnonzero(labels == c)[:per_class] for c in range(min(self.num_classes, 10))]
        )
        forward = functools.partial(self._inputs_and_reconstructions, variables)
        rows = ctx.collect(forward, "test", indices=chosen)
        fig = figures.reconstructions(
            self._display(rows["image"]),
            self._display(rows["rebuilt"]),
            title="Test images and their reconstructions",
        )
        return ctx.save_figure(fig, "reconstructions.png")

    def latent_figure(self, variables, ctx, *, max_points: int = 5000):
        """2-D PCA of test latents μ (at most `max_points`), prototypes as stars."""
        indices = np.arange(min(len(ctx.dataset.split("test")), max_points))
        forward = functools.partial(self._latents_and_labels, variables)
        rows = ctx.collect(forward, "test", indices=indices)
        state = variables[layer.STATE]
        fig = figures.latent_pca(
            rows["mu"],
            rows["label"],
            np.asarray(variables["params"]["prototypes"]),
            np.asarray(state["prototype_class"]),
            np.asarray(state["active"]),
            class_names=self.class_names,
            title=f"{self.name}: test latents μ (dots) and prototypes (stars), PCA",
        )
        return ctx.save_figure(fig, "latent_pca.png")


def build(config: ConfigDict, dataset: Dataset) -> ProtoVAE:
    return ProtoVAE(config, dataset)


__all__ = [
    "ProtoVAE",
    "build",
    "kl_to_class_prototypes",
    "orthonormality_loss",
    "reconstruction_error",
]


def own_explanation(method, variables, config, dataset, *, split, indices, out):
    """The explain launcher's hook: each image of `indices` beside its reconstruction and the
    decoded prototypes adding most to its predicted logit, with their similarities
    (`explain.prototypes.write_decoded_explanations`). Pantypes shares it."""
    from protojax.data.pipeline import normalize
    from protojax.explain.prototypes import Explained, write_decoded_explanations

    raw = dataset.split(split).get_batch(np.asarray(indices))
    images = jnp.asarray(normalize(raw["image"], config.data.normalization))
    _, sims, logits = (np.asarray(a) for a in method._infer(variables, images))
    rebuilt = method._inputs_and_reconstructions(variables, {"image": images})["rebuilt"]
    decoded = method._decode(variables, variables["params"]["prototypes"])
    state = jax.device_get(variables[layer.STATE])
    kernel = np.asarray(variables["params"]["last_layer"]["kernel"])
    explained = Explained(raw["image"], np.asarray(indices), raw["label"], logits, sims, kernel,
                          state["active"], state["prototype_class"])  # fmt: skip
    return write_decoded_explanations(
        out, explained, method._display(rebuilt), method._display(decoded),
        class_names=dataset.class_names,
    )  # fmt: skip
