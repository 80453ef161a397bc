"""FLINT (Parekh, Mozharovskyi and d'Alché-Buc, NeurIPS 2021): a predictor f learned jointly
with an interpreter h that reads a small dictionary of attributes Φ(x) computed from f's
hidden layers, as the official code trains it (jayneelparekh/FLINT `flint.py::train`).

The model: f (classifier), Φ (attributes from f's hidden maps), h = Linear(J → K) after
dropout 0.01 (the interpreter), and d (a decoder reconstructing x from Φ(x)); the per-dataset
networks are in `protojax.nn.flint`. The loss is

    L = λ_pred·CE(f(x), y) + λ_rec·L_if + λ_expl·L_of + λ_spa·L_spa + λ_ent·L_cd

with L_if = mean (d(Φ(x)) − x)² (mean |·| for CIFAR-10), L_of the cross-entropy of h's
softmax against f's detached softmax, L_cd = E_b[H(softmax|Φ(x_b)|)] − H(softmax(mean_b
|Φ(x_b)|)), and L_spa = mean |Φ(x)|. Each λ is gated by the epoch e (counted from 1) as
`config.model.schedule` writes it: Σ weight·[e > after] over its (after, weight) pairs.

Training is one Adam over every parameter. The phases split the epochs where a coefficient
changes (the coefficients are constants of each phase's compiled step) and share the
optimizer "adam", except from `optim.reset_epoch` (19) on: there the official code re-creates
Adam with lr 4e-5, so those phases use a second optimizer, "adam_reset", whose moments start
at zero.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from protojax.config import ConfigDict
from protojax.data.base import Dataset
from protojax.errors import UsageError
from protojax.methods.common import ClassTargets, accuracy, cross_entropy, masked_mean, pick
from protojax.nn.flint import FlintNet, FlintOutput
from protojax.train import optim
from protojax.train.protocol import Method, Phase

TERMS = ("pred", "rec", "expl", "spa", "ent")
# The metric each coefficient multiplies.
_METRIC = {
    "pred": "cross_entropy",
    "rec": "input_fidelity",
    "expl": "output_fidelity",
    "spa": "sparsity",
    "ent": "conditional_entropy",
}


def official_schedule(dataset: str) -> dict[str, tuple[tuple[int, float], ...]]:
    """The official epoch gating (`flint.py` main loop) as (after, weight) pairs: a term's
    coefficient at epoch e is Σ weight·[e > after]."""
    tables = {
        "mnist": {"rec": ((0, 0.8),), "expl": ((2, 0.5),), "spa": ((2, 0.1),), "ent": ((4, 0.2),)},
        "quickdraw": {
            "rec": ((0, 5.0),),
            "expl": ((2, 0.1),),
            "spa": ((1, 0.02), (2, 0.28)),
            "ent": ((3, 0.1),),
        },
        "cifar10": {
            "rec": ((0, 2.0),),
            "expl": ((2, 0.6),),
            "spa": ((1, 0.001), (2, 0.149)),
            "ent": ((3, 0.2),),
        },
    }
    return {"pred": ((0, 1.0),), **tables["mnist" if dataset == "fmnist" else dataset]}


def default_model_config() -> ConfigDict:
    return ConfigDict(
        {
            # Networks of protojax.nn.flint: mnist (also fMNIST), quickdraw or cifar10.
            "arch": "mnist",
            # J, the attributes (official: 25 MNIST/fMNIST, 24 QuickDraw, 36 CIFAR-10).
            "num_attributes": 25,
            # Input fidelity: mse, or l1 (the official CIFAR-10 choice).
            "reconstruction": "mse",
            # Coefficient of each term at epoch e (from 1): Σ weight·[e > after].
            "schedule": official_schedule("mnist"),
            # The attribute figures (activation maximisation as the official optimize_inp).
            "visualise": {
                "samples": 1000,  # training images whose attributes give the relevances
                "relevance_threshold": 0.1,  # official: 0.1 MNIST, 0.2 QuickDraw/CIFAR-10
                "attributes_per_class": 3,
                "init_scale": 0.3,  # start from this × a top-activating image
                "c": 2.0,
                "lambda_tv": 6.0,
                "lambda_bound": 10.0,
                "lambda_l1": 0.0,
                "bounds": (0.0, 1.0),  # in model input space
                "rounds": 12,
                "steps": 50,
                "lr": 0.05,
            },
        }
    )


def default_optim_config() -> ConfigDict:
    # reset_epoch 0: never re-create the optimizer.
    return ConfigDict({"lr": 1e-4, "reset_epoch": 19, "reset_lr": 4e-5})


# --- losses -----------------------------------------------------------------------------


def input_fidelity(reconstruction, images, valid, *, kind: str = "mse") -> jax.Array:
    """L_if: mean squared (`mse`) or absolute (`l1`) error of d(Φ(x)) `[B, H, W, C]` against
    x, over the valid rows."""
    error = reconstruction.astype(jnp.float32) - images.astype(jnp.float32)
    error = jnp.square(error) if kind == "mse" else jnp.abs(error)
    return masked_mean(jnp.mean(error, axis=(1, 2, 3)), valid)


def output_fidelity(interpreter_logits, predictor_logits, valid) -> jax.Array:
    """L_of: −mean_b Σ_c softmax(f(x))_bc · log softmax(h(Φ(x)))_bc, with f detached (the
    official `loss_cce(expl, output.detach())`)."""
    target = jax.nn.softmax(jax.lax.stop_gradient(predictor_logits).astype(jnp.float32), -1)
    log_p = jax.nn.log_softmax(interpreter_logits.astype(jnp.float32), -1)
    return masked_mean(-jnp.sum(target * log_p, axis=-1), valid)


def _entropy_of_softmax(x: jax.Array) -> jax.Array:
    log_p = jax.nn.log_softmax(x, axis=-1)
    return -jnp.sum(jnp.exp(log_p) * log_p, axis=-1)


def conditional_entropy(attributes, valid) -> jax.Array:
    """L_cd = E_b[H(softmax(|Φ(x_b)|))] − H(softmax(mean_b |Φ(x_b)|)): each example uses few
    attributes, the batch uses many (softmax of |Φ|, as the official code)."""
    magnitude = jnp.abs(attributes.astype(jnp.float32))
    mean_magnitude = jnp.sum(magnitude * valid[:, None], 0) / jnp.maximum(jnp.sum(valid), 1)
    return masked_mean(_entropy_of_softmax(magnitude), valid) - _entropy_of_softmax(mean_magnitude)


def sparsity(attributes, valid) -> jax.Array:
    """L_spa = mean |Φ(x)| over the valid rows and the attributes."""
    return masked_mean(jnp.mean(jnp.abs(attributes.astype(jnp.float32)), -1), valid)


def coefficients(schedule, epoch: int) -> dict[str, float]:
    """Each term's coefficient at `epoch` (from 1): Σ weight·[epoch > after]."""
    return {
        term: float(sum(w for after, w in schedule.get(term, ()) if epoch > after))
        for term in TERMS
    }


