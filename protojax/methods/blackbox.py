"""The black-box reference: a backbone, global average pooling and a linear head trained with
cross-entropy. Every self-explainable model's accuracy is compared with it.

Post-hoc methods (InfoDisent, KMEx) explain a trained black box: `source_config`,
`train_first`, `load_source` and `source_test_accuracy` give them one, trained first into a
sub-folder of their workdir when they are given none.
"""

from __future__ import annotations

import json
import logging
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax import config as config_lib
from protojax.config import ConfigDict, compute_dtype
from protojax.data.base import Dataset
from protojax.errors import UsageError, WorkdirError
from protojax.methods.common import ClassTargets, accuracy, cross_entropy, pick
from protojax.nn import BackboneNet
from protojax.nn.weights import load_configured_backbone
from protojax.train import optim
from protojax.train import workdir as wd
from protojax.train.protocol import Method, Phase

log = logging.getLogger("protojax")

# Where a post-hoc method trains its black box when it is given none.
SOURCE_SUBDIR = "blackbox"
# The keys a black-box source must share with the method explaining it.
_SHARED_KEYS = (
    ("data", "name"),
    ("data", "image_size"),
    ("data", "normalization"),
    ("model", "backbone"),
    ("model", "stem"),
)


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
    """The epoch schedule named by `optim.schedule` (also read by methods whose optim section
    has no `final_lr_fraction`: they decay to 0)."""
    name = optim_config.schedule
    if name == "constant":
        return optim.constant()
    if name == "cosine":
        return optim.cosine(epochs, final=optim_config.get("final_lr_fraction", 0.0))
    if name == "step":
        return optim.step_decay(optim_config.step_size, optim_config.gamma)
    raise UsageError(f"Unknown optim.schedule '{name}'; use constant, cosine or step.")


class BlackBoxNet(BackboneNet):
    """`[B, H, W, C]` → (logits `[B, K]`, pooled features `[B, c]`)."""

    def setup(self):
        super().setup()
        self.head = nn.Dense(self.num_classes, dtype=jnp.float32)

    def __call__(self, images: jax.Array, *, train: bool = False):
        feature_map = self.backbone(images, train=train)  # [B, h, w, c]
        pooled = jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2))
        return self.head(pooled), pooled

    def feature_map(self, images: jax.Array) -> jax.Array:
        return self.backbone(images, train=False)

    def classify(self, feature_map: jax.Array) -> jax.Array:
        return self.head(jnp.mean(feature_map.astype(jnp.float32), axis=(1, 2)))


class BlackBox(ClassTargets, Method):
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
        return load_configured_backbone(variables, self.config.model)

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
        """`class_logit(images, classes)`, `class_probability(images, classes)`,
        `embedding(images) -> [B, d]` (the pooled features); `features(images) -> [B,h,w,c]`
        and `head(feature_map, classes)` for Grad-CAM."""
        return {
            **self.class_targets(variables),
            "features": jax.tree_util.Partial(self._features, variables),
            "head": jax.tree_util.Partial(self._head, variables),
        }

    def _features(self, variables, images):
        return self.net.apply(variables, images, method=BlackBoxNet.feature_map)

    def _head(self, variables, feature_map, classes):
        return pick(self.net.apply(variables, feature_map, method=BlackBoxNet.classify), classes)


def build(config: ConfigDict, dataset: Dataset) -> BlackBox:
    return BlackBox(config, dataset)


def source_config(config: ConfigDict, *, epochs: int, lr: float) -> ConfigDict:
    """The black box a post-hoc method's `config` explains when it names none: the same data,
    seed, engine settings and backbone (`model.backbone`, `stem`, `backbone_weights`,
    `allow_random_init`), trained `epochs` epochs with Adam at `lr` on a cosine schedule."""
    model = default_model_config()
    for key in model:
        if key in config.model:
            model[key] = config.model[key]
    optim_config = default_optim_config()
    optim_config.lr = lr
    train = config_lib.from_dict(config_lib.to_dict(config.train))
    train.epochs = epochs
    train.stop_after_steps = 0
    return config_lib.from_dict(
        {
            "method": "blackbox",
            "seed": config.seed,
            "data": config_lib.to_dict(config.data),
            "model": config_lib.to_dict(model),
            "optim": config_lib.to_dict(optim_config),
            "train": config_lib.to_dict(train),
        }
    )


def train_first(blackbox: ConfigDict, ctx) -> pathlib.Path:
    """Trains (or resumes, or reuses once finished) the black box of config `blackbox` into
    `ctx.workdir / SOURCE_SUBDIR`, says so in the log, and returns that folder: the source of
    a method that explains a black box and was given none (InfoDisent, KMEx)."""
    from protojax.train import loop

    path = ctx.workdir / SOURCE_SUBDIR
    if (path / wd.SUMMARY).is_file():
        return path
    log.info(
        "No trained source given (model.source_workdir, model.backbone_weights): training the "
        "black box of this config first, into %s.",
        path,
    )
    ctx.log(event="train_blackbox_first", workdir=str(path), epochs=blackbox.train.epochs)
    loop.run(BlackBox(blackbox, ctx.dataset), blackbox, path, ctx.mesh, dataset=ctx.dataset)
    return path


def load_source(workdir: str | pathlib.Path, config: ConfigDict, dataset: Dataset):
    """`(method, variables)` of the trained black box in `workdir`, checked against `config`,
    the config of the method explaining it.

    Raises:
      WorkdirError: `workdir` holds no run.
      UsageError: it is not a black box, or its data or backbone differ from `config`'s.
      CheckpointError: it has no readable checkpoint.
    """
    from protojax.train import loop

    workdir = pathlib.Path(workdir)
    stored = check_source(workdir, config)
    method = BlackBox(stored, dataset)
    return method, loop.restore_variables(method, stored, dataset, workdir)


def check_source(workdir: pathlib.Path, config: ConfigDict) -> ConfigDict:
    """The config of the black box in `workdir`, after checking that it is one, with the same
    data and backbone as `config`."""
    path = pathlib.Path(workdir) / wd.CONFIG
    if not path.is_file():
        raise WorkdirError(
            f"{workdir} holds no trained run (no {wd.CONFIG}); train the black box there first "
            f"(python -m experiments.train --config=blackbox_NAME --workdir={workdir}) or leave "
            "model.source_workdir empty to train one first."
        )
    stored = config_lib.from_dict(json.loads(path.read_text()))
    if stored.method != "blackbox":
        raise UsageError(
            f"{workdir} holds a '{stored.method}' run, not a black box; point "
            "model.source_workdir at a blackbox run."
        )
    differ = [
        f"{section}.{key}"
        for section, key in _SHARED_KEYS
        if stored[section].get(key) != config[section][key]
    ]
    if differ:
        raise UsageError(
            f"The black box in {workdir} differs from this config in {', '.join(differ)}; "
            "use a black box trained on the same data with the same backbone."
        )
    return stored


def source_test_accuracy(method: BlackBox, variables, ctx, split: str = "test") -> float:
    """The black box's top-1 accuracy on `split` of the run's data, through an ordered pass."""
    from jax.sharding import NamedSharding, PartitionSpec

    variables = jax.device_put(variables, NamedSharding(ctx.mesh, PartitionSpec()))
    predict = jax.jit(lambda v, images: jnp.argmax(method.predict(v, images), axis=-1))
    rows = ctx.collect(lambda batch: (predict(variables, batch["image"]), batch["label"]), split)
    return float(np.mean(rows[0] == rows[1]))
