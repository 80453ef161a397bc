"""InfoDisent (Struski, Rymarczyk and Tabor, arXiv 2409.10329): a frozen trained backbone whose
final feature map is unmixed by an orthogonal matrix and read channel by channel.

The model, for a feature map F `[B, h, w, D]` of the frozen backbone:

    U = expm(A − Aᵀ)                      once per step; A `[D, D]` starts at 0, so U = I
    Z_hw = U F_hw                         every pixel's channel vector rotated (J_rs = U I_rs)
    v_d = max_hw ReLU(Z_hwd) − max_hw ReLU(−Z_hwd)        (`mx_pool`)
    logits_k = Σ_d W_dk v_d,  W ≥ 0,  no bias

trained with cross-entropy on A and W only. There is no bias, so that the channels'
contributions W_dk·v_d add up to the whole logit that the explanation shows.

**W ≥ 0 is kept by a clamp after each step, not by a reparameterisation**: the head's optimizer
ends with `optax.keep_params_nonnegative`, which turns an update that would take an entry
below 0 into one that sets it to 0 (projected gradient descent, the clamp PIP-Net uses). W
starts at 0.

**Feature cache.** The backbone is frozen, so where no augmentation changes the training images
(`data.augment` all off) the feature maps of the training split are computed once, in an
ordered sharded pass, and the head trains on them (`model.cache_features="auto"`, the default
where it is valid). The cached fit runs the engine's own step on the engine's batch order
(`pipeline.epoch_permutation`) and optimizer, so it ends at the parameters an uncached run
reaches (`model.cache_features="off"`), at a fraction of the cost. It runs inside the `head`
phase's `after` operation: a run interrupted during it redoes the fit on resume. The cache
holds N·h·w·D float32 values in host memory (2.4 GB for ResNet-50 on CUB's 5,994 images).

**Source.** `model.source_workdir` names a trained black box (`methods.blackbox`) with the same
data and backbone: its backbone is frozen here, and its test accuracy is reported beside
InfoDisent's as `blackbox_test_accuracy`. Otherwise `model.backbone_weights` names converted
pretrained weights (an `.npz`, no black box to compare with: `blackbox_test_accuracy` is
null). With neither, the black box of this config (`model.source_epochs`,
`model.source_lr`) is trained first into the `blackbox/` sub-folder of the workdir, as the
log says, and explained from there.

The explanation of an image (`own_explanation`, drawn by `protojax.explain.channels`): the
channels with the largest contribution W_dk·v_d to the predicted class, each shown by its
positive (argmax) and negative (argmin) location on the image, mapped to receptive-field boxes,
and by its top-activating training patches.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import NamedSharding, PartitionSpec

from protojax.config import ConfigDict, compute_dtype
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import NonFiniteError, UsageError
from protojax.explain import channels as channel_explain
from protojax.explain.figures import pyplot
from protojax.methods import blackbox
from protojax.methods.common import accuracy, class_logit, class_probability, cross_entropy
from protojax.nn import backbone_by_name
from protojax.nn.receptive_field import receptive_field_boxes
from protojax.nn.weights import load_backbone
from protojax.prototypes.channels import MxPoolResult, mx_pool, orthogonal_unmixing
from protojax.train import loop, optim
from protojax.train.protocol import Method, Phase

CACHE_CHOICES = ("auto", "on", "off")


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            "backbone": "small_cnn",
            "stem": "imagenet",
            # A trained black box's workdir (methods.blackbox) with the same data and backbone.
            "source_workdir": "",
            # Otherwise converted pretrained weights (.npz, experiments/convert_weights.py).
            "backbone_weights": "",
            # Keep a random backbone when backbone_weights names a missing file (tests, mock data).
            "allow_random_init": False,
            # With neither: the black box trained first into WORKDIR/blackbox.
            "source_epochs": 10,
            "source_lr": 1e-3,
            # auto: cache the frozen backbone's training feature maps when data.augment is off;
            # on: always (an error with augmentation); off: the backbone runs in every step.
            "cache_features": "auto",
            # Explanations: channels shown per image, training patches shown per channel, and
            # the test images a finished run explains in figures/channels/.
            "explain_channels": 3,
            "explain_patches": 4,
            "figure_images": 3,
        }
    )


def default_optim_config() -> ConfigDict:
    return ConfigDict(
        {
            "kind": "adam",
            "lr": 1e-3,  # the head W
            "unmixing_lr": 1e-3,  # A
            "weight_decay": 0.0,
            # constant | cosine | step (step_size, gamma in epochs)
            "schedule": "cosine",
            "step_size": 30,
            "gamma": 0.1,
        }
    )


class ChannelUnmixing(nn.Module):
    """`[B, h, w, D]` → the same map with every pixel's channel vector rotated by
    U = expm(A − Aᵀ); A (`a`, `[D, D]`) starts at 0."""

    @nn.compact
    def __call__(self, feature_map: jax.Array) -> jax.Array:
        d = feature_map.shape[-1]
        u = orthogonal_unmixing(self.param("a", nn.initializers.zeros, (d, d), jnp.float32))
        # U once per call, applied per pixel: Z_hw = U F_hw.
        return jnp.einsum(
            "bhwd,jd->bhwj", feature_map, u, precision=jax.lax.Precision.HIGHEST
        ).astype(jnp.float32)


class NonNegativeLinear(nn.Module):
    """`[B, D]` → `[B, K]` = v W with W (`kernel`, `[D, K]`) ≥ 0, no bias; the optimizer keeps
    W ≥ 0 (see the module docstring)."""

    features: int

    @nn.compact
    def __call__(self, values: jax.Array) -> jax.Array:
        kernel = self.param(
            "kernel", nn.initializers.zeros, (values.shape[-1], self.features), jnp.float32
        )
        return jnp.dot(values, kernel, precision=jax.lax.Precision.HIGHEST)


class Readout(NamedTuple):
    """What InfoDisent reads from a feature map.

    Attributes:
      logits: `[B, K]`.
      pooled: `mx_pool` of the unmixed map: `values [B, D]` and the (h, w) of each channel's
        maximum and minimum, `[B, D, 2]` each.
    """

    logits: jax.Array
    pooled: MxPoolResult


class InfoDisentNet(nn.Module):
    """Frozen backbone → channel unmixing → `mx_pool` → non-negative linear head."""

    backbone_name: str
    stem: str
    num_classes: int
    dtype: jnp.dtype = jnp.float32

    def setup(self):
        self.backbone = backbone_by_name(self.backbone_name, stem=self.stem, dtype=self.dtype)
        self.unmix = ChannelUnmixing()
        self.head = NonNegativeLinear(self.num_classes)

    def __call__(self, images: jax.Array) -> Readout:
        return self.read(self.feature_map(images))

    def feature_map(self, images: jax.Array) -> jax.Array:
        """The frozen backbone's final map `[B, h, w, D]`, float32, in inference mode."""
        return self.backbone(images, train=False).astype(jnp.float32)

    def unmixed(self, feature_map: jax.Array) -> jax.Array:
        return self.unmix(feature_map)

    def read(self, feature_map: jax.Array) -> Readout:
        pooled = mx_pool(self.unmix(feature_map), return_locations=True)
        return Readout(self.head(pooled.values), pooled)