def epoch_ranges(schedule, epochs: int, reset_epoch: int) -> list[tuple[int, int]]:
    """The maximal runs of epochs `(first, last)` over 1..`epochs` with constant coefficients
    and one optimizer: split where a coefficient changes and at `reset_epoch`."""
    starts = {1} | {int(after) + 1 for pairs in schedule.values() for after, _ in pairs}
    if reset_epoch > 0:
        starts.add(int(reset_epoch))
    starts = sorted(s for s in starts if 1 <= s <= epochs)
    return [(s, e - 1) for s, e in zip(starts, [*starts[1:], epochs + 1], strict=True)]


class FLINT(ClassTargets, Method):
    name = "flint"

    def __init__(self, config: ConfigDict, dataset: Dataset):
        m = config.model
        if m.reconstruction not in ("mse", "l1"):
            raise UsageError(
                f"Unknown model.reconstruction '{m.reconstruction}'; use mse or l1 (CIFAR-10)."
            )
        unknown = sorted(set(m.schedule) - set(TERMS))
        if unknown:
            raise UsageError(f"model.schedule has unknown terms {unknown}; use {', '.join(TERMS)}.")
        self.config = config
        self.num_classes = dataset.num_classes
        self.class_names = list(dataset.class_names)
        self.normalization = config.data.normalization
        self.net = FlintNet(m.arch, dataset.num_classes, m.num_attributes, dataset.image_shape)
        self.schedule = {term: tuple(tuple(p) for p in m.schedule[term]) for term in m.schedule}
        self.ranges = epoch_ranges(self.schedule, config.train.epochs, config.optim.reset_epoch)
        # The loss finds its phase's coefficients by the phase's name.
        self.weights = {
            _phase_name(first, last): coefficients(self.schedule, first)
            for first, last in self.ranges
        }

    def init(self, rng, batch):
        return dict(self.net.init({"params": rng, "dropout": rng}, batch["image"], train=False))

    def terms(self, params, batch, rng) -> tuple[dict[str, jax.Array], FlintOutput]:
        """Every loss term of a training-mode forward pass (dropout drawn from `rng`)."""
        out = self.net.apply({"params": params}, batch["image"], train=True, rngs={"dropout": rng})
        valid = batch["valid"]
        kind = self.config.model.reconstruction
        terms = {
            "cross_entropy": cross_entropy(out.logits, batch["label"], valid),
            "input_fidelity": input_fidelity(out.reconstruction, batch["image"], valid, kind=kind),
            "output_fidelity": output_fidelity(out.interpreter_logits, out.logits, valid),
            "sparsity": sparsity(out.attributes, valid),
            "conditional_entropy": conditional_entropy(out.attributes, valid),
        }
        return terms, out

    def loss(self, params, state, batch, rng, phase):
        weights = self.weights[phase.name]
        terms, out = self.terms(params, batch, rng)
        loss = sum(weights[t] * terms[_METRIC[t]] for t in TERMS if weights[t])
        metrics = {
            "loss": loss,
            **terms,
            "accuracy": accuracy(out.logits, batch["label"], batch["valid"]),
            "interpreter_accuracy": accuracy(
                out.interpreter_logits, batch["label"], batch["valid"]
            ),
        }
        return loss, (metrics, state)

    def predict(self, variables, images):
        return self.net.apply(variables, images, method=FlintNet.predict)

    def embed(self, variables, images):
        """f's penultimate features `[B, d]` (d = 128 for `mnist`, 512 for the ResNets): the
        embedding that KMEx clusters."""
        return self.net.apply(variables, images, method=FlintNet.embed)

    def attribute_values(self, variables, images):
        """Φ(x) `[B, J]` in inference mode."""
        return self.net.apply(variables, images, method=FlintNet.attribute_values)

    def phases(self, config):
        o = config.optim
        before = optim.adam(o.lr)
        after = optim.adam(o.reset_lr)
        phases = []
        for first, last in self.ranges:
            reset = 0 < o.reset_epoch <= first
            phases.append(
                Phase(
                    _phase_name(first, last),
                    last - first + 1,
                    "adam_reset" if reset else "adam",
                    ((".*", after if reset else before),),
                )
            )
        return phases

    def targets(self, variables):
        """`class_logit(images, classes)` and `class_probability` (f), `embedding(images)`
        (f's penultimate features), `interpreter_logit(images, classes)` (h∘Φ) and
        `attribute(images, attributes)` (Φ_j)."""
        return {
            **self.class_targets(variables),
            "interpreter_logit": jax.tree_util.Partial(self._interpreter_logit, variables),
            "attribute": jax.tree_util.Partial(self._attribute, variables),
        }

    def _interpreter_logit(self, variables, images, classes):
        return pick(self.net.apply(variables, images, method=FlintNet.analyse)[1], classes)

    def _attribute(self, variables, images, attributes):
        return pick(self.attribute_values(variables, images), attributes)

    # --- interpretation ------------------------------------------------------------------

    @functools.cached_property
    def _analyse(self):
        return jax.jit(
            lambda variables, images: self.net.apply(variables, images, method=FlintNet.analyse)
        )

    def analyse_split(self, variables, ctx, split: str, indices=None):
        """(f logits, h logits, Φ, labels) over a split, as NumPy, valid rows only."""
        parts = [], [], [], []
        for batch in ctx.ordered_batches(split, indices=indices):
            valid = ctx.host(batch["valid"])
            outputs = self._analyse(variables, batch["image"])
            for store, value in zip(parts, (*outputs, batch["label"]), strict=True):
                store.append(ctx.host(value)[valid])
        return tuple(np.concatenate(p) for p in parts)

    def summarize(self, variables, ctx):
        from protojax.explain.attributes import local_relevance
        from protojax.metrics import interpretation

        f, h, phi, labels = self.analyse_split(variables, ctx, "test")
        relevance = local_relevance(phi, self._weights(variables), np.argmax(h, -1)).raw
        concise = interpretation.conciseness(relevance).aggregate
        return {
            "interpreter_accuracy": float(np.mean(np.argmax(h, -1) == labels)),
            "fidelity": float(interpretation.fidelity(h, f).aggregate),
            "fidelity_top5": float(
                interpretation.fidelity_top_k(h, f, k=min(5, self.num_classes)).aggregate
            ),
            "conciseness": {
                str(t): float(v)
                for t, v in zip(interpretation.CONCISENESS_THRESHOLDS, concise, strict=True)
            },
        }

    @staticmethod
    def _weights(variables):
        """The interpreter's linear weights `[J, K]`."""
        return variables["params"]["interpreter"]["fc1"]["kernel"]

    def _display(self, images: np.ndarray) -> np.ndarray:
        from protojax.data.pipeline import denormalize

        return np.clip(denormalize(np.asarray(images, np.float32), self.normalization), 0, 1)

    def figures(self, variables, ctx):
        """The global relevance of the attributes to the classes, each class's most relevant
        attributes with their visualisations, and local explanations of test images."""
        from protojax.data.pipeline import denormalize
        from protojax.explain import attributes as explain
        from protojax.metrics.interpretation import global_relevance

        v = self.config.model.visualise
        train = ctx.dataset.split("train")
        count = min(v.samples, len(train))
        subset = np.sort(np.random.default_rng(self.config.seed).permutation(len(train))[:count])
        _, h, phi, labels = self.analyse_split(variables, ctx, "train", indices=subset)
        predicted = np.argmax(h, -1)
        relevance = explain.local_relevance(phi, self._weights(variables), predicted).normalized
        table = np.asarray(
            global_relevance(relevance, predicted, num_classes=self.num_classes).relevance
        )
        shown = min(self.num_classes, 10)
        paths = [
            ctx.save_figure(
                explain.relevance_figure(
                    table[:shown], class_names=self.class_names, threshold=v.relevance_threshold
                ),
                "attribute_relevance.png",
            )
        ]

        # Each class's most relevant attributes above the threshold, with the class's
        # training image that activates each most.
        per = v.attributes_per_class
        ids = np.full((shown, per), -1)
        for c in range(shown):
            order = [j for j in np.argsort(-np.nan_to_num(table[c], nan=-1.0), kind="stable")]
            chosen = [j for j in order if table[c, j] > v.relevance_threshold][:per]
            ids[c, : len(chosen)] = chosen
        top = explain.top_activating(phi, labels, num_classes=self.num_classes)[:shown, 0]
        rows = np.array([[top[c, j] if j >= 0 else -1 for j in ids[c]] for c in range(shown)])
        slots = np.argwhere((ids >= 0) & (rows >= 0))
        ids[(ids >= 0) & (rows < 0)] = -1
        height, width, channels = ctx.dataset.image_shape
        samples = np.zeros((shown, per, height, width, channels), np.float32)
        pictures = np.zeros_like(samples)
        if len(slots):
            picked = subset[rows[slots[:, 0], slots[:, 1]]]
            images = self._images(ctx, picked)
            visual = explain.maximize_attribute(
                jax.tree_util.Partial(self.attribute_values, variables),
                v.init_scale * images,
                ids[slots[:, 0], slots[:, 1]],
                c=v.c,
                lambda_tv=v.lambda_tv,
                lambda_bound=v.lambda_bound,
                lambda_l1=v.lambda_l1,
                bounds=tuple(v.bounds),
                rounds=v.rounds,
                steps=v.steps,
                lr=v.lr,
            )
            samples[slots[:, 0], slots[:, 1]] = self._display(images)
            # Each visualisation on its own min–max range, as the official imshow shows it.
            shown_visual = denormalize(np.asarray(visual, np.float32), self.normalization)
            low = shown_visual.min(axis=(1, 2, 3), keepdims=True)
            high = shown_visual.max(axis=(1, 2, 3), keepdims=True)
            pictures[slots[:, 0], slots[:, 1]] = (shown_visual - low) / np.maximum(high - low, 1e-8)
        scores = np.where(ids >= 0, np.take_along_axis(table[:shown], np.maximum(ids, 0), 1), 0)
        paths.append(
            ctx.save_figure(
                explain.attribute_figure(
                    samples, pictures, ids, scores, class_names=self.class_names[:shown]
                ),
                "attributes.png",
            )
        )

        # Local explanations of the first test image of each of the first ten classes.
        test_labels = ctx.dataset.split("test").labels
        firsts = [np.flatnonzero(test_labels == c)[:1] for c in range(shown)]
        chosen = np.concatenate(firsts).astype(np.int64)
        if len(chosen):
            _, h, phi, _ = self.analyse_split(variables, ctx, "test", indices=chosen)
            predicted = np.argmax(h, -1)
            local = explain.local_relevance(phi, self._weights(variables), predicted).normalized
            paths.append(
                ctx.save_figure(
                    explain.local_explanation_figure(
                        self._display(self._images(ctx, chosen, split="test")),
                        np.asarray(local),
                        predicted,
                        class_names=self.class_names,
                    ),
                    "local_explanations.png",
                )
            )
        return paths

    @staticmethod
    def _images(ctx, indices, split: str = "train") -> np.ndarray:
        """Model-input images `[N, H, W, C]` of a split's rows, in the given order."""
        out = []
        for batch in ctx.ordered_batches(split, indices=np.asarray(indices)):
            valid = ctx.host(batch["valid"])
            out.append(ctx.host(batch["image"])[valid])
        return np.concatenate(out)


