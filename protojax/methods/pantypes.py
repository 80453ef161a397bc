"""Pantypes / PanVAE (Kjærsgaard, Boubekki, Clemmensen, AAAI 2024): ProtoVAE whose diversity
term is volumetric.

The module, the KL, the reconstruction, the classifier and the optimizer are ProtoVAE's
(`protojax.methods.protovae`); Pantypes overrides ProtoVAE's diversity hook with the inverse
volume (1/K) Σ_k 1/√det(c·P_k P_kᵀ) of each class's uncentred prototypes
(`model.py::volume_loss` of RuneDK93/pantypes), weight 1, and sets orthonormality's weight to
0 (`c` is `model.volume_scale`). Minimising it makes each class's prototypes span a large
volume, so a class may have at most `latent_dim` prototypes. The orthonormality term is still
logged (`orthonormality` in metrics.jsonl), as the official code logs it.

After every epoch, one ordered pass over the training set (inference mode, z = μ) assigns every
sample to its most similar active prototype and logs (a metrics.jsonl event):

- `out_of_distribution_per_class`: per class, the active prototypes that no training sample
  is most similar to;
- `davies_bouldin`: Davies–Bouldin score of the in-distribution prototypes as cluster centres
  of their assigned latents (lower is better);
- `coverage`: the mean over classes of the convex-hull area of the class's "sample" over the
  area of the whole class, in a 2-D PCA of the class's latents. The sample rule of the paper
  is not public; `prototypes.diversity.coverage_sample` takes the class's points whose
  distance to the nearest active prototype of the class is at most the class's median of it;
- `prototype_log_volume`: mean over classes of ½·logdet(P_k P_kᵀ) of the active prototypes.

The official code collects these from the training epoch's own batches (BatchNorm in train
mode); a separate pass in inference mode makes them deterministic. With
`model.usage_from=training_batches` the out-of-distribution judgement follows the official
code: every training step counts, in train mode, each prototype's valid rows that find it
most similar (`prototype_state/usage_counts`, reset after each epoch).

With `model.eliminate_at_epoch = E > 0`, the out-of-distribution prototypes are eliminated
after E epochs (counted from 1: the official `if epoch == 120` is 0-based, so it is E = 121):
their `active` flag is cleared (shapes stay static), so they leave the logits, the KL, the
volume and orthonormality terms and the diagnostics, and `mask_updates` freezes them. A class
never loses its last active prototype: if all of them are out of distribution, the one with
the largest summed similarity to the class's samples stays. Adam's moments are kept; with
`model.reset_optimizer=True` the remaining epochs run on a fresh Adam (every moment and the
step count restart). The official code restarts only those of the prototypes and the last
layer, whose parameters it re-creates (`main.py:333-356`).

Every departure from the official code is listed in docs/fidelity.md.
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.explain.figures import pca_2d
from protojax.methods import protovae
from protojax.methods.protovae import ProtoVAE, own_explanation
from protojax.prototypes import layer
from protojax.prototypes.diversity import (
    coverage,
    coverage_sample,
    davies_bouldin,
    inverse_volume_loss,
    prototype_usage,
)
from protojax.train.protocol import Phase


def default_model_config() -> ConfigDict:
    config = protovae.default_model_config()
    config.loss_weights.orthonormality = 0.0
    config.loss_weights.inverse_volume = 1.0
    # c in 1/√det(c·P_k P_kᵀ).
    config.volume_scale = 1.0
    # Eliminate out-of-distribution prototypes after this many epochs, counted from 1 (the
    # official `if epoch == 120` counts from 0: it is 121 here); 0 never does.
    config.eliminate_at_epoch = 0
    # Restart Adam (all moments and the step count) after the elimination; False keeps them.
    config.reset_optimizer = False
    # Which similarities judge a prototype unused: inference_pass (one ordered pass in
    # inference mode after the epoch) or training_batches (the epoch's own training steps,
    # BatchNorm in train mode, as the official code does).
    config.usage_from = "inference_pass"
    return config


USAGE_SOURCES = ("inference_pass", "training_batches")
# The optimizer of the epochs after an elimination with model.reset_optimizer.
RESET_OPTIMIZER = "adam_after_elimination"

default_optim_config = protovae.default_optim_config
_davies_bouldin = jax.jit(davies_bouldin)
_coverage_sample = jax.jit(coverage_sample)


class Diagnostics(NamedTuple):
    """Prototype diagnostics over the training set (see the module docstring).

    Attributes:
      counts: `[P]` training samples whose most similar active prototype is each one.
      out_of_distribution: `[P]` bool, active prototypes with a count of 0.
      out_of_distribution_per_class: `[K]` int.
      class_similarity: `[P]` summed similarity of each prototype to its own class's samples.
      davies_bouldin: float.
      coverage: float, mean over classes.
      prototype_log_volume: float.
    """

    counts: np.ndarray
    out_of_distribution: np.ndarray
    out_of_distribution_per_class: np.ndarray
    class_similarity: np.ndarray
    davies_bouldin: float
    coverage: float
    prototype_log_volume: float


def class_coverage(latents: np.ndarray, sample: np.ndarray) -> float:
    """Coverage of one class: the hull of its `sample [n]` points over the hull of all its
    `latents [n, d]`, both on the class's first two principal components."""
    mean, to_2d = pca_2d(latents)
    points = (latents - mean) @ to_2d
    return coverage(points, points[sample])


