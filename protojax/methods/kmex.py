"""KMEx (Gautam, Boubekki, Höhne and Kampffmeyer, TMLR 2024, "Prototypical Self-Explainable
Models Without Re-training"; official code SrishtiGautam/KMEx): any trained encoder becomes a
prototype classifier without re-training. k-means fits M centroids per class in its
embedding, each centroid is shown by its nearest training image of its class, and an image
takes the class of its nearest centroid.

The source encoder is the run in `model.source_workdir`:
- a black box, through its pooled embedding;
- ProtoVAE or Pantypes, through μ;
- ProtoPNet, through its add-on latent, which must be a 1×1 grid at the input size (the
  official `conv_features(x).squeeze()`) unless `model.pool="avg"` averages it;
- FLINT, through its predictor's penultimate features;
- any other method, through its `embed`.

With no source, the black box of this config (`model.backbone`, `config.optim`,
`train.epochs`, the same data) trains first, into WORKDIR/blackbox, and the log says so.

The run has one phase of zero epochs whose `after` operation fits the centroids:
1. the source's variables are restored from its newest checkpoint (they become this run's
   variables, beside the `kmex` collection);
2. the un-augmented **training** split is embedded in an ordered sharded pass (the official
   MNIST code fits on the test split, `push_dataset` with `train=False`: not here);
3. `protojax.prototypes.centroids.class_kmeans` fits M = `model.per_class` centroids per
   class, every class in one compiled program, as scikit-learn's `KMeans(n_clusters=M)`
   with `n_init=10` (its default before 1.4), k-means++, 300 iterations, tol 1e-4.

`predict` is the nearest centroid over all classes (`model.prediction="nearest"`, the
official `kmc.predict`) or the official soft version (`"soft"`): the similarity
log((d + 1)/(d + 1e-4)) on the Euclidean distance, a softmax over the centroids and a sum per
class. Accuracy is plain accuracy; the official code's Hungarian matching cannot exceed it for
a supervised prediction and is not used.

summary.json adds `blackbox_test_accuracy` (the source's own accuracy on the test split),
`test_accuracy_nearest`, `test_accuracy_soft`, `blackbox_agreement` (the fraction of test
images where KMEx and the source predict the same class), `centroid_importance` (per class,
the training images each centroid represents), `diversity_entropy` (of the centroids,
`prototypes.diversity.prototype_diversity_entropy`) and, for a ProtoPNet, ProtoVAE or
Pantypes source, `source_diversity_entropy` of its own active prototypes (squared distances
for ProtoPNet, as the official `evaluation.py::diversity`).
"""

from __future__ import annotations

import functools
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec

from protojax import config as config_lib
from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.explain.prp import kmex_relevance, prp_score
from protojax.methods import blackbox as blackbox_lib
from protojax.methods import build_method, default_config, read_config, read_dataset
from protojax.methods.common import ClassTargets
from protojax.prototypes.centroids import (
    class_kmeans,
    nearest_centroid_logits,
    soft_centroid_log_probabilities,
)
from protojax.prototypes.distances import l2_distances, log_similarity
from protojax.prototypes.diversity import prototype_diversity_entropy
from protojax.train import loop
from protojax.train.protocol import Method, Phase

STATE = "kmex"
# The similarity's eps of the official soft prediction and diversity (1e-4).
EPS = 1e-4
# Sources whose own prototypes live in the embedding KMEx clusters (squared distances?).
_SOURCE_PROTOTYPES = {"protopnet": True, "protovae": False, "pantypes": False}


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            # The trained run whose encoder KMEx explains; empty: train the black box of this
            # config first, into WORKDIR/blackbox.
            "source_workdir": "",
            # M, centroids per class (the official 5 for 10-class sets, 10 for CUB-200).
            "per_class": 5,
            # ProtoPNet sources: none (the latent must be a 1×1 grid) or avg (average it).
            "pool": "none",
            # nearest (nearest centroid, the official kmc.predict) or soft (model_fwd).
            "prediction": "nearest",
            # scikit-learn KMeans settings (n_init's default before scikit-learn 1.4).
            "n_init": 10,
            "max_iter": 300,
            "tol": 1e-4,
            # The black box trained without a source (see protojax.methods.blackbox).
            **blackbox_lib.default_model_config(),
        }
    )