@dataclasses.dataclass(frozen=True)
class NonNegativeOptimizer(optim.Optimizer):
    """An `optim.Optimizer` followed by the clamp W ≥ 0 after each step
    (`optax.keep_params_nonnegative`)."""

    def __call__(self, steps_per_epoch: int) -> optax.GradientTransformation:
        return optax.chain(super().__call__(steps_per_epoch), optax.keep_params_nonnegative())


class InfoDisent(Method):
    name = "infodisent"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        m = config.model
        if m.cache_features not in CACHE_CHOICES:
            raise UsageError(
                f"model.cache_features must be one of {', '.join(CACHE_CHOICES)}, got "
                f"'{m.cache_features}'."
            )
        augmenting = pipeline.augments(config.data.augment)
        if m.cache_features == "on" and augmenting:
            raise UsageError(
                "model.cache_features=on caches un-augmented feature maps, but data.augment "
                "is on; turn the augmentation off or set model.cache_features=auto."
            )
        if m.source_workdir and m.backbone_weights:
            raise UsageError(
                "Set either model.source_workdir (a trained black box) or model.backbone_weights "
                "(converted weights), not both."
            )
        self.config = config
        self.num_classes = dataset.num_classes
        self.image_shape = tuple(dataset.image_shape)
        self.cached = m.cache_features == "on" or (m.cache_features == "auto" and not augmenting)
        self.net = InfoDisentNet(m.backbone, m.stem, dataset.num_classes, compute_dtype(config))
        self._feature_rows = jax.jit(self._features_of_batch)
        self._evidence = jax.jit(self._evidence_of_images)

    # --- protocol ----------------------------------------------------------------------
    def init(self, rng, batch):
        return dict(self.net.init(rng, batch["image"]))

    def load_pretrained(self, variables):
        m = self.config.model
        source = m.source_workdir or m.backbone_weights
        if not source:
            return variables  # the black box is trained first (the "blackbox" phase)
        if m.source_workdir:
            blackbox.check_source(pathlib.Path(m.source_workdir), self.config)
        return load_backbone(
            variables, source, arch=m.backbone, allow_random_init=m.allow_random_init
        )

    def loss(self, params, state, batch, rng, phase):
        del rng, phase
        variables = {"params": params, **state}
        if "features" in batch:  # the feature cache
            feature_map = batch["features"]
        else:
            feature_map = self.net.apply(
                variables, batch["image"], method=InfoDisentNet.feature_map
            )
        # The backbone is frozen: no gradient is computed through it.
        feature_map = jax.lax.stop_gradient(feature_map)
        logits = self.net.apply(variables, feature_map, method=InfoDisentNet.read).logits
        ce = cross_entropy(logits, batch["label"], batch["valid"])
        metrics = {
            "loss": ce,
            "cross_entropy": ce,
            "accuracy": accuracy(logits, batch["label"], batch["valid"]),
        }
        return ce, (metrics, state)

    def predict(self, variables, images):
        return self.net.apply(variables, images).logits

    def embed(self, variables, images):
        """The channel values v `[B, D]` (`mx_pool` of the unmixed map), the head's input."""
        return self.net.apply(variables, images).pooled.values

    def phases(self, config):
        phases = []
        if self.trains_blackbox_first:
            # Trains the black box into WORKDIR/blackbox and freezes its backbone here.
            phases.append(
                Phase("blackbox", 0, "none", (), frozen=(".*",), after=self._blackbox_first)
            )
        head = self.head_phase(config)
        phases.append(
            dataclasses.replace(head, epochs=0, after=self._fit_on_cache) if self.cached else head
        )
        return phases

    def head_phase(self, config) -> Phase:
        """A and W trained with cross-entropy for `train.epochs`, the backbone frozen."""
        o = config.optim
        epochs = config.train.epochs
        schedule = blackbox.schedule_from_config(o, epochs)
        common = {
            "weight_decay": o.weight_decay,
            "schedule": schedule,
            "per_step": o.schedule == "cosine",
        }
        unmixing = optim.Optimizer(o.kind, o.unmixing_lr, **common)
        head = NonNegativeOptimizer(o.kind, o.lr, **common)
        return Phase(
            "head",
            epochs,
            o.kind,
            (("unmix/a", unmixing), ("head/kernel", head)),
            frozen=("backbone/.*",),
            update_batch_stats=False,
        )

    @property
    def trains_blackbox_first(self) -> bool:
        m = self.config.model
        return not (m.source_workdir or m.backbone_weights)

    def targets(self, variables):
        """Score functions (images are normalised model inputs):

        - `class_logit(images, classes [B])` and `class_probability(images, classes [B])`;
        - `embedding(images) -> [B, D]`: the channel values v;
        - `channel_value(images, channels [B])`: v of one channel per image;
        - `features(images) -> [B, h, w, D]` (the frozen backbone's map) and
          `head(feature_map, classes)` for Grad-CAM.
        """
        partial = jax.tree_util.Partial
        return {
            "class_logit": partial(self._class_logit, variables),
            "class_probability": partial(self._class_probability, variables),
            "embedding": partial(self.embed, variables),
            "channel_value": partial(self._channel_value, variables),
            "features": partial(self._features, variables),
            "head": partial(self._head, variables),
        }

    def summarize(self, variables, ctx):
        u = np.asarray(jax.jit(orthogonal_unmixing)(variables["params"]["unmix"]["a"]), np.float64)
        kernel = np.asarray(variables["params"]["head"]["kernel"])
        summary = {
            "blackbox_test_accuracy": None,
            "source": self.source_description(),
            "feature_cache": self.cached,
            "unmixing_orthogonality_error": float(np.max(np.abs(u.T @ u - np.eye(len(u))))),
            "head_weight_min": float(kernel.min()),
            "head_weight_nonzero_fraction": float(np.mean(kernel > 0)),
        }
        source = self.blackbox_workdir(ctx.workdir)
        if source is not None:
            method, source_variables = blackbox.load_source(source, self.config, ctx.dataset)
            summary["blackbox_test_accuracy"] = blackbox.source_test_accuracy(
                method, source_variables, ctx
            )
        return summary

    def figures(self, variables, ctx):
        """The channel explanations of the first `model.figure_images` test images under
        figures/channels/."""
        indices = np.arange(min(self.config.model.figure_images, len(ctx.dataset.split("test"))))
        if not len(indices):
            return []
        images = ctx.dataset.split("test").get_batch(indices)["image"]
        batches = functools.partial(ctx.collect, split="train")
        paths = self.explanation_figures(
            variables, images, batches, ctx.config, out=ctx.figures_dir / "channels"
        )
        return paths if ctx.is_main else []

    # --- sources -----------------------------------------------------------------------
    def source_description(self) -> str:
        m = self.config.model
        if m.source_workdir:
            return f"black box {m.source_workdir}"
        if m.backbone_weights:
            return f"pretrained weights {m.backbone_weights}"
        return f"black box trained first into {blackbox.SOURCE_SUBDIR}/"

    def blackbox_workdir(self, workdir: pathlib.Path) -> pathlib.Path | None:
        """The black box explained: model.source_workdir, or the one trained first."""
        m = self.config.model
        if m.source_workdir:
            return pathlib.Path(m.source_workdir)
        if self.trains_blackbox_first:
            return pathlib.Path(workdir) / blackbox.SOURCE_SUBDIR
        return None

    def _blackbox_first(self, variables, ctx):
        m = self.config.model
        path = blackbox.train_first(self.config, ctx, epochs=m.source_epochs, lr=m.source_lr)
        return load_backbone(variables, path, arch=m.backbone)

    # --- the feature cache -------------------------------------------------------------
    def _features_of_batch(self, variables, batch):
        feature_map = self.net.apply(variables, batch["image"], method=InfoDisentNet.feature_map)
        return {"features": feature_map, "label": batch["label"]}

    def _fit_on_cache(self, variables, ctx):
        """Trains A and W on the cached training feature maps with the engine's step, batch
        order and optimizer; logs each epoch's mean loss and accuracy."""
        config = ctx.config
        started = time.perf_counter()
        cache = ctx.collect(functools.partial(self._feature_rows, variables), "train")
        cached_at = time.perf_counter()
        phase = self.head_phase(config)
        n, batch_size = len(cache["label"]), config.data.batch_size
        per_epoch = pipeline.steps_per_epoch(
            ctx.dataset.split("train"), batch_size, drop_last=config.data.drop_last
        )
        tx = optim.build_optimizer(phase, variables["params"], per_epoch)
        base_rng = jax.random.fold_in(jax.random.key(config.seed), 1)
        step_fn = loop.TrainStep(
            loop.make_train_step(self, phase, tx, base_rng, config.train.grad_accum_steps),
            ctx.mesh,
        )
        replicated = NamedSharding(ctx.mesh, PartitionSpec())
        state = jax.device_put(
            loop.TrainState(
                variables,
                {phase.optimizer: tx.init(variables["params"])},
                *(jnp.zeros((), jnp.int32) for _ in range(3)),
            ),
            replicated,
        )
        rows = pipeline.local_rows(batch_size, ctx.mesh)
        for epoch in range(phase.epochs):
            order = pipeline.epoch_permutation(config.seed, epoch, n)
            window = []
            for position in range(per_epoch):
                chunk = order[position * batch_size : (position + 1) * batch_size]
                valid = np.arange(batch_size) < len(chunk)
                padded = np.concatenate([chunk, np.full(batch_size - len(chunk), chunk[0])])
                local = padded[rows]
                batch = {
                    "features": cache["features"][local],
                    "label": cache["label"][local].astype(np.int32),
                    "index": local.astype(np.int32),
                    "valid": valid[rows],
                }
                state, metrics, flags = step_fn(state, pipeline.to_global(batch, ctx.mesh))
                window.append((metrics, flags))
            values = jax.device_get(window)
            bad = sorted({k for _, f in values for k, ok in f.items() if not bool(ok)})
            if bad:
                raise NonFiniteError(
                    f"The {', '.join(bad)} term became non-finite in epoch {epoch + 1} of the "
                    "cached head fit; lower optim.lr or optim.unmixing_lr and rerun."
                )
            ctx.log(
                event="head_epoch",
                epoch=epoch + 1,
                **{k: float(np.mean([m[k] for m, _ in values])) for k in values[0][0]},
            )
        jax.block_until_ready(state.variables)
        done = time.perf_counter()
        steps = phase.epochs * per_epoch
        ctx.record("feature_cache_seconds", cached_at - started)
        ctx.record("head_fit_seconds", done - cached_at)
        ctx.record("head_steps", steps)
        ctx.record("head_images_per_sec", steps * batch_size / max(done - cached_at, 1e-9))
        return state.variables

    # --- explanations ------------------------------------------------------------------
    def _evidence_of_images(self, variables, images) -> Readout:
        return self.net.apply(variables, images)

    def _unmixed_of_images(self, variables, images):
        feature_map = self.net.apply(variables, images, method=InfoDisentNet.feature_map)
        return self.net.apply(variables, feature_map, method=InfoDisentNet.unmixed)

    def evidence(self, variables, images: np.ndarray) -> Readout:
        """`Readout` (logits, and `mx_pool` values with their locations) of normalised images
        `[B, H, W, C]`, as NumPy."""
        return jax.device_get(self._evidence(variables, jnp.asarray(images)))

    def location_boxes(self, variables) -> np.ndarray:
        """The receptive-field box `[h, w, 4]` of every feature-map location, in pixels."""
        m = self.config.model
        features = jax.tree_util.Partial(self._features, variables)
        return receptive_field_boxes(
            features, self.image_shape, cache_key=("infodisent", m.backbone, m.stem)
        )

    def explanation_figures(
        self, variables, images: np.ndarray, collect, config, *, out: pathlib.Path
    ) -> list[pathlib.Path]:
        """Writes one channel explanation per image (normalised `[B, H, W, C]`) under `out`.

        `collect(fn)` runs `fn(batch)` over an ordered pass of the training split and returns
        its rows (`RunContext.collect`), for the channels' top-activating training patches.
        """
        m = config.model
        readout = self.evidence(variables, images)
        predicted = np.argmax(readout.logits, axis=-1)
        kernel = np.asarray(variables["params"]["head"]["kernel"])
        pooled = readout.pooled
        chosen = channel_explain.top_channels(
            pooled.values,
            pooled.positive_locations,
            pooled.negative_locations,
            kernel,
            predicted,
            k=min(m.explain_channels, kernel.shape[0]),
        )
        shown = np.unique(chosen.channels)
        unmixed = jax.jit(self._unmixed_of_images)

        def extremes(batch):
            return channel_explain.channel_extremes(unmixed(variables, batch["image"]), shown)

        gallery = channel_explain.top_activating(collect(extremes), k=m.explain_patches)
        boxes = self.location_boxes(variables)
        train = _TrainImages(collect, config.data.normalization)
        out.mkdir(parents=True, exist_ok=True)
        paths = []
        for i, image in enumerate(images):
            fig = channel_explain.channel_explanation(
                pipeline.denormalize(image, config.data.normalization),
                jax.tree.map(lambda x, i=i: x[i], chosen),
                boxes,
                gallery,
                train.images(gallery.indices),
                shown,
                title=f"image {i}: predicted class {predicted[i]}",
            )
            path = out / f"image_{i:03d}.png"
            fig.savefig(path, dpi=100)
            pyplot().close(fig)
            paths.append(path)
        return paths

    # --- targets -----------------------------------------------------------------------
    def _class_logit(self, variables, images, classes):
        return class_logit(self.predict, variables, images, classes)

    def _class_probability(self, variables, images, classes):
        return class_probability(self.predict, variables, images, classes)

    def _channel_value(self, variables, images, channels):
        values = self.embed(variables, images)
        return jnp.take_along_axis(values, channels[:, None].astype(jnp.int32), axis=1)[:, 0]

    def _features(self, variables, images):
        return self.net.apply(variables, images, method=InfoDisentNet.feature_map)

    def _head(self, variables, feature_map, classes):
        logits = self.net.apply(variables, feature_map, method=InfoDisentNet.read).logits
        return jnp.take_along_axis(logits, classes[:, None].astype(jnp.int32), axis=1)[:, 0]


