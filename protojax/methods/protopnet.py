"""ProtoPNet (Chen et al., NeurIPS 2019, "This Looks Like That"), as its official code runs.

Model: backbone → add-on 1×1 convs ending in a sigmoid → latent map z `[B, h, w, D]` →
squared L2 distance from every latent patch to each of P = K·M class-owned prototypes →
minimum over patches → similarity log((d + 1) / (d + ε)) → a bias-free last layer initialised
to 1 for a prototype's own class and −0.5 for the others.

Loss: CE + 0.8·cluster − 0.08·separation + 1e-4·L1 on the wrong-class weights.

Stages (the official `main.py`), counted in ProtoPNet epochs (`config.train.epochs` of them):
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

Prototype counts never change shape: pruning flips `prototype_state/active`, masks the
prototype out of the logits and freezes its last-layer row and vector (`mask_updates`).

summary.json gets `test_accuracy_before_push` and `test_accuracy_after_push` of the first
push, `push_history` with both for every push (also logged as `push` events), and, after
pruning, `pruned_prototypes` and the test accuracies before and after it. Each push writes
its prototypes' images and an `index.json` under `figures/prototypes/push_NN/`.
"""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.imaging import crop, draw_box, overlay_heatmap, save_png, to_rgb
from protojax.methods.common import accuracy, class_logit, cross_entropy, masked_mean
from protojax.nn import backbone_by_name, feature_channels
from protojax.nn.receptive_field import receptive_field_boxes
from protojax.nn.weights import load_backbone
from protojax.prototypes import log_similarity, min_over_patches, squared_l2_distances
from protojax.prototypes.projection import (
    NearestState,
    ProjectionState,
    high_activation_box,
    nearest_init,
    nearest_update,
    projection_init,
    projection_update,
    upsample_activation,
)
from protojax.train import optim
from protojax.train.loop import compute_dtype
from protojax.train.protocol import Method, Phase
from protojax.train.workdir import is_main_process

ADD_ON_KINDS = ("regular", "bottleneck")
PROTOTYPE_IMAGES = "prototypes"
PNG_MIN_SIDE = 96  # prototype PNGs of smaller images are enlarged to about this side


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


# --------------------------------------------------------------------------------------
# Loss pieces
# --------------------------------------------------------------------------------------


def _class_masks(labels, prototype_class, active):
    """`[B, P]` bool masks of the active prototypes of each row's class and of the others."""
    own = labels[:, None] == prototype_class[None, :]
    on = jnp.ones_like(prototype_class, bool) if active is None else active.astype(bool)
    return own & on[None, :], ~own & on[None, :]


def _masked_min_mean(min_distances, mask, valid):
    per_row = jnp.min(jnp.where(mask, min_distances, jnp.inf), axis=1)
    has = jnp.any(mask, axis=1)
    rows = has if valid is None else has & valid
    return masked_mean(jnp.where(has, per_row, 0.0), rows)