def default_optim_config() -> ConfigDict:
    """The optimizer of the black box trained when there is no source."""
    return blackbox_lib.default_optim_config()


def blackbox_config(config: ConfigDict) -> ConfigDict:
    """The black box of a KMEx config: the same data, seed, optimizer and epochs, and the
    KMEx config's backbone settings (`model.backbone`, `stem`, `backbone_weights`,
    `allow_random_init`). It always trains to the end (`train.stop_after_steps` = 0)."""
    bb = default_config("blackbox")
    for key in bb.model:
        bb.model[key] = config.model[key]
    bb.seed = config.seed
    bb.data = config_lib.from_dict(config_lib.to_dict(config.data))
    bb.optim = config_lib.from_dict(config_lib.to_dict(config.optim))
    bb.train = config_lib.from_dict(config_lib.to_dict(config.train))
    bb.train.stop_after_steps = 0
    return bb


def _check_options(m: ConfigDict) -> None:
    if m.per_class < 1:
        raise UsageError(f"model.per_class must be at least 1, got {m.per_class}.")
    if m.pool not in ("none", "avg"):
        raise UsageError(f"model.pool must be none or avg, got '{m.pool}'.")
    if m.prediction not in ("nearest", "soft"):
        raise UsageError(f"model.prediction must be nearest or soft, got '{m.prediction}'.")
    if m.n_init < 1 or m.max_iter < 1 or m.tol < 0:
        raise UsageError("model.n_init and model.max_iter must be ≥ 1 and model.tol ≥ 0.")