class _TrainImages:
    """Training images by index, in [0, 1], read through ordered passes."""

    def __init__(self, collect, normalization: str):
        self.collect, self.normalization = collect, normalization

    def images(self, indices: np.ndarray) -> dict[int, np.ndarray]:
        wanted = np.unique(indices)
        rows = self.collect(lambda batch: batch["image"], indices=wanted)
        return {
            int(i): pipeline.denormalize(np.asarray(r), self.normalization)
            for i, r in zip(wanted, rows)
        }


def build(config: ConfigDict, dataset: Dataset) -> InfoDisent:
    return InfoDisent(config, dataset)


def own_explanation(
    method, variables, config, dataset, *, split: str, indices: np.ndarray, out: pathlib.Path
) -> list[pathlib.Path]:
    """Writes the channel explanation of `dataset.split(split)` images `indices` under `out`
    and returns the figures' paths (the explain launcher's hook)."""
    trained = getattr(method, "trained", method)  # a LoadedMethod wraps the trained method
    images = dataset.split(split).get_batch(np.asarray(indices))["image"]
    images = pipeline.normalize(images, config.data.normalization).astype(np.float32)
    train = dataset.split("train")
    eval_batch = config.data.eval_batch_size

    def collect(fn, indices=None):
        parts = []
        for batch in pipeline.ordered_batches(
            train, batch_size=eval_batch, normalization=config.data.normalization, indices=indices
        ):
            valid = batch["valid"]
            rows = fn({k: jnp.asarray(v) for k, v in batch.items()})
            parts.append(jax.tree.map(lambda x, valid=valid: np.asarray(x)[valid], rows))
        return jax.tree.map(lambda *r: np.concatenate(r), *parts)

    return trained.explanation_figures(variables, images, collect, config, out=out)


__all__ = [
    "ChannelUnmixing",
    "InfoDisent",
    "InfoDisentNet",
    "NonNegativeLinear",
    "Readout",
    "build",
    "default_model_config",
    "default_optim_config",
    "mx_pool",
    "orthogonal_unmixing",
    "own_explanation",
]
