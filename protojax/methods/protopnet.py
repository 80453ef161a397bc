"""ProtoPNet (Chen et al., NeurIPS 2019, "This Looks Like That"), as its official code runs.

Model (`protojax.nn.protopnet`): backbone → sigmoid add-ons → latent map z `[B, h, w, D]` →
squared L2 distances to P = K·M class-owned prototypes → minimum over patches → similarity
log((d + 1) / (d + ε)) → a bias-free last layer (1 to the own class, −0.5 to the others).

Loss: CE + 0.8·cluster − 0.08·separation + 1e-4·L1 on the wrong-class weights (the costs
are shared kernels, `protojax.prototypes.costs`).

Stages (the official `main.py`, planned by `protojax.prototypes.schedule`), counted in ProtoPNet
epochs (`config.train.epochs` of them):
- epochs `< warm_epochs`: warm-up, add-ons and prototypes only (Adam, own state);
- later epochs: joint, everything but the last layer; StepLR(5, 0.1) stepped before each
  joint epoch, so the first decay comes after 4 joint epochs;
- after epoch e ≥ `push_start` with e % `push_every` == 0: push (each prototype replaced by
  its nearest latent training patch of its class), a test, then `last_layer_epochs` epochs
  of the last layer alone (CE + L1). The joint and last-layer Adam states persist across
  revisits, as the official optimizers do.
- optionally, pruning (`prune.py`): prototypes with fewer than `threshold` of their `k`
  nearest training images in their class are switched off, then the last layer is
  fine-tuned.

Faithful defaults that differ from the paper's text, each switchable in `config.model`:
the last layer is frozen until the first push (it is in neither the warm nor the joint
optimizer), Adam's weight decay is coupled L2 (torch.optim), and BatchNorm statistics keep
updating in the warm and last-layer stages (the official code trains in `train()` mode).

The prototypes, their last layer and `prototype_state` are the shared prototype layer
(`protojax.prototypes.layer`): the official initialisation, classification at HIGHEST
precision, and `prototype_state` kept outside Flax with the push bookkeeping. Prototype counts
never change shape: pruning flips `prototype_state/active`, masks the prototype out of the
logits and freezes its last-layer row and vector (`mask_updates`).

summary.json gets `test_accuracy_before_push` and `test_accuracy_after_push` of the first
push, `push_history` with both for every push (also logged as `push` events), and, after
pruning, `pruned_prototypes` and the test accuracies before and after it. Each push writes
its prototypes' images and an `index.json` under `figures/prototypes/push_NN/`.

Every departure from the official code is listed in docs/fidelity.md.
"""

from __future__ import annotations

import functools
import math
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict, compute_dtype
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.explain import prototypes as views
from protojax.explain.prp import protopnet_relevance, prp_score
from protojax.methods.common import ClassTargets, accuracy, accuracy_on_test, cross_entropy, pick
from protojax.nn.add_on import add_on_widths
from protojax.nn.protopnet import Activations, ProtoPNetModule
from protojax.nn.receptive_field import receptive_field_boxes
from protojax.nn.weights import load_configured_backbone
from protojax.prototypes import costs, layer, log_similarity, projection
from protojax.prototypes.schedule import stage_plan
from protojax.train import optim
from protojax.train.protocol import Method, Phase


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            "backbone": "small_cnn",
            "stem": "imagenet",
            # A converted .npz (experiments/convert_weights.py) loaded into the backbone at the
            # start of a fresh run; empty trains the backbone from scratch.
            "backbone_weights": "",
            # Train from a random backbone when backbone_weights names a missing file.
            "allow_random_init": False,
            "prototypes_per_class": 10,
            "prototype_dim": 128,
            "add_on_layers": "regular",  # regular | bottleneck
            "epsilon": 1e-4,
            "incorrect_class_connection": -0.5,
            # Each term's coefficient; the sign of separation sits in its coefficient.
            "coefs": {"cross_entropy": 1.0, "cluster": 0.8, "separation": -0.08, "l1": 1e-4},
            "warm_epochs": 5,
            "push_start": 10,
            "push_every": 10,
            "last_layer_epochs": 20,
            # Passes over the training split per ProtoPNet epoch: the official CUB epoch is
            # one pass over a 30× offline-augmented copy. Multiplies every epoch count.
            "passes_per_epoch": 1,
            # Rounded up to a multiple of the device count (push is exact at any size).
            "push_batch_size": 75,
            "save_prototype_images": True,
            # Faithful to the official code; True trains the last layer in warm and joint too.
            "train_last_layer_before_push": False,
            # Faithful: coupled L2 as torch.optim.Adam; True uses AdamW.
            "decoupled_weight_decay": False,
            # Faithful: BN statistics update in the warm and last-layer stages; False freezes
            # them there (and normalises with the running averages).
            "frozen_stages_update_batch_stats": True,
            "prune": {"enabled": False, "k": 6, "threshold": 3, "last_layer_epochs": 100},
        }
    )