class KMEx(ClassTargets, Method):
    name = "kmex"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        m = config.model
        _check_options(m)
        self.config = config
        self.num_classes = dataset.num_classes
        self.class_names = list(dataset.class_names)
        self.per_class = m.per_class
        self.num_prototypes = dataset.num_classes * m.per_class
        if m.source_workdir:
            self.source_config = read_config(m.source_workdir)
            source_dataset = read_dataset(m.source_workdir)
            self._check_source(config, dataset, source_dataset)
        else:
            self.source_config, source_dataset = blackbox_config(config), dataset
        self.source_name = self.source_config.method
        self.source = build_method(self.source_config, source_dataset)
        self._check_pool(dataset)

    def _check_source(self, config, dataset: Dataset, source_dataset: Dataset) -> None:
        where = config.model.source_workdir
        if self.source_config.method == "kmex":
            raise UsageError(
                f"{where} is a KMEx run; point model.source_workdir at the run it explains."
            )
        if (source_dataset.num_classes, tuple(source_dataset.image_shape)) != (
            dataset.num_classes,
            tuple(dataset.image_shape),
        ):
            raise UsageError(
                f"The source run in {where} was trained on {source_dataset.num_classes} classes "
                f"of {tuple(source_dataset.image_shape)} images, this config's data has "
                f"{dataset.num_classes} of {tuple(dataset.image_shape)}; use the source's "
                "config.data."
            )
        theirs = self.source_config.data.normalization
        if theirs != config.data.normalization:
            raise UsageError(
                f"The source run in {where} takes data.normalization={theirs}, this config "
                f"{config.data.normalization}; set --config.data.normalization={theirs}."
            )

    def _check_pool(self, dataset: Dataset) -> None:
        pool = self.config.model.pool
        if self.source_name != "protopnet":
            if pool != "none":
                raise UsageError(
                    f"model.pool applies to ProtoPNet sources only; this source is a "
                    f"{self.source_name} run, whose embedding is a vector: set model.pool=none."
                )
            return
        h, w, c = dataset.image_shape
        images = jax.ShapeDtypeStruct((1, h, w, c), jnp.float32)
        batch = {"image": images, "label": jax.ShapeDtypeStruct((1,), jnp.int32)}
        variables = jax.eval_shape(self.source.init, jax.random.key(0), batch)
        latent = jax.eval_shape(lambda v, x: self.source.targets(v)["latent"](x), variables, images)
        grid = tuple(latent.shape[1:3])
        if grid != (1, 1) and pool == "none":
            raise UsageError(
                f"The ProtoPNet source's latent is a {grid[0]}×{grid[1]} grid at {h}×{w} px; "
                "KMEx clusters one vector per image, which needs a 1×1 grid: set "
                "--config.model.pool=avg to average the latent."
            )

    # --- the model ----------------------------------------------------------------------
    @staticmethod
    def source_variables(variables):
        """The source's variables within this run's."""
        return {k: v for k, v in variables.items() if k != STATE}

    def embed(self, variables, images):
        """The source's embedding `[B, D]` of `images [B, H, W, C]`, where the centroids
        live."""
        source = self.source_variables(variables)
        if self.source_name == "protopnet":
            latent = self.source.targets(source)["latent"](images)  # [B, h, w, D]
            if self.config.model.pool == "avg":
                return jnp.mean(latent.astype(jnp.float32), axis=(1, 2))
            return latent.reshape(latent.shape[0], -1).astype(jnp.float32)
        return self.source.embed(source, images).astype(jnp.float32)

    def _logits(self, variables, images, prediction: str):
        z = self.embed(variables, images)
        centroids = variables[STATE]["centroids"]
        if prediction == "soft":
            return soft_centroid_log_probabilities(
                z, centroids, num_classes=self.num_classes, eps=EPS
            )
        return nearest_centroid_logits(z, centroids, num_classes=self.num_classes)

    def predict(self, variables, images):
        """Logits `[B, K]`: −(squared distance to each class's nearest centroid), or the soft
        prediction's log-probabilities (`model.prediction`)."""
        return self._logits(variables, images, self.config.model.prediction)

    def init(self, rng, batch):
        variables = dict(self.source.init(rng, batch))
        dim = jax.eval_shape(self.embed, {**variables, STATE: {}}, batch["image"]).shape[-1]
        p = self.num_prototypes
        variables[STATE] = {
            "centroids": jnp.zeros((p, dim), jnp.float32),
            "prototype_class": jnp.arange(p, dtype=jnp.int32) // self.per_class,
            "importance": jnp.zeros((p,), jnp.int32),
            "nearest_index": jnp.full((p,), -1, jnp.int32),
        }
        return variables

    def loss(self, params, state, batch, rng, phase):
        raise UsageError("KMEx trains no parameters: its one phase has zero epochs.")

    def phases(self, config):
        return [Phase("kmeans", 0, "frozen", (), frozen=(".*",), after=self.fit)]

    # --- fitting ------------------------------------------------------------------------
    def trained_source(self, ctx) -> pathlib.Path:
        """The source's workdir; without `model.source_workdir`, the black box of this config
        trained (or resumed) in WORKDIR/blackbox first."""
        if self.config.model.source_workdir:
            return pathlib.Path(self.config.model.source_workdir)
        return blackbox_lib.train_first(self.source_config, ctx)

    def fit(self, variables, ctx):
        """The `after` operation: restores the source, embeds the training split and fits the
        centroids."""
        where = self.trained_source(ctx)
        dataset = read_dataset(where)
        source = loop.restore_variables(self.source, self.source_config, dataset, where)
        source = jax.device_put(source, NamedSharding(ctx.mesh, PartitionSpec()))
        variables = {**source, STATE: variables[STATE]}
        rows = ctx.collect(functools.partial(self._embed_rows, variables), "train")
        m = self.config.model
        fitted = class_kmeans(
            rows["embedding"],
            rows["label"],
            num_classes=self.num_classes,
            per_class=self.per_class,
            rng=ctx.rng("kmeans"),
            n_init=m.n_init,
            max_iter=m.max_iter,
            tol=m.tol,
        )
        ctx.log(
            event="kmeans",
            source=str(where),
            train_images=int(len(rows["label"])),
            inertia=[float(v) for v in np.asarray(fitted.inertia)],
        )
        return {
            **source,
            STATE: {
                "centroids": fitted.centroids,
                "prototype_class": fitted.prototype_class,
                "importance": fitted.importance,
                "nearest_index": jnp.asarray(rows["index"][np.asarray(fitted.nearest)]),
            },
        }

    @functools.partial(jax.jit, static_argnums=0)
    def _embed_rows(self, variables, batch):
        return {
            "embedding": self.embed(variables, batch["image"]),
            "label": batch["label"],
            "index": batch["index"],
        }

    # --- targets ------------------------------------------------------------------------
    def targets(self, variables):
        """Score functions on normalised images `[B, H, W, C]`:

        - `class_logit(images, classes [B])` and `class_probability(images, classes [B])`;
        - `embedding(images) -> [B, D]`, the source's embedding;
        - `prototype_similarity(images, prototypes [B])`: log((d + 1)/(d + 1e-4)) to centroid
          `prototypes`, d Euclidean;
        - `prp(images, prototypes [B])`: `explain.prp.prp_score` of KMEx's latent relevance
          (`explain.prp.kmex_relevance`, the official identity backward seeded with ones, so
          the map is the same for every centroid), whose LRP (composite `prp`) is PRP through
          the source's encoder. It starts at the embedding, or for a ProtoPNet source at the
          add-on's pre-sigmoid latent, whose sigmoid passes relevance unchanged (as ProtoPNet's
          own `prp` target).
        """
        partial = jax.tree_util.Partial
        centroids = variables[STATE]["centroids"]
        if self.source_name == "protopnet":
            avg = self.config.model.pool == "avg"
            through = _through_averaged_sigmoid if avg else _through_sigmoid
            prp = partial(
                prp_score,
                partial(self._latent_logits, variables),
                partial(through, kmex_relevance(centroids)),
            )
        else:
            prp = partial(prp_score, partial(self.embed, variables), kmex_relevance(centroids))
        return {
            **self.class_targets(variables),
            "prototype_similarity": partial(self._prototype_similarity, variables),
            "prp": prp,
        }

    def _latent_logits(self, variables, images):
        """A ProtoPNet source's add-on output before its sigmoid `[B, h, w, D]`."""
        return self.source.latent_logits(self.source_variables(variables), images)

    def _prototype_similarity(self, variables, images, prototypes):
        chosen = variables[STATE]["centroids"][prototypes.astype(jnp.int32)]  # [B, D]
        z = self.embed(variables, images)
        d = jnp.sqrt(jnp.maximum(jnp.sum((z - chosen) ** 2, axis=-1), 0.0))
        return log_similarity(d, eps=EPS)

    def similarities(self, variables, images):
        """log((d + 1)/(d + 1e-4)) `[B, P]` to every centroid."""
        z = self.embed(variables, images)
        return log_similarity(l2_distances(z, variables[STATE]["centroids"]), eps=EPS)

    # --- summary and figures ------------------------------------------------------------
    @functools.partial(jax.jit, static_argnums=0)
    def _test_rows(self, variables, batch):
        images = batch["image"]
        return {
            "nearest": jnp.argmax(self._logits(variables, images, "nearest"), axis=-1),
            "soft": jnp.argmax(self._logits(variables, images, "soft"), axis=-1),
            "source": jnp.argmax(
                self.source.predict(self.source_variables(variables), images), axis=-1
            ),
            "label": batch["label"],
        }

    def source_prototypes(self, variables) -> tuple[np.ndarray, bool] | None:
        """The source's own active prototypes `[P', D]` and whether its distances are squared,
        or None for a source without prototypes in the embedding."""
        if self.source_name not in _SOURCE_PROTOTYPES:
            return None
        prototypes = np.asarray(variables["params"]["prototypes"])
        active = np.asarray(variables["prototype_state"]["active"])
        return prototypes[active], _SOURCE_PROTOTYPES[self.source_name]

    def summarize(self, variables, ctx):
        rows = ctx.collect(functools.partial(self._test_rows, variables), "test")
        label = rows["label"]
        state = variables[STATE]
        importance = np.asarray(state["importance"]).reshape(self.num_classes, self.per_class)
        summary = {
            "source_method": self.source_name,
            "source_workdir": str(self.trained_source(ctx)),
            "blackbox_test_accuracy": float(np.mean(rows["source"] == label)),
            "test_accuracy_nearest": float(np.mean(rows["nearest"] == label)),
            "test_accuracy_soft": float(np.mean(rows["soft"] == label)),
            "blackbox_agreement": float(
                np.mean(rows[self.config.model.prediction] == rows["source"])
            ),
            "centroid_importance": importance.tolist(),
            "diversity_entropy": float(prototype_diversity_entropy(state["centroids"]).aggregate),
        }
        own = self.source_prototypes(variables)
        if own is not None:
            prototypes, squared = own
            summary["source_diversity_entropy"] = float(
                prototype_diversity_entropy(prototypes, squared=squared).aggregate
            )
        return summary

    def figures(self, variables, ctx):
        """Each class's centroids, each shown by its nearest training image of the class with
        its importance (`kmex_prototypes.png`)."""
        from protojax.explain.figures import centroid_gallery

        state = {k: np.asarray(v) for k, v in variables[STATE].items()}
        images = ctx.dataset.split("train").get_batch(state["nearest_index"])["image"]
        h, w, c = images.shape[1:]
        fig = centroid_gallery(
            images.reshape(self.num_classes, self.per_class, h, w, c),
            state["importance"].reshape(self.num_classes, self.per_class),
            class_names=self.class_names,
            title=f"KMEx prototypes: nearest training image of each centroid ({self.source_name})",
        )
        return [ctx.save_figure(fig, "kmex_prototypes.png")]


