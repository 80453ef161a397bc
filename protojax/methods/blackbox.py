"""The black-box reference: a backbone, global average pooling and a linear head trained with
cross-entropy. Every self-explainable model's accuracy is compared with it."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from protojax.config import ConfigDict, compute_dtype
from protojax.data.base import Dataset
from protojax.methods.common import accuracy, class_logit, cross_entropy
from protojax.nn import backbone_by_name
from protojax.nn.weights import load_backbone
from protojax.train import optim
from protojax.train.protocol import Method, Phase


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            "backbone": "small_cnn",
            "stem": "imagenet",
            # A converted .npz (experiments/convert_weights.py) or a trained run's workdir,
            # loaded into the backbone at the start of a fresh run; empty: from scratch.
            "backbone_weights": "",
            # Train from a random backbone when backbone_weights names a missing file.
            "allow_random_init": False,
        }
    )


def default_optim_config() -> ConfigDict:
    return ConfigDict(
        {
            "kind": "adam",
            "lr": 1e-3,
            "weight_decay": 0.0,
            # SGD's momentum (unused by adam).
            "momentum": 0.9,
            # constant | cosine | step (step_size, gamma in epochs)
            "schedule": "cosine",
            # Where the cosine schedule ends, as a fraction of lr.
            "final_lr_fraction": 0.0,
            "step_size": 30,
            "gamma": 0.1,
        }
    )


def schedule_from_config(optim_config: ConfigDict, epochs: int):
    """The epoch schedule named by `optim.schedule`."""
    name = optim_config.schedule
    if name == "constant":
        return optim.constant()
    if name == "cosine":
        return optim.cosine(epochs, final=optim_config.final_lr_fraction)
    if name == "step":
        return optim.step_decay(optim_config.step_size, optim_config.gamma)
    from protojax.errors import UsageError

    raise UsageError(f"Unknown optim.schedule '{name}'; use constant, cosine or step.")


class BlackBoxNet(nn.Module):
    """`[B, H, W, C]` → (logits `[B, K]`, pooled features `[B, c]`)."""

    backbone_name: str
    stem: str
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        # Named `backbone`, as in every method, so its weights can seed another method.
        self.backbone = backbone_by_name(self.backbone_name, stem=self.stem, dtype=self.dtype)
        self.head = nn.Dense(self.num_classes, dtype=jnp.float32)

    def __call__(self, images: jax.Array, *, train: bool = False):
        feature_map = self.backbone(images, train=train)  # [B, h, w, c]
        pooled = jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))
        return self.head(pooled), pooled

    def feature_map(self, images: jax.Array) -> jax.Array:
        return self.backbone(images, train=False)

    def classify(self, feature_map: jax.Array) -> jax.Array:
        return self.head(jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2)))


class BlackBox(Method):
    name = "blackbox"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        self.config = config
        self.num_classes = dataset.num_classes
        self.net = BlackBoxNet(
            config.model.backbone, config.model.stem, dataset.num_classes, compute_dtype(config)
        )

    def init(self, rng, batch):
        return dict(self.net.init(rng, batch["image"], train=False))

    def load_pretrained(self, variables):
        m = self.config.model
        if not m.backbone_weights:
            return variables
        return load_backbone(
            variables, m.backbone_weights, arch=m.backbone, allow_random_init=m.allow_random_init
        )

    def loss(self, params, state, batch, rng, phase):
        del rng
        (logits, _), updates = self.net.apply(
            {"params": params, **state},
            batch["image"],
            train=phase.update_batch_stats,
            mutable=["batch_stats"],
        )
        ce = cross_entropy(logits, batch["label"], batch["valid"])
        metrics = {
            "loss": ce,
            "cross_entropy": ce,
            "accuracy": accuracy(logits, batch["label"], batch["valid"]),
        }
        return ce, (metrics, {**state, **updates})

    def predict(self, variables, images):
        return self.net.apply(variables, images, train=False)[0]

    def embed(self, variables, images):
        return self.net.apply(variables, images, train=False)[1]

    def phases(self, config):
        epochs = config.train.epochs
        o = config.optim
        tx = optim.Optimizer(
            o.kind,
            o.lr,
            weight_decay=o.weight_decay,
            momentum=o.momentum,
            schedule=schedule_from_config(o, epochs),
            per_step=o.schedule == "cosine",
        )
        return [Phase("train", epochs, "sgd" if o.kind == "sgd" else "adam", ((".*", tx),))]

    def targets(self, variables):
        """`class_logit(images, classes)`; `features(images) -> [B,h,w,c]` and
        `head(feature_map, classes)` for Grad-CAM."""
        return {
            "class_logit": jax.tree_util.Partial(self._class_logit, variables),
            "features": jax.tree_util.Partial(self._features, variables),
            "head": jax.tree_util.Partial(self._head, variables),
        }

    def _class_logit(self, variables, images, classes):
        return class_logit(self.predict, variables, images, classes)

    def _features(self, variables, images):
        return self.net.apply(variables, images, method=BlackBoxNet.feature_map)

    def _head(self, variables, feature_map, classes):
        logits = self.net.apply(variables, feature_map, method=BlackBoxNet.classify)
        return jnp.take_along_axis(logits, classes[:, None], axis=1)[:, 0]


def build(config: ConfigDict, dataset: Dataset) -> BlackBox:
    return BlackBox(config, dataset)