def default_optim_config() -> ConfigDict:
    return ConfigDict(
        {
            "warm_add_on_lr": 3e-3,
            "warm_prototype_lr": 3e-3,
            "joint_backbone_lr": 1e-4,
            "joint_add_on_lr": 3e-3,
            "joint_prototype_lr": 3e-3,
            "last_layer_lr": 1e-4,
            # On the backbone and add-on layers (biases and BN parameters included), never on
            # the prototypes or the last layer.
            "weight_decay": 1e-3,
            "joint_step_size": 5,
            "joint_gamma": 0.1,
        }
    )


# Where each push writes its prototypes' PNGs, under the run's figures folder.
PROTOTYPE_IMAGES = "prototypes"


class ProtoPNet(ClassTargets, Method):
    """ProtoPNet under the method protocol (see the module docstring)."""

    name = "protopnet"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        m = config.model
        if m.prototypes_per_class < 1 or m.prototype_dim < 1:
            raise UsageError(
                "model.prototypes_per_class and model.prototype_dim must be positive, got "
                f"{m.prototypes_per_class} and {m.prototype_dim}."
            )
        add_on_widths(m.add_on_layers, 1, 1)  # validates the kind
        self.config = config
        self.class_names = tuple(dataset.class_names)
        self.image_shape = tuple(dataset.image_shape)
        self.num_classes = dataset.num_classes
        self.prototypes_per_class = m.prototypes_per_class
        self.num_prototypes = dataset.num_classes * m.prototypes_per_class
        self.net = ProtoPNetModule(
            arch=m.backbone,
            stem=m.stem,
            num_classes=dataset.num_classes,
            prototypes_per_class=m.prototypes_per_class,
            prototype_dim=m.prototype_dim,
            add_on_kind=m.add_on_layers,
            epsilon=m.epsilon,
            incorrect_class_connection=m.incorrect_class_connection,
            dtype=compute_dtype(config),
        )
        self._latent_map = jax.jit(self._latent)
        self._activations = jax.jit(self._activations_impl)

    # --- protocol ----------------------------------------------------------------------
    def init(self, rng, batch):
        active = jnp.ones((self.num_prototypes,), bool)
        variables = dict(self.net.init(rng, batch["image"], active, train=False))
        variables[layer.STATE] = layer.initial_prototype_state(
            self.num_classes, self.prototypes_per_class, push=True
        )
        return variables

    def load_pretrained(self, variables):
        return load_configured_backbone(variables, self.config.model)

    def loss(self, params, state, batch, rng, phase):
        del rng
        prototype_state = state["prototype_state"]
        active = prototype_state["active"]
        train = phase.update_batch_stats
        (logits, min_distances), updates = self.net.apply(
            {"params": params, **layer.model_collections(state)},
            batch["image"],
            active,
            train=train,
            mutable=["batch_stats"] if train else [],
        )
        labels, valid = batch["label"], batch["valid"]
        classes = prototype_state["prototype_class"]
        by_class = (min_distances, labels, classes, active)
        terms = {
            "cross_entropy": cross_entropy(logits, labels, valid),
            "cluster": costs.cluster_cost(*by_class, valid=valid),
            "separation": costs.separation_cost(*by_class, valid=valid),
            "l1": costs.l1_wrong_class(params["last_layer"]["kernel"], classes, active),
        }
        coefs = self.config.model.coefs
        total = sum(coefs[name] * value for name, value in terms.items())
        metrics = {
            "loss": total,
            **terms,
            "average_separation": costs.average_separation(*by_class, valid=valid),
            "accuracy": accuracy(logits, labels, valid),
        }
        return total, (metrics, {**state, **updates})

    def mask_updates(self, updates, state):
        """Freezes the last-layer row and the vector of every inactive (pruned) prototype."""
        return layer.mask_updates(updates, state[layer.STATE]["active"])

    def predict(self, variables, images):
        active = variables["prototype_state"]["active"]
        return self.net.apply(layer.model_collections(variables), images, active)[0]

    def embed(self, variables, images):
        """The prototype similarities `[B, P]`, the last layer's input."""
        active = variables["prototype_state"]["active"]
        _, min_distances = self.net.apply(layer.model_collections(variables), images, active)
        return log_similarity(min_distances, eps=self.config.model.epsilon)

    def phases(self, config):
        m, o = config.model, config.optim
        passes = m.passes_per_epoch
        decay = {"weight_decay": o.weight_decay, "decoupled": m.decoupled_weight_decay}
        # StepLR stepped before each joint epoch: gamma ** ((joint epoch + 1) // step_size),
        # with every count in passes over the split.
        schedule = optim.step_decay(o.joint_step_size * passes, o.joint_gamma, offset=passes)
        last = ("last_layer/.*", optim.adam(o.last_layer_lr))
        warm = (
            ("add_on/.*", optim.adam(o.warm_add_on_lr, **decay)),
            ("prototypes", optim.adam(o.warm_prototype_lr)),
        )
        joint = (
            ("backbone/.*", optim.adam(o.joint_backbone_lr, schedule=schedule, **decay)),
            ("add_on/.*", optim.adam(o.joint_add_on_lr, schedule=schedule, **decay)),
            ("prototypes", optim.adam(o.joint_prototype_lr, schedule=schedule)),
        )
        if m.train_last_layer_before_push:
            warm += (last,)
            joint += ((last[0], optim.adam(o.last_layer_lr, schedule=schedule)),)
        frozen_bn = m.frozen_stages_update_batch_stats
        trained_last = ("last_layer/.*",) if not m.train_last_layer_before_push else ()
        head_only = ("backbone/.*", "add_on/.*", "prototypes")
        kinds = {
            "warm": ("warm", warm, ("backbone/.*", *trained_last), frozen_bn),
            "joint": ("joint", joint, trained_last, True),
            "last": ("last", (last,), head_only, frozen_bn),
            # A fresh Adam, as run_pruning.py builds its own last-layer optimizer.
            "prune_last": ("prune_last", (last,), head_only, frozen_bn),
        }
        phases = []
        for stage in stage_plan(m, config.train.epochs):
            optimizer, trainable, frozen, batch_stats = kinds[stage.kind]
            after = self.push if stage.push_after else self.prune if stage.prune_after else None
            phases.append(
                Phase(
                    stage.kind,
                    stage.epochs * passes,
                    optimizer,
                    trainable,
                    frozen=frozen,
                    update_batch_stats=batch_stats,
                    after=after,
                )
            )
        return phases

    def targets(self, variables):
        """Score functions, each `fn(images [B,H,W,C], targets) -> [B]`:

        - `class_logit(images, classes [B])`;
        - `prototype_similarity(images, prototypes [B])`: prototype j's similarity at its
          nearest patch (the max over patches);
        - `prototype_similarity_at(images, targets [B, 3])`: rows (j, h, w), prototype j's
          similarity at latent location (h, w);
        - `features(images) -> [B, h, w, c]` and `head(feature_map, classes)` for Grad-CAM;
        - `latent(images) -> [B, h, w, D]`, the add-on output the prototypes live in;
        - `class_probability(images, classes)`; `embedding(images) -> [B, P]`, the similarities;
        - `prp(images, prototypes [B])`: `explain.prp.prp_score` of the patch-prototype
          relevance, whose LRP (composite `prp`) is PRP.
        """
        partial = jax.tree_util.Partial
        prp = partial(
            prp_score,
            partial(self.latent_logits, variables),
            protopnet_relevance(
                variables["params"]["prototypes"], epsilon=self.config.model.epsilon, sigmoid=True
            ),
        )
        return {
            **self.class_targets(variables),
            "prp": prp,
            "prototype_similarity": partial(self._prototype_similarity, variables),
            "prototype_similarity_at": partial(self._prototype_similarity_at, variables),
            "features": partial(self._features, variables),
            "head": partial(self._head, variables),
            "latent": partial(self._latent, variables),
        }

    def summarize(self, variables, ctx):
        del ctx
        return {"active_prototypes": int(np.sum(variables["prototype_state"]["active"]))}

    # --- targets -----------------------------------------------------------------------
    def _apply(self, variables, *args, method):
        return self.net.apply(layer.model_collections(variables), *args, method=method)

    def _similarity_maps(self, variables, images):
        return self._apply(variables, images, method=ProtoPNetModule.similarity_maps)

    def _prototype_similarity(self, variables, images, prototypes):
        maps = self._similarity_maps(variables, images)
        return pick(jnp.max(maps, axis=(1, 2)), prototypes)  # max over patches of [B, h, w, P]

    def _prototype_similarity_at(self, variables, images, targets):
        maps = self._similarity_maps(variables, images)
        targets = targets.astype(jnp.int32)
        return maps[jnp.arange(images.shape[0]), targets[:, 1], targets[:, 2], targets[:, 0]]

    def _features(self, variables, images):
        return self._apply(variables, images, method=ProtoPNetModule.features)

    def _head(self, variables, feature_map, classes):
        active = variables[layer.STATE]["active"]
        return pick(
            self._apply(variables, feature_map, active, method=ProtoPNetModule.head), classes
        )

    def latent_logits(self, variables, images):
        """The add-on layers' output before their final sigmoid `[B, h, w, D]` of images
        `[B, H, W, C]`: where PRP starts (a KMEx run on this source reads it too)."""
        return self._apply(variables, images, method=ProtoPNetModule.latent_logits)

    def _latent(self, variables, images):
        return self._apply(variables, images, method=ProtoPNetModule.latent)

    # --- analysis ----------------------------------------------------------------------
    def _activations_impl(self, variables, images):
        active = variables[layer.STATE]["active"]
        return self._apply(variables, images, active, method=ProtoPNetModule.activations)

    def activations(self, variables, images) -> Activations:
        """Logits, similarities and similarity maps of images `[B, H, W, C]` (jitted)."""
        return self._activations(variables, jnp.asarray(images))

    def receptive_fields(self, variables) -> np.ndarray:
        """`[h, w, 4]` receptive-field boxes (y0, x0, y1, x1) of the latent locations, cached
        per architecture and image size."""
        m = self.config.model
        latent = jax.tree_util.Partial(self._latent, variables)
        key = ("protopnet", m.backbone, m.stem, m.add_on_layers, m.prototype_dim)
        return receptive_field_boxes(latent, self.image_shape, cache_key=key)

    # --- push --------------------------------------------------------------------------
    def project(self, variables, ctx) -> projection.ProjectionState:
        """The nearest latent patch of each prototype's class over an ordered pass of the
        training split; memory is that of one batch."""
        return projection.project(
            functools.partial(self._latent_map, variables),
            variables["params"]["prototypes"],
            variables[layer.STATE]["prototype_class"],
            self._train_pass(ctx),
        )

    def _train_pass(self, ctx):
        """`ctx.reduce` over the training split in batches of `pass_batch_size`."""
        size = self.pass_batch_size(ctx.mesh.devices.size)
        return functools.partial(ctx.reduce, split="train", batch_size=size)

    def pass_batch_size(self, num_devices: int) -> int:
        """The batch of push and pruning passes: `model.push_batch_size` rounded up to a
        multiple of the devices (the passes' results do not depend on it)."""
        return math.ceil(self.config.model.push_batch_size / num_devices) * num_devices

    def push(self, variables, ctx):
        """The `after` operation of a push epoch: projects the prototypes, tests before and
        after, records the first push's accuracies and writes the prototype images."""
        history = list(ctx.records.get("push_history", []))
        before = accuracy_on_test(ctx, variables)
        pushed = self.project(variables, ctx)
        variables = layer.apply_projection(variables, pushed)
        after = accuracy_on_test(ctx, variables)
        entry = {
            "push": len(history) + 1,
            "step": ctx.step,
            "test_accuracy_before_push": before,
            "test_accuracy_after_push": after,
            **projection.push_statistics(pushed),
        }
        if not history:
            ctx.record("test_accuracy_before_push", before)
            ctx.record("test_accuracy_after_push", after)
        ctx.record("push_history", [*history, entry])
        ctx.log(event="push", **entry)
        if self.config.model.save_prototype_images:
            directory = ctx.figures_dir / PROTOTYPE_IMAGES / f"push_{entry['push']:02d}"
            self.save_prototype_images(variables, ctx, directory)
        return variables

    # --- pruning -----------------------------------------------------------------------
    def _min_distances(self, variables, images):
        active = variables[layer.STATE]["active"]
        return self.net.apply(layer.model_collections(variables), images, active)[1]

    def nearest_images(self, variables, ctx, *, k: int) -> projection.NearestState:
        """The k nearest training images (through their nearest patch) of every prototype."""
        return projection.nearest_images(
            jax.tree_util.Partial(self._min_distances, variables),
            self.num_prototypes,
            self._train_pass(ctx),
            k=k,
        )

    def prune(self, variables, ctx):
        """The `after` operation that switches off the prototypes with fewer than
        `prune.threshold` of their `prune.k` nearest training images in their own class."""
        settings = self.config.model.prune
        state = variables[layer.STATE]
        before = accuracy_on_test(ctx, variables)
        nearest = self.nearest_images(variables, ctx, k=settings.k)
        active = np.asarray(state["active"])
        pruned = projection.prune_mask(
            nearest.label, state["prototype_class"], active, threshold=settings.threshold
        )
        variables = layer.with_active(variables, active & ~pruned)
        tested = {
            "test_accuracy_before_prune": before,
            "test_accuracy_after_prune": accuracy_on_test(ctx, variables),
        }
        ctx.record("pruned_prototypes", [int(j) for j in np.flatnonzero(pruned)])
        for key, value in tested.items():
            ctx.record(key, value)
        ctx.log(event="prune", pruned=int(pruned.sum()), **tested)
        return variables

    # --- visual bookkeeping ------------------------------------------------------------
    def save_prototype_images(self, variables, ctx, directory: pathlib.Path) -> pathlib.Path:
        """Writes each pushed prototype's PNGs and `index.json`
        (`explain.prototypes.save_prototype_pngs`); returns the index's path. The
        self-activation is the pushed prototype's map on its source image (the official code
        draws the map of the prototype before its replacement). Every process computes the
        maps; only the main process writes."""
        size = self.pass_batch_size(ctx.mesh.devices.size)
        sources = self.prototype_sources(variables, ctx.dataset.split("train"), batch_size=size)
        if not ctx.is_main:
            return directory / "index.json"
        return views.save_prototype_pngs(
            directory,
            sources,
            jax.device_get(variables[layer.STATE]),
            self.receptive_fields(variables),
            class_names=self.class_names,
            image_shape=list(self.image_shape),
            step=ctx.step,
        )

    def prototype_sources(self, variables, train_split, *, batch_size: int):
        """Every pushed prototype's source image, self-activation and 95th-percentile box
        (`explain.prototypes.PrototypeSources`), read from the training split."""
        from protojax.data.pipeline import normalize

        maps = jax.tree_util.Partial(self._similarity_maps, variables)
        return views.prototype_sources(
            functools.partial(views.upsampled_self_activations, maps),
            train_split.get_batch,
            functools.partial(normalize, mode=self.config.data.normalization),
            np.asarray(variables[layer.STATE]["source_index"]),
            batch_size=batch_size,
        )


def build(config: ConfigDict, dataset: Dataset) -> ProtoPNet:
    return ProtoPNet(config, dataset)


def own_explanation(method, variables, config, dataset, *, split, indices, out):
    """The explain launcher's hook: "this looks like that" for images `indices` of `split`
    and the class galleries (`explain.prototypes.explain_images`)."""
    from protojax.data.pipeline import normalize

    raw = dataset.split(split).get_batch(np.asarray(indices))
    batch_size = max(1, min(config.data.eval_batch_size, 64))
    return views.explain_images(
        out,
        lambda images: method.activations(variables, normalize(images, config.data.normalization)),
        raw["image"],
        indices,
        raw["label"],
        variables["params"]["last_layer"]["kernel"],
        jax.device_get(variables[layer.STATE]),
        method.prototype_sources(variables, dataset.split("train"), batch_size=batch_size),
        class_names=dataset.class_names,
        prototypes_per_class=method.prototypes_per_class,
        batch_size=batch_size,
    )