def _through_sigmoid(relevance_fn, logits, targets):
    """The relevance at a ProtoPNet source's pre-sigmoid 1×1 latent `[B, 1, 1, D]` of
    `relevance_fn(embedding [B, D], targets)`, the embedding being its sigmoid, which passes
    the relevance unchanged."""
    latent = jax.nn.sigmoid(logits.astype(jnp.float32))
    relevance = relevance_fn(latent.reshape(latent.shape[0], -1), targets)
    return relevance.reshape(latent.shape)


def _through_averaged_sigmoid(relevance_fn, logits, targets):
    """As `_through_sigmoid` for the embedding averaged over the grid (`model.pool="avg"`),
    whose LRP-0 splits each dimension's relevance over the grid in proportion to the sigmoid
    values."""
    latent = jax.nn.sigmoid(logits.astype(jnp.float32))
    totals = jnp.sum(latent, axis=(1, 2), keepdims=True)  # [B, 1, 1, D]
    relevance = relevance_fn(totals[:, 0, 0] / (latent.shape[1] * latent.shape[2]), targets)
    return latent / totals * relevance[:, None, None, :]


def build(config: ConfigDict, dataset: Dataset) -> KMEx:
    return KMEx(config, dataset)


def own_explanation(
    method, variables, config, dataset, *, split: str, indices: np.ndarray, out: pathlib.Path
) -> list[pathlib.Path]:
    """For each of `dataset.split(split)` images `indices`, the image beside its nearest
    centroids (each shown by its nearest training image), with class, distance and
    importance; one figure `image_NNN/nearest_centroids.png` per image, written under `out`
    beside the explain launcher's maps of the image."""
    from protojax.data.pipeline import normalize
    from protojax.explain.figures import nearest_prototypes, pyplot

    state = {k: np.asarray(v) for k, v in variables[STATE].items()}
    kmex = getattr(method, "trained", method)  # a loaded run's method normalises itself
    raw = dataset.split(split).get_batch(np.asarray(indices))
    images = normalize(raw["image"], config.data.normalization)
    z = np.asarray(kmex.embed(variables, jnp.asarray(images)))
    distances = np.asarray(l2_distances(jnp.asarray(z), jnp.asarray(state["centroids"])))
    predicted = np.asarray(jnp.argmax(kmex.predict(variables, jnp.asarray(images)), axis=-1))
    shown = min(5, len(state["centroids"]))
    train = dataset.split("train")
    names = dataset.class_names
    paths = []
    for row, n in enumerate(np.asarray(indices)):
        order = np.argsort(distances[row], kind="stable")[:shown]
        sources = train.get_batch(state["nearest_index"][order])["image"]
        texts = [
            f"centroid {j} ({names[state['prototype_class'][j]]})\n"
            f"distance {distances[row, j]:.3f}\nimportance {state['importance'][j]}"
            for j in order
        ]
        title = (
            f"{split} image {int(n)}: predicted {names[predicted[row]]}, "
            f"true {names[int(raw['label'][row])]}"
        )
        fig = nearest_prototypes(raw["image"][row], sources, texts, title=title)
        path = out / f"image_{int(n):03d}" / "nearest_centroids.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        pyplot().close(fig)
        paths.append(path)
    return paths
