"""Pantypes / PanVAE (Kjærsgaard, Boubekki, Clemmensen, AAAI 2024): ProtoVAE whose diversity
term is volumetric.

The module, the KL, the reconstruction, the classifier and the optimizer are ProtoVAE's
(`protojax.methods.protovae`); only the loss weights differ: orthonormality 0 and the inverse
volume (1/K) Σ_k 1/√det(c·P_k P_kᵀ) of each class's uncentred prototypes 1 (METHODS.md §3.1).
Minimising it makes each class's prototypes span a large volume. The orthonormality term is
still logged (`orthonormality` in metrics.jsonl), as the official code logs it.

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
mode); a separate pass in inference mode makes them deterministic.

With `model.eliminate_at_epoch = E > 0`, the out-of-distribution prototypes are eliminated
after epoch E: their `active` flag is cleared (shapes stay static), so they leave the logits,
the KL, the volume and orthonormality terms and the diagnostics, and `mask_updates` freezes
them. A class never loses its last active prototype: if all of them are out of distribution,
the one with the largest summed similarity to the class's samples stays.
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
from protojax.methods import protovae
from protojax.methods.protovae import ProtoVAE, ProtoVAENet
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
    # Eliminate out-of-distribution prototypes after this epoch; 0 never does.
    config.eliminate_at_epoch = 0
    return config


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
    centred = latents - latents.mean(axis=0)
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    points = centred @ vt[:2].T
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
        super().__init__(config, dataset)
        self.eliminate_at_epoch = config.model.eliminate_at_epoch

    def phases(self, config):
        (phase,) = super().phases(config)
        return [
            Phase(
                phase.name,
                phase.epochs,
                phase.optimizer,
                phase.trainable,
                frozen=phase.frozen,
                after_epoch=self.after_epoch,
            )
        ]

    @functools.cached_property
    def _latents_and_similarities(self):
        def forward(variables, images):
            mu, similarities, _ = self.net.apply(variables, images, method=ProtoVAENet.infer)
            return mu, similarities

        return jax.jit(forward)

    def diagnostics(self, variables, ctx) -> Diagnostics:
        """One ordered pass over the training split; see `Diagnostics`."""
        latents, similarities, labels = [], [], []
        for batch in ctx.ordered_batches("train"):
            valid = ctx.host(batch["valid"])
            mu, sims = self._latents_and_similarities(variables, batch["image"])
            latents.append(ctx.host(mu)[valid])
            similarities.append(ctx.host(sims)[valid])
            labels.append(ctx.host(batch["label"])[valid])
        latents, similarities = np.concatenate(latents), np.concatenate(similarities)
        labels = np.concatenate(labels)
        owner = np.asarray(variables["prototype_state"]["prototype_class"])
        active = np.asarray(variables["prototype_state"]["active"])

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
        the out-of-distribution prototypes and logs their indices as `eliminated_prototypes`."""
        stats = self.diagnostics(variables, ctx)
        epoch = ctx.step // pipeline.steps_per_epoch(
            ctx.dataset.split("train"), ctx.config.data.batch_size
        )
        active = np.asarray(variables["prototype_state"]["active"])
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
            state = {**variables["prototype_state"], "active": jnp.asarray(new_active)}
            variables = {**variables, "prototype_state": state}
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
]