def eliminate(
    active: np.ndarray,
    out_of_distribution: np.ndarray,
    prototype_class: np.ndarray,
    class_similarity: np.ndarray,
) -> np.ndarray:
    """The new `active [P]` flags: the out-of-distribution prototypes cleared, except that a
    class keeps its active prototype of largest `class_similarity` when all would go."""
    keep = active & ~out_of_distribution
    for c in np.unique(prototype_class):
        mine = (prototype_class == c) & active
        if mine.any() and not keep[mine].any():
            candidates = np.flatnonzero(mine)
            keep[candidates[np.argmax(class_similarity[candidates])]] = True
    return keep


class Pantypes(ProtoVAE):
    """ProtoVAE with the inverse-volume term, per-epoch diagnostics and optional elimination."""

    name = "pantypes"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        model = config.model
        if model.prototypes_per_class > model.latent_dim:
            raise UsageError(
                f"model.prototypes_per_class={model.prototypes_per_class} prototypes span at "
                f"most model.latent_dim={model.latent_dim} dimensions, so their volume is 0; "
                "use at most latent_dim prototypes per class."
            )
        super().__init__(config, dataset)
        self.eliminate_at_epoch = model.eliminate_at_epoch
        self.reset_optimizer = model.reset_optimizer
        if self.reset_optimizer and not self.eliminate_at_epoch:
            raise UsageError(
                "model.reset_optimizer restarts Adam at the elimination; set "
                "model.eliminate_at_epoch too."
            )
        if model.usage_from not in USAGE_SOURCES:
            raise UsageError(
                f"Unknown model.usage_from '{model.usage_from}'; use one of "
                f"{', '.join(USAGE_SOURCES)}."
            )
        self.count_in_training = model.usage_from == "training_batches"

    @staticmethod
    def default_model_config() -> ConfigDict:
        return default_model_config()

    def diversity_terms(self, grouped, active):
        """ProtoVAE's orthonormality (logged) and, when weighted, the inverse volume. The
        inverse volume can overflow float32 for nearly singular prototypes, which would stop
        a run over a diagnostic, so it is computed only when it enters the loss."""
        terms = super().diversity_terms(grouped, active)
        if "inverse_volume" in self.loss_weights:
            scale = self.config.model.volume_scale
            terms["inverse_volume"] = inverse_volume_loss(grouped, active=active, scale=scale)
        return terms

    def init(self, rng, batch):
        variables = super().init(rng, batch)
        if self.count_in_training:
            state = variables["prototype_state"]
            counts = jnp.zeros(state["active"].shape, jnp.int32)
            variables["prototype_state"] = {**state, "usage_counts": counts}
        return variables

    def loss_terms(self, params, state, batch, rng, phase):
        terms, outputs, new_state = super().loss_terms(params, state, batch, rng, phase)
        if self.count_in_training:
            prototype_state = new_state["prototype_state"]
            similar = jnp.where(prototype_state["active"], outputs.similarities, -jnp.inf)
            nearest = jnp.argmax(similar, axis=1)
            counts = (
                prototype_state["usage_counts"].at[nearest].add(batch["valid"].astype(jnp.int32))
            )
            prototype_state = {**prototype_state, "usage_counts": counts}
            new_state = {**new_state, "prototype_state": prototype_state}
        return terms, outputs, new_state

    def phases(self, config):
        (phase,) = super().phases(config)

        def train(epochs, optimizer):
            return Phase(
                phase.name,
                epochs,
                optimizer,
                phase.trainable,
                frozen=phase.frozen,
                after_epoch=self.after_epoch,
            )

        split = self.eliminate_at_epoch
        if self.reset_optimizer and 0 < split < phase.epochs:
            # A new optimizer name starts from a fresh state.
            return [train(split, phase.optimizer), train(phase.epochs - split, RESET_OPTIMIZER)]
        return [train(phase.epochs, phase.optimizer)]

    @functools.cached_property
    def _latents_and_similarities(self):
        def forward(variables, batch):
            mu, similarities, _ = self._infer(variables, batch["image"])
            return {"mu": mu, "similarities": similarities, "label": batch["label"]}

        return jax.jit(forward)

    def diagnostics(self, variables, ctx) -> Diagnostics:
        """One ordered pass over the training split; see `Diagnostics`."""
        rows = ctx.collect(functools.partial(self._latents_and_similarities, variables), "train")
        latents, similarities, labels = rows["mu"], rows["similarities"], rows["label"]
        owner = np.asarray(variables[layer.STATE]["prototype_class"])
        active = np.asarray(variables[layer.STATE]["active"])

        usage = prototype_usage(similarities, owner, active=active)
        grouped, grouped_active = self.grouped(variables)
        assignment = np.argmax(np.where(active[None, :], similarities, -np.inf), axis=1)
        db = _davies_bouldin(latents, assignment, grouped, active=grouped_active)
        sample = np.asarray(_coverage_sample(latents, labels, grouped, active=grouped_active))
        per_class_coverage = [
            class_coverage(latents[labels == c], sample[labels == c])
            for c in range(self.num_classes)
            if (labels == c).sum() >= 3
        ]
        own_class = labels[:, None] == owner[None, :]
        return Diagnostics(
            counts=usage.counts,
            out_of_distribution=active & (usage.counts == 0),
            out_of_distribution_per_class=np.bincount(
                owner[usage.unused], minlength=self.num_classes
            ),
            class_similarity=np.sum(np.where(own_class, similarities, 0.0), axis=0),
            davies_bouldin=float(db),
            coverage=float(np.mean(per_class_coverage)),
            prototype_log_volume=self.log_volume(variables),
        )

    def after_epoch(self, variables, ctx):
        """Logs the diagnostics (one event); at epoch `model.eliminate_at_epoch`, eliminates
        the out-of-distribution prototypes and logs their indices as `eliminated_prototypes`.
        With `model.usage_from=training_batches` the epoch's training counts judge them, and
        are reset."""
        stats = self.diagnostics(variables, ctx)
        epoch = ctx.step // pipeline.steps_per_epoch(
            ctx.dataset.split("train"),
            ctx.config.data.batch_size,
            drop_last=ctx.config.data.drop_last,
        )
        active = np.asarray(variables["prototype_state"]["active"])
        if self.count_in_training:
            prototype_state = variables["prototype_state"]
            counts = np.asarray(prototype_state["usage_counts"])
            owner = np.asarray(prototype_state["prototype_class"])
            unused = active & (counts == 0)
            stats = stats._replace(
                counts=counts,
                out_of_distribution=unused,
                out_of_distribution_per_class=np.bincount(
                    owner[unused], minlength=self.num_classes
                ),
            )
            zeros = jnp.zeros_like(prototype_state["usage_counts"])
            variables = {**variables, "prototype_state": {**prototype_state, "usage_counts": zeros}}
        event = {
            "epoch": epoch,
            "active_prototypes": int(active.sum()),
            "out_of_distribution_per_class": stats.out_of_distribution_per_class.tolist(),
            "davies_bouldin": stats.davies_bouldin,
            "coverage": stats.coverage,
            "prototype_log_volume": stats.prototype_log_volume,
        }
        if epoch == self.eliminate_at_epoch:
            owner = np.asarray(variables["prototype_state"]["prototype_class"])
            new_active = eliminate(active, stats.out_of_distribution, owner, stats.class_similarity)
            eliminated = np.flatnonzero(active & ~new_active).tolist()
            event["eliminated_prototypes"] = eliminated
            ctx.record("eliminated_prototypes", eliminated)
            variables = layer.with_active(variables, new_active)
        ctx.log(**event)
        return variables

    def summarize(self, variables, ctx):
        active = np.asarray(variables["prototype_state"]["active"])
        return {**super().summarize(variables, ctx), "active_prototypes": int(active.sum())}


def build(config: ConfigDict, dataset: Dataset) -> Pantypes:
    return Pantypes(config, dataset)


__all__ = [
    "Diagnostics",
    "Pantypes",
    "build",
    "class_coverage",
    "eliminate",
    "inverse_volume_loss",
    "own_explanation",
]