def cluster_cost(
    min_distances: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Mean over rows of the distance to the nearest active prototype of the row's class.

    Args:
      min_distances: `[B, P]` per-prototype minimum (over patches) squared distances.
      labels: `[B]` int classes.
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; inactive prototypes are ignored.
      valid: optional `[B]` bool; only valid rows are averaged. Rows whose class has no
        active prototype are left out as well.

    Returns:
      A float32 scalar.
    """
    own, _ = _class_masks(labels, prototype_class, active)
    return _masked_min_mean(min_distances.astype(jnp.float32), own, valid)


def separation_cost(
    min_distances: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Mean over rows of the distance to the nearest active prototype of another class.

    Positive; the total loss subtracts it (its coefficient is −0.08). Arguments as
    `cluster_cost`.
    """
    _, other = _class_masks(labels, prototype_class, active)
    return _masked_min_mean(min_distances.astype(jnp.float32), other, valid)


def average_separation(
    min_distances: jax.Array,
    labels: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
    *,
    valid: jax.Array | None = None,
) -> jax.Array:
    """Mean over rows of the mean distance to the active prototypes of other classes (logged,
    not optimised). Arguments as `cluster_cost`."""
    _, other = _class_masks(labels, prototype_class, active)
    other = other.astype(jnp.float32)
    count = jnp.sum(other, axis=1)
    per_row = jnp.sum(min_distances.astype(jnp.float32) * other, axis=1) / jnp.maximum(count, 1)
    rows = count > 0 if valid is None else (count > 0) & valid
    return masked_mean(per_row, rows)


def l1_wrong_class(
    last_layer_kernel: jax.Array,
    prototype_class: jax.Array,
    active: jax.Array | None = None,
) -> jax.Array:
    """Sum of |w| over the last-layer weights joining a prototype to the other classes.

    Args:
      last_layer_kernel: `[P, K]`, as Flax stores the Dense kernel (torch's W transposed).
      prototype_class: `[P]` int class of each prototype.
      active: optional `[P]` bool; the rows of inactive prototypes are ignored.

    Returns:
      A float32 scalar.
    """
    p, k = last_layer_kernel.shape
    if prototype_class.shape != (p,):
        raise ValueError(
            f"last_layer_kernel is [P, K] = {last_layer_kernel.shape} but prototype_class has "
            f"shape {prototype_class.shape}; pass one class per prototype (row)."
        )
    wrong = prototype_class[:, None] != jnp.arange(k)[None, :]
    if active is not None:
        wrong = wrong & active.astype(bool)[:, None]
    return jnp.sum(jnp.abs(last_layer_kernel.astype(jnp.float32)) * wrong)


# --------------------------------------------------------------------------------------
# Module
# --------------------------------------------------------------------------------------

_ADD_ON_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


def add_on_widths(kind: str, in_channels: int, dim: int) -> list[int]:
    """Output widths of the add-on blocks (each conv1×1 → ReLU → conv1×1 → ReLU/sigmoid).

    `regular` is one block of width `dim`; `bottleneck` halves the channels block by block
    until `dim` is reached, as the official `add_on_layers_type='bottleneck'`.
    """
    if kind == "regular":
        return [dim]
    if kind != "bottleneck":
        raise UsageError(
            f"Unknown model.add_on_layers '{kind}'; use one of {', '.join(ADD_ON_KINDS)}."
        )
    widths, current = [], in_channels
    while current > dim or not widths:
        widths.append(max(dim, current // 2))
        current //= 2
    return widths


class AddOnLayers(nn.Module):
    """`[B, h, w, c]` → `[B, h, w, D]` in (0, 1): blocks of conv1×1 → ReLU → conv1×1 → ReLU,
    the last block ending in a sigmoid. Kaiming-normal (fan-out, ReLU) kernels, zero biases."""

    widths: tuple[int, ...]
    dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        index = 0
        for block, width in enumerate(self.widths):
            for position in range(2):
                x = nn.Conv(
                    width, (1, 1), kernel_init=_ADD_ON_INIT, dtype=self.dtype, name=f"conv{index}"
                )(x)
                index += 1
                last = block == len(self.widths) - 1 and position == 1
                x = nn.sigmoid(x) if last else nn.relu(x)
        return x.astype(jnp.float32)


def _last_layer_init(prototype_class: np.ndarray, incorrect: float):
    def init(key, shape, dtype=jnp.float32):
        del key
        own = prototype_class[:, None] == np.arange(shape[1])[None, :]
        return jnp.asarray(np.where(own, 1.0, incorrect), dtype)

    return init


class ProtoPNetModule(nn.Module):
    """Images `[B, H, W, C]` → (logits `[B, K]`, min distances `[B, P]`)."""

    arch: str
    stem: str
    num_classes: int
    prototypes_per_class: int
    prototype_dim: int
    add_on_kind: str = "regular"
    epsilon: float = 1e-4
    incorrect_class_connection: float = -0.5
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        num_prototypes = self.num_classes * self.prototypes_per_class
        prototype_class = np.arange(num_prototypes) // self.prototypes_per_class
        widths = add_on_widths(self.add_on_kind, feature_channels(self.arch), self.prototype_dim)
        self.backbone = backbone_by_name(self.arch, stem=self.stem, dtype=self.dtype)
        self.add_on = AddOnLayers(tuple(widths), dtype=self.dtype)
        self.prototypes = self.param(
            "prototypes", nn.initializers.uniform(1.0), (num_prototypes, self.prototype_dim)
        )
        self.last_layer = nn.Dense(
            self.num_classes,
            use_bias=False,
            kernel_init=_last_layer_init(prototype_class, self.incorrect_class_connection),
        )

    def latent(self, images: jax.Array, *, train: bool = False) -> jax.Array:
        """The add-on output z `[B, h, w, D]` float32."""
        return self.add_on(self.backbone(images, train=train))

    def distance_map(self, images: jax.Array, *, train: bool = False):
        """(z `[B, h, w, D]`, squared distances `[B, h, w, P]`)."""
        latent = self.latent(images, train=train)
        return latent, squared_l2_distances(latent, self.prototypes)

    def classify(self, min_distances: jax.Array, active: jax.Array) -> jax.Array:
        """Logits `[B, K]` from min distances `[B, P]`; inactive prototypes contribute 0."""
        similarity = log_similarity(min_distances, eps=self.epsilon)
        return self.last_layer(similarity * active.astype(similarity.dtype))

    def head(self, feature_map: jax.Array, active: jax.Array) -> jax.Array:
        """Logits `[B, K]` from the backbone's map `[B, h, w, c]` (for Grad-CAM)."""
        latent = self.add_on(feature_map)
        distances = squared_l2_distances(latent, self.prototypes)
        return self.classify(min_over_patches(distances)[0], active)

    def __call__(self, images: jax.Array, active: jax.Array, *, train: bool = False):
        _, distances = self.distance_map(images, train=train)
        min_distances, _ = min_over_patches(distances)
        return self.classify(min_distances, active), min_distances


def initial_prototype_state(num_classes: int, prototypes_per_class: int) -> dict[str, jax.Array]:
    """`prototype_state`: classes, active flags and push bookkeeping (none yet)."""
    p = num_classes * prototypes_per_class
    return {
        "prototype_class": jnp.arange(p, dtype=jnp.int32) // prototypes_per_class,
        "active": jnp.ones((p,), bool),
        "source_index": jnp.full((p,), -1, jnp.int32),
        "source_location": jnp.zeros((p, 2), jnp.int32),
        # -1 until pushed (checkpoints refuse non-finite values).
        "push_distance": jnp.full((p,), -1.0, jnp.float32),
    }


class Activations(NamedTuple):
    """What the model sees in images `[B, H, W, C]`.

    Attributes:
      logits: `[B, K]`.
      similarities: `[B, P]` similarity of each prototype's nearest patch.
      similarity_maps: `[B, h, w, P]` similarity of each prototype at every latent location.
    """

    logits: jax.Array
    similarities: jax.Array
    similarity_maps: jax.Array


class Stage(NamedTuple):
    """One run of consecutive epochs of a kind (`warm`, `joint`, `last`, `prune_last`),
    counted in ProtoPNet epochs, and whether a push (or pruning) follows it."""

    kind: str
    epochs: int
    push_after: bool = False
    prune_after: bool = False


def stage_plan(model: ConfigDict, epochs: int) -> list[Stage]:
    """The official schedule: warm, joint, and after every push epoch the last-layer epochs.

    Args:
      model: the `config.model` section.
      epochs: ProtoPNet epochs (warm + joint; last-layer epochs come on top).
    """
    if epochs < 1:
        raise UsageError(f"train.epochs must be at least 1, got {epochs}.")
    stages: list[Stage] = []
    for epoch in range(epochs):
        kind = "warm" if epoch < model.warm_epochs else "joint"
        if stages and stages[-1].kind == kind and not stages[-1].push_after:
            stages[-1] = stages[-1]._replace(epochs=stages[-1].epochs + 1)
        else:
            stages.append(Stage(kind, 1))
        if epoch >= model.push_start and epoch % model.push_every == 0:
            stages[-1] = stages[-1]._replace(push_after=True)
            stages.append(Stage("last", model.last_layer_epochs))
    if model.prune.enabled:
        if stages[-1].kind != "last":
            raise UsageError(
                "Pruning follows a push and its last-layer epochs, but the run ends with "
                f"{stages[-1].kind} epochs; set train.epochs to push_start + n·push_every + 1."
            )
        stages[-1] = stages[-1]._replace(prune_after=True)
        stages.append(Stage("prune_last", model.prune.last_layer_epochs))
    return stages


# --------------------------------------------------------------------------------------
# Method
# --------------------------------------------------------------------------------------


class ProtoPNet(Method):
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
        self._projection_step = jax.jit(self._projection_step_impl)
        self._nearest_step = jax.jit(self._nearest_step_impl)
        self._activations = jax.jit(self._activations_impl)
        self._apply_projection = jax.jit(self._apply_projection_impl)
        self._self_activations = jax.jit(self._self_activations_impl)

    # --- protocol ----------------------------------------------------------------------
    def init(self, rng, batch):
        active = jnp.ones((self.num_prototypes,), bool)
        variables = dict(self.net.init(rng, batch["image"], active, train=False))
        variables["prototype_state"] = initial_prototype_state(
            self.num_classes, self.prototypes_per_class
        )
        return variables

    def load_pretrained(self, variables):
        m = self.config.model
        if not m.backbone_weights:
            return variables
        return load_backbone(
            variables, m.backbone_weights, arch=m.backbone, allow_random_init=m.allow_random_init
        )

    def loss(self, params, state, batch, rng, phase):
        del rng
        prototype_state = state["prototype_state"]
        active = prototype_state["active"]
        train = phase.update_batch_stats
        (logits, min_distances), updates = self.net.apply(
            {"params": params, **_model_collections(state)},
            batch["image"],
            active,
            train=train,
            mutable=["batch_stats"] if train else [],
        )
        labels, valid = batch["label"], batch["valid"]
        classes = prototype_state["prototype_class"]
        terms = {
            "cross_entropy": cross_entropy(logits, labels, valid),
            "cluster": cluster_cost(min_distances, labels, classes, active, valid=valid),
            "separation": separation_cost(min_distances, labels, classes, active, valid=valid),
            "l1": l1_wrong_class(params["last_layer"]["kernel"], classes, active),
        }
        coefs = self.config.model.coefs
        total = sum(coefs[name] * value for name, value in terms.items())
        metrics = {
            "loss": total,
            **terms,
            "average_separation": average_separation(
                min_distances, labels, classes, active, valid=valid
            ),
            "accuracy": accuracy(logits, labels, valid),
        }
        return total, (metrics, {**state, **updates})

    def mask_updates(self, updates, state):
        """Freezes the last-layer row and the vector of every inactive (pruned) prototype."""
        keep = state["prototype_state"]["active"][:, None]
        last_layer = dict(updates["last_layer"])
        last_layer["kernel"] = jnp.where(keep, last_layer["kernel"], 0.0)
        return {
            **updates,
            "last_layer": last_layer,
            "prototypes": jnp.where(keep, updates["prototypes"], 0.0),
        }

    def predict(self, variables, images):
        active = variables["prototype_state"]["active"]
        return self.net.apply(_model_collections(variables), images, active)[0]

    def embed(self, variables, images):
        """The prototype similarities `[B, P]`, the last layer's input."""
        active = variables["prototype_state"]["active"]
        _, min_distances = self.net.apply(_model_collections(variables), images, active)
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
        kinds = {
            "warm": ("warm", warm, frozen_bn),
            "joint": ("joint", joint, True),
            "last": ("last", (last,), frozen_bn),
            # A fresh Adam, as run_pruning.py builds its own last-layer optimizer.
            "prune_last": ("prune_last", (last,), frozen_bn),
        }
        phases = []
        for stage in stage_plan(m, config.train.epochs):
            optimizer, trainable, batch_stats = kinds[stage.kind]
            after = self.push if stage.push_after else self.prune if stage.prune_after else None
            phases.append(
                Phase(
                    stage.kind,
                    stage.epochs * passes,
                    optimizer,
                    trainable,
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
        - `latent(images) -> [B, h, w, D]`, the add-on output the prototypes live in.
        """
        partial = jax.tree_util.Partial
        return {
            "class_logit": partial(self._class_logit, variables),
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
    def _class_logit(self, variables, images, classes):
        return class_logit(self.predict, variables, images, classes)

    def _similarity_maps(self, variables, images):
        _, distances = self.net.apply(
            _model_collections(variables), images, method=ProtoPNetModule.distance_map
        )
        return log_similarity(distances, eps=self.config.model.epsilon)  # [B, h, w, P]

    def _prototype_similarity(self, variables, images, prototypes):
        maps = self._similarity_maps(variables, images)
        per_prototype = jnp.max(maps, axis=(1, 2))  # [B, P]
        return jnp.take_along_axis(per_prototype, prototypes[:, None].astype(jnp.int32), 1)[:, 0]

    def _prototype_similarity_at(self, variables, images, targets):
        maps = self._similarity_maps(variables, images)
        rows = jnp.arange(images.shape[0])
        targets = targets.astype(jnp.int32)
        return maps[rows, targets[:, 1], targets[:, 2], targets[:, 0]]

    def _features(self, variables, images):
        return self.net.apply(
            _model_collections(variables), images, method=lambda net, x: net.backbone(x)
        )

    def _head(self, variables, feature_map, classes):
        active = variables["prototype_state"]["active"]
        logits = self.net.apply(
            _model_collections(variables), feature_map, active, method=ProtoPNetModule.head
        )
        return jnp.take_along_axis(logits, classes[:, None].astype(jnp.int32), axis=1)[:, 0]

    def _latent(self, variables, images):
        return self.net.apply(_model_collections(variables), images, method=ProtoPNetModule.latent)

    # --- analysis ----------------------------------------------------------------------
    def _activations_impl(self, variables, images):
        collections = _model_collections(variables)
        _, distances = self.net.apply(collections, images, method=ProtoPNetModule.distance_map)
        min_distances, _ = min_over_patches(distances)
        active = variables["prototype_state"]["active"]
        logits = self.net.apply(collections, min_distances, active, method=ProtoPNetModule.classify)
        eps = self.config.model.epsilon
        return Activations(
            logits, log_similarity(min_distances, eps=eps), log_similarity(distances, eps=eps)
        )

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
    def _projection_step_impl(self, variables, state: ProjectionState, latent, batch):
        distances = squared_l2_distances(latent, variables["params"]["prototypes"])
        return projection_update(
            state,
            latent,
            distances,
            labels=batch["label"],
            indices=batch["index"],
            valid=batch["valid"],
            prototype_class=variables["prototype_state"]["prototype_class"],
        )

    def project(self, variables, batches) -> ProjectionState:
        """The nearest latent patch of each prototype's class over `batches` (an ordered pass
        of the training split); memory is that of one batch."""
        state = projection_init(self.num_prototypes, self.config.model.prototype_dim)
        for batch in batches:
            # The latent map is its own program, the `latent` target's, so that anyone can
            # recompute the exact patch a prototype was given.
            latent = self._latent_map(variables, batch["image"])
            state = self._projection_step(variables, _replicated_like(state, batch), latent, batch)
        return state

    def apply_projection(self, variables, projection: ProjectionState):
        """Variables whose active prototypes are replaced by their projected patches (a
        prototype whose class has no training image keeps its vector); jitted."""
        return self._apply_projection(variables, projection)

    def _apply_projection_impl(self, variables, projection: ProjectionState):
        prototype_state = variables["prototype_state"]
        replace = prototype_state["active"] & jnp.isfinite(projection.distance)
        params = dict(variables["params"])
        params["prototypes"] = jnp.where(replace[:, None], projection.patch, params["prototypes"])
        prototype_state = {
            **prototype_state,
            "source_index": jnp.where(replace, projection.index, prototype_state["source_index"]),
            "source_location": jnp.where(
                replace[:, None], projection.location, prototype_state["source_location"]
            ),
            "push_distance": jnp.where(
                replace, projection.distance, prototype_state["push_distance"]
            ),
        }
        return {**variables, "params": params, "prototype_state": prototype_state}

    def pass_batch_size(self, num_devices: int) -> int:
        """The batch of push and pruning passes: `model.push_batch_size` rounded up to a
        multiple of the devices (the passes' results do not depend on it)."""
        return math.ceil(self.config.model.push_batch_size / num_devices) * num_devices

    def push(self, variables, ctx):
        """The `after` operation of a push epoch: projects the prototypes, tests before and
        after, records the first push's accuracies and writes the prototype images."""
        history = list(ctx.records.get("push_history", []))
        has_test = "test" in ctx.dataset.splits
        before = ctx.evaluate(variables, "test") if has_test else None
        size = self.pass_batch_size(ctx.mesh.devices.size)
        projection = self.project(variables, ctx.ordered_batches("train", batch_size=size))
        variables = self.apply_projection(variables, projection)
        after = ctx.evaluate(variables, "test") if has_test else None
        distances = np.asarray(projection.distance)
        found = np.isfinite(distances)  # false for classes without a training image
        entry = {
            "push": len(history) + 1,
            "step": ctx.step,
            "test_accuracy_before_push": before,
            "test_accuracy_after_push": after,
            "prototypes_pushed": int(found.sum()),
            "mean_push_distance": float(distances[found].mean()) if found.any() else None,
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
    def _nearest_step_impl(self, variables, state: NearestState, batch) -> NearestState:
        active = variables["prototype_state"]["active"]
        _, min_distances = self.net.apply(_model_collections(variables), batch["image"], active)
        return nearest_update(
            state,
            min_distances,
            labels=batch["label"],
            indices=batch["index"],
            valid=batch["valid"],
        )

    def nearest_images(self, variables, batches, *, k: int) -> NearestState:
        """The k nearest images (through their nearest patch) of every prototype."""
        state = nearest_init(self.num_prototypes, k)
        for batch in batches:
            state = self._nearest_step(variables, _replicated_like(state, batch), batch)
        return state

    def prune(self, variables, ctx):
        """The `after` operation that switches off the prototypes with fewer than
        `prune.threshold` of their `prune.k` nearest training images in their own class."""
        settings = self.config.model.prune
        prototype_state = variables["prototype_state"]
        has_test = "test" in ctx.dataset.splits
        before = ctx.evaluate(variables, "test") if has_test else None
        nearest = self.nearest_images(
            variables,
            ctx.ordered_batches("train", batch_size=self.pass_batch_size(ctx.mesh.devices.size)),
            k=settings.k,
        )
        own = np.sum(
            np.asarray(nearest.label) == np.asarray(prototype_state["prototype_class"])[:, None],
            axis=1,
        )
        active = np.asarray(prototype_state["active"])
        pruned = active & (own < settings.threshold)
        variables = {
            **variables,
            "prototype_state": {**prototype_state, "active": jnp.asarray(active & ~pruned)},
        }
        after = ctx.evaluate(variables, "test") if has_test else None
        ctx.record("pruned_prototypes", [int(j) for j in np.flatnonzero(pruned)])
        ctx.record("test_accuracy_before_prune", before)
        ctx.record("test_accuracy_after_prune", after)
        ctx.log(
            event="prune",
            pruned=int(pruned.sum()),
            test_accuracy_before_prune=before,
            test_accuracy_after_prune=after,
        )
        return variables

    # --- visual bookkeeping ------------------------------------------------------------
    def save_prototype_images(self, variables, ctx, directory: pathlib.Path) -> pathlib.Path:
        """Writes, per pushed prototype, its source image with the receptive-field (blue) and
        high-activation (yellow) boxes, the self-activation overlay, the high-activation
        crop and the receptive-field crop, plus `index.json` describing them all (boxes in
        image pixels; PNGs of images under 96 px are enlarged by an integer factor).

        The similarity map is that of the pushed prototype on its source image, upsampled
        bicubically (`upsample_activation`; cv2's bicubic kernel, used by the official code,
        differs, so boxes may be a pixel off theirs), and the high-activation box bounds its
        95th percentile (`high_activation_box`). The official code draws the map of the
        prototype before its replacement; after push the two differ by the projection step.

        Every process computes the maps (a jitted pass over the run's mesh, collective on
        several hosts); only the main process writes.

        Returns:
          The path of `index.json`.
        """
        from protojax.data.pipeline import normalize

        writing = is_main_process()
        if writing:
            directory.mkdir(parents=True, exist_ok=True)
        prototype_state = jax.device_get(variables["prototype_state"])
        rf_boxes = self.receptive_fields(variables)
        split = ctx.dataset.split("train")
        pushed = np.flatnonzero(prototype_state["source_index"] >= 0)
        entries = []
        chunk = self.pass_batch_size(ctx.mesh.devices.size)
        for start in range(0, len(pushed), chunk):
            ids = pushed[start : start + chunk]
            raw = split.get_batch(prototype_state["source_index"][ids])
            images = normalize(raw["image"], self.config.data.normalization)
            maps = np.asarray(self.self_activations(variables, images, ids))
            if not writing:
                continue
            for row, j in enumerate(ids):
                entries.append(
                    self._write_prototype(
                        directory,
                        j,
                        raw["image"][row],
                        int(raw["label"][row]),
                        maps[row],
                        prototype_state,
                        rf_boxes,
                    )
                )
        index = directory / "index.json"
        if not writing:
            return index
        index.write_text(
            json.dumps(
                {
                    "image_shape": list(self.image_shape),
                    "step": ctx.step,
                    "class_names": list(self.class_names),
                    "prototypes": entries,
                },
                indent=1,
            )
            + "\n"
        )
        return index

    def self_activations(self, variables, images, prototype_ids) -> jax.Array:
        """Similarity maps of prototypes `prototype_ids [n]` on `images [n, H, W, C]` (one
        prototype per image, model-normalised), upsampled bicubically to `[n, H, W]`."""
        return self._self_activations(variables, jnp.asarray(images), prototype_ids)

    def _self_activations_impl(self, variables, images, prototype_ids):
        maps = self._activations_impl(variables, images).similarity_maps
        ids = jnp.asarray(prototype_ids, jnp.int32)[:, None, None, None]
        own = jnp.take_along_axis(maps, ids, axis=3)[..., 0]
        size = tuple(images.shape[1:3])
        return jax.vmap(lambda m: upsample_activation(m, size))(own)

    def _write_prototype(self, directory, j, image, label, upsampled, prototype_state, rf_boxes):
        h, w = (int(v) for v in prototype_state["source_location"][j])
        activation_box = high_activation_box(upsampled)
        rf_box = rf_boxes[h, w]
        rgb = to_rgb(image)
        names = {
            "source": f"prototype_{j:04d}_source.png",
            "overlay": f"prototype_{j:04d}_overlay.png",
            "patch": f"prototype_{j:04d}_patch.png",
            "receptive_field": f"prototype_{j:04d}_receptive_field.png",
        }
        # Small images are enlarged (nearest neighbour) so that box outlines stay thin.
        scale = max(1, math.ceil(PNG_MIN_SIDE / min(rgb.shape[:2])))
        big = lambda a: np.repeat(np.repeat(a, scale, axis=0), scale, axis=1)
        boxed = draw_box(big(rgb), np.asarray(rf_box) * scale, (0.1, 0.4, 1.0))
        boxed = draw_box(boxed, np.asarray(activation_box) * scale, (1.0, 0.9, 0.0))
        save_png(directory / names["source"], boxed)
        save_png(directory / names["overlay"], big(overlay_heatmap(rgb, upsampled)))
        save_png(directory / names["patch"], big(crop(rgb, activation_box)))
        save_png(directory / names["receptive_field"], big(crop(rgb, rf_box)))
        cls = int(prototype_state["prototype_class"][j])
        return {
            "prototype": int(j),
            "class": cls,
            "class_name": self.class_names[cls],
            "active": bool(prototype_state["active"][j]),
            "source_index": int(prototype_state["source_index"][j]),
            "source_label": label,
            "location": [h, w],
            "distance": float(prototype_state["push_distance"][j]),
            "activation_box": [int(v) for v in activation_box],
            "receptive_field_box": [int(v) for v in rf_box],
            "files": names,
        }


def _replicated_like(carry, batch):
    """The running carry replicated on the mesh of a sharded batch, so that every step of a
    pass sees the same input shardings (and compiles once)."""
    sharding = batch["label"].sharding
    if not isinstance(sharding, NamedSharding):
        return carry
    return jax.device_put(carry, NamedSharding(sharding.mesh, PartitionSpec()))


def _model_collections(variables: dict[str, Any]) -> dict[str, Any]:
    """The collections the Flax module knows (everything but `prototype_state`)."""
    return {k: v for k, v in variables.items() if k != "prototype_state"}


def build(config: ConfigDict, dataset: Dataset) -> ProtoPNet:
    return ProtoPNet(config, dataset)