def _phase_name(first: int, last: int) -> str:
    return f"epochs{first}-{last}"


def build(config: ConfigDict, dataset: Dataset) -> FLINT:
    return FLINT(config, dataset)


def own_explanation(method, variables, config, dataset, *, split, indices, out):
    """The explain launcher's hook: each image of `indices` beside the attributes most relevant
    to the interpreter's class (`explain.attributes.local_explanation_figure`), as
    `out/image_NNN/attributes.png`; the global relevance and the attributes' visualisations
    are the run's training figures."""
    from protojax.data.pipeline import normalize
    from protojax.explain import attributes, figures

    raw = dataset.split(split).get_batch(np.asarray(indices))
    images = jnp.asarray(normalize(raw["image"], config.data.normalization))
    _, h, phi = method._analyse(variables, images)
    predicted = np.argmax(np.asarray(h), -1)
    local = attributes.local_relevance(np.asarray(phi), method._weights(variables), predicted)
    paths = []
    for row, n in enumerate(np.asarray(indices)):
        fig = attributes.local_explanation_figure(
            raw["image"][row : row + 1], np.asarray(local.normalized)[row : row + 1],
            predicted[row : row + 1], class_names=dataset.class_names,
        )  # fmt: skip
        paths.append(figures.save(fig, out / f"image_{int(n):03d}" / "attributes.png"))
    return paths


__all__ = [
    "FLINT",
    "build",
    "coefficients",
    "conditional_entropy",
    "default_model_config",
    "default_optim_config",
    "epoch_ranges",
    "input_fidelity",
    "official_schedule",
    "output_fidelity",
    "sparsity",
]
