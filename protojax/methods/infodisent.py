"""InfoDisent (Struski, Rymarczyk and Tabor, arXiv 2409.10329): a frozen trained backbone whose
final feature map is unmixed by an orthogonal matrix and read channel by channel.

The model (`protojax.nn.infodisent`), for a feature map F `[B, h, w, D]` of the frozen backbone:

    U = expm(A − Aᵀ)                      once per step; A `[D, D]` starts at 0, so U = I
    Z_hw = U F_hw                         every pixel's channel vector rotated (J_rs = U I_rs)
    v_d = max_hw ReLU(Z_hwd) − max_hw ReLU(−Z_hwd)        (`mx_pool`)
    logits_k = Σ_d W_dk v_d,  W ≥ 0,  no bias

trained with cross-entropy on A and W only. There is no bias, so that the channels'
contributions W_dk·v_d add up to the whole logit that the explanation shows.

**W ≥ 0 is kept by a clamp after each step, not by a reparameterisation**: the head's optimizer
(`optim.NonNegativeOptimizer`) ends with `optax.keep_params_nonnegative`, which turns an
update that would take an entry below 0 into one that sets it to 0 (projected gradient
descent, the clamp PIP-Net uses). W starts at 0.

**Feature cache.** The backbone is frozen, so where no augmentation changes the training images
(`data.augment` all off) the feature maps of the training split are computed once, in an
ordered sharded pass, and the head trains on them (`model.cache_features="auto"`, the default
where it is valid). The cached fit (`protojax.train.cache.fit_on_rows`) runs the engine's own
step on the engine's batch order (`pipeline.epoch_permutation`) and optimizer, so it ends at
the parameters an uncached run reaches (`model.cache_features="off"`), at a fraction of the
cost. It runs inside the `head`
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

import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict, compute_dtype
from protojax.data import pipeline
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.explain import channels as channel_explain
from protojax.methods import blackbox
from protojax.methods.common import ClassTargets, accuracy, cross_entropy, pick
from protojax.nn.infodisent import InfoDisentNet, Readout, with_fixed_unmixing
from protojax.nn.receptive_field import receptive_field_boxes
from protojax.nn.weights import load_backbone, load_configured_backbone
from protojax.prototypes.channels import orthogonal_unmixing
from protojax.train import optim
from protojax.train.cache import fit_on_rows
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


class InfoDisent(ClassTargets, Method):
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
        if m.source_workdir:
            blackbox.check_source(pathlib.Path(m.source_workdir), self.config)
        # Neither source: the black box is trained first (the "blackbox" phase).
        return load_configured_backbone(variables, m, m.source_workdir or m.backbone_weights)

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
        head = optim.NonNegativeOptimizer(o.kind, o.lr, **common)
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
        # U once here rather than a matrix exponential in every explainer's program and call.
        variables = with_fixed_unmixing(variables)
        return {
            **self.class_targets(variables),
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
        path = blackbox.train_first(
            blackbox.source_config(self.config, epochs=m.source_epochs, lr=m.source_lr), ctx
        )
        return load_backbone(variables, path, arch=m.backbone)

    # --- the feature cache -------------------------------------------------------------
    def _features_of_batch(self, variables, batch):
        feature_map = self.net.apply(variables, batch["image"], method=InfoDisentNet.feature_map)
        return {"features": feature_map, "label": batch["label"]}

    def _fit_on_cache(self, variables, ctx):
        """Trains A and W on the cached training feature maps (`train.cache.fit_on_rows`: the
        engine's step, batch order and optimizer); logs each epoch as `head_epoch`."""
        started = time.perf_counter()
        cache = ctx.collect(functools.partial(self._feature_rows, variables), "train")
        cached_at = time.perf_counter()
        fit = fit_on_rows(
            self, self.head_phase(ctx.config), variables, cache, ctx, event="head_epoch"
        )
        done = time.perf_counter()
        ctx.record("feature_cache_seconds", cached_at - started)
        ctx.record("head_fit_seconds", done - cached_at)
        ctx.record("head_steps", fit.steps)
        ctx.record(
            "head_images_per_sec",
            fit.steps * ctx.config.data.batch_size / max(done - cached_at, 1e-9),
        )
        return fit.variables

    # --- explanations ------------------------------------------------------------------
    def _evidence_of_images(self, variables, images) -> Readout:
        return self.net.apply(variables, images)

    def _unmixed_of_images(self, variables, images):
        return self.net.apply(variables, images, method=InfoDisentNet.unmixed_of_images)

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
        """Writes one channel explanation per image (normalised `[B, H, W, C]`) under `out`
        (`explain.channels.write_channel_explanations`).

        `collect(fn)` runs `fn(batch)` over an ordered pass of the training split and returns
        its rows (`RunContext.collect`), for the channels' top-activating training patches.
        """
        m = config.model
        readout = self.evidence(variables, images)
        return channel_explain.write_channel_explanations(
            out,
            images,
            readout.logits,
            readout.pooled,
            np.asarray(variables["params"]["head"]["kernel"]),
            self.location_boxes(variables),
            jax.tree_util.Partial(self._unmixed_of_images, variables),
            collect,
            functools.partial(pipeline.denormalize, mode=config.data.normalization),
            channels=m.explain_channels,
            patches=m.explain_patches,
        )

    # --- targets -----------------------------------------------------------------------
    def _channel_value(self, variables, images, channels):
        return pick(self.embed(variables, images), channels)

    def _features(self, variables, images):
        return self.net.apply(variables, images, method=InfoDisentNet.feature_map)

    def _head(self, variables, feature_map, classes):
        return pick(
            self.net.apply(variables, feature_map, method=InfoDisentNet.read).logits, classes
        )


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
    collect = functools.partial(
        pipeline.collect,
        dataset.split("train"),
        batch_size=config.data.eval_batch_size,
        normalization=config.data.normalization,
    )
    return trained.explanation_figures(variables, images, collect, config, out=out)


__all__ = [
    "InfoDisent",
    "build",
    "default_model_config",
    "default_optim_config",
    "own_explanation",
]
