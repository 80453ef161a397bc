"""Evaluates trained runs by the three predicates (transparency, trustworthiness, diversity) and,
on data with masks, localisation.

  python -m experiments.evaluate --workdir=DIR [--blackbox_workdir=DIR2]
      [--explainers=saliency,gradcam,...] [--num_images=32] [--split=test]
  python -m experiments.evaluate --workdirs=DIR1,DIR2,... --out=DIR

One run: writes DIR/evaluation/ (replaced whole):
- `evaluation.json`: the keys `transparency`, `trustworthiness`, `diversity` and, where the
  data has masks, `localisation`, beside `run` (method, config hash, code hash, split);
- `evaluation.md`: the same numbers as tables grouped by predicate, each naming the function
  whose docstring defines it;
- `deletion_insertion.png` (the mean curves per explainer), `prototype_usage.png` (how many
  images each prototype is the nearest for) and `diversity.png` (pairwise distances of the
  prototypes, per-class log-volumes, a PCA of the latents with the prototypes).

What runs depends on what the method has, so the launcher works for any method: accuracy
for every run; the explainers on its `class_logit` target; prototype metrics (usage,
duplicates, removal, AD/AI with PRP, diversity) where it has prototypes (`params.prototypes`
and `prototype_state`, KMEx's centroids, or FLINT's attribute vectors for diversity); the
spatial-misalignment benchmark where it has similarity maps (`activations`, ProtoPNet). A
metric that does not apply is listed with the reason.

Explained score: each image's predicted class (`class_logit`); deletion and insertion score
`class_probability` of that class, removed pixels black (images in [0, 1]). The method's own
map ("own") is the upsampled similarity map of the prototype that adds most to the predicted
logit (ProtoPNet), or PRP of the most similar prototype of the predicted class (ProtoVAE,
Pantypes, KMEx).

Several runs: evaluates each (as above) and writes to --out `evaluation.md` and
`evaluation.json`: one column per config (its method, dataset and a hash of its config
without the seed), each number the mean ± std over that config's seeds, with the configs'
code hashes and data split.
"""

from __future__ import annotations

import hashlib
import inspect
import json
import logging
import math
import pathlib
import time

import numpy as np
from absl import flags

from experiments import cli
from protojax.errors import UsageError

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined when run as a launcher only, so that importing this module beside another
    launcher (tests do) defines no flag twice."""
    flags.DEFINE_string("workdir", None, "Work directory of a training run.")
    flags.DEFINE_string("workdirs", "", "Comma-separated work directories (several runs).")
    flags.DEFINE_string("out", "", "Output folder of the several-run table.")
    flags.DEFINE_string("blackbox_workdir", "", "A black-box run on the same data, for the gap.")
    flags.DEFINE_string(
        "explainers",
        "",
        "Comma-separated explainers (default: saliency, integrated_gradients, gradcam, occlusion, "
        "rise, lrp, and prp where the method exports it).",
    )
    flags.DEFINE_integer("num_images", 32, "Images of the split the explanation metrics use.")
    flags.DEFINE_string("split", "test", "Split evaluated.")
    flags.DEFINE_integer("seed", 0, "Seed of the explainers' and metrics' random draws.")
    flags.DEFINE_integer("batch_size", 256, "Images (or perturbed images) evaluated at once.")
    flags.DEFINE_string("prp_composite", cli.PRP_COMPOSITE, cli.PRP_COMPOSITE_HELP)


DEFAULT_EXPLAINERS = ("saliency", "integrated_gradients", "gradcam", "occlusion", "rise", "lrp")
# Deterministic explainers callable under jit: max-sensitivity and randomisation use them.
TRACEABLE = ("saliency", "integrated_gradients", "gradcam", "lrp")
PREDICATES = ("transparency", "trustworthiness", "diversity", "localisation")
OWN = "own"

log = logging.getLogger("evaluate")


# --- what a run is ---------------------------------------------------------------------------
def code_hash() -> str:
    """The first 12 hex digits of a SHA-256 over the library's and launchers' sources."""
    root = pathlib.Path(__file__).resolve().parent.parent
    digest = hashlib.sha256()
    for path in sorted([*root.glob("protojax/**/*.py"), *root.glob("experiments/**/*.py")]):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def config_identity(config) -> tuple[str, str]:
    """(label, hash): `method_dataset` and 10 hex digits of the config without its seed."""
    from protojax import config as config_lib

    values = config_lib.to_dict(config)
    values.pop("seed", None)
    digest = hashlib.sha256(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()
    return f"{config.method}_{config.data.name}", digest[:10]


def definition(fn) -> str:
    """`module.name`: the first sentence of the docstring that defines a metric."""
    doc = (inspect.getdoc(fn) or "").split("\n\n")[0].replace("\n", " ")
    return f"`{fn.__module__.replace('protojax.metrics.', 'metrics.')}.{fn.__name__}`: {doc}"


class Progress:
    """Logs each pass with its number, name and the seconds the previous one took."""

    def __init__(self, total: int):
        self.total, self.done, self.start = total, 0, time.perf_counter()

    def __call__(self, name: str) -> None:
        self.done += 1
        elapsed = time.perf_counter() - self.start
        log.info("evaluate %d/%d: %s (%.0f s so far)", self.done, self.total, name, elapsed)


# --- passes over the data --------------------------------------------------------------------
def split_batches(split, batch_size: int):
    """Yields `(indices, batch)` over a whole split in order."""
    for start in range(0, len(split), batch_size):
        indices = np.arange(start, min(start + batch_size, len(split)))
        yield indices, split.get_batch(indices)


def similarity_fn(method, variables):
    """`fn(images [B, H, W, C]) -> [B, P]` every prototype's similarity (images in [0, 1]), or
    None for a method without a `prototype_similarity` target."""
    import jax
    import jax.numpy as jnp

    targets = method.targets(variables)
    if "prototype_similarity" not in targets:
        return None
    trained = getattr(method, "trained", method)
    if hasattr(trained, "activations"):  # one pass gives every similarity
        normalize = getattr(method, "normalize", lambda x: x)
        return lambda images: np.asarray(
            trained.activations(variables, normalize(jnp.asarray(images))).similarities
        )
    score = targets["prototype_similarity"]
    num = int(np.asarray(prototype_collection(variables)["prototype_class"]).size)

    @jax.jit
    def run(score, images):
        each = lambda j: score(images, jnp.full((images.shape[0],), j))  # noqa: E731
        return jax.lax.map(each, jnp.arange(num)).T

    return lambda images: np.asarray(run(score, jnp.asarray(images)))


def prototype_collection(variables) -> dict:
    """The collection with the prototypes' classes: KMEx's centroids first (a KMEx run also
    holds its source's own prototypes, which its prediction does not use), else
    `prototype_state`."""
    from protojax.methods.kmex import STATE

    return variables[STATE] if STATE in variables else variables.get("prototype_state", {})


def prototype_arrays(method, variables):
    """(vectors `[P, D]`, classes `[P]` or None, active `[P]`, squared distances?) of a
    method's prototypes, or None. Prototype layers keep `params.prototypes` (patch
    prototypes as `[P, D]`); FLINT's attributes are the columns of its attribute layer's
    last kernel, as KMEx's diversity takes them; KMEx's centroids, at Euclidean distances."""
    params = variables.get("params", {})
    state = prototype_collection(variables)
    if "centroids" in state:
        vectors = np.asarray(state["centroids"], np.float32)
        return vectors, np.asarray(state["prototype_class"]), np.ones(len(vectors), bool), False
    if "prototypes" in params:
        vectors = np.asarray(params["prototypes"], np.float32).reshape(
            len(params["prototypes"]), -1
        )
        classes = np.asarray(state.get("prototype_class", np.zeros(len(vectors), int)))
        active = np.asarray(state.get("active", np.ones(len(vectors), bool)), bool)
        squared = "activations" in dir(getattr(method, "trained", method))  # patch prototypes
        return vectors, classes, active, squared
    if "attributes" in params:
        kernels = [
            np.asarray(leaf)
            for path, leaf in _leaves(params["attributes"])
            if path[-1] == "kernel" and np.ndim(leaf) == 2
        ]
        if kernels:
            vectors = kernels[-1].T  # [J, F]
            return vectors, None, np.ones(len(vectors), bool), False
    return None


def _leaves(tree, path=()):
    if isinstance(tree, dict):
        for key, value in tree.items():
            yield from _leaves(value, (*path, key))
    else:
        yield path, tree


# --- explanations ----------------------------------------------------------------------------
def explainer_maps(names, targets, images, predicted, prp_targets, *, rng, batch_size, prp):
    """`({explainer: [B, H, W]}, {explainer: reason})`, each explainer run on its own so that
    one that cannot run on this model (say, LRP on an unsupported layer) is reported."""
    from protojax.explain import explain_all

    maps, skipped = {}, {}
    for name in names:
        options = {"prp": prp} if name == "prp" else {}
        try:
            result = explain_all(
                targets["class_logit"], images, rng=rng, targets=predicted,
                embed_fn=targets.get("embedding"), prp_fn=targets.get("prp"),
                prp_targets=prp_targets, explainers=[name], options=options,
                batch_size=batch_size,
            )  # fmt: skip
        except (ValueError, TypeError, NotImplementedError) as error:
            skipped[name] = f"{type(error).__name__}: {str(error).splitlines()[0]}"
            continue
        maps[name] = result.maps[name]
    return maps, skipped


def traceable_explainer(name, score_fn, targets, *, layer=None):
    """`explain(images) -> [B, H, W]` for a deterministic explainer, callable under jit, with
    the settings `explain_all` uses (`protojax.explain.runner.DEFAULTS`)."""
    import jax

    from protojax.explain import integrated_gradients, lrp, reduce_channels, saliency
    from protojax.explain.gradcam import layer_gradcam
    from protojax.explain.runner import DEFAULTS

    s = DEFAULTS[name]

    def run(score_fn, targets, images):
        if name == "saliency":
            return reduce_channels(saliency(score_fn, images, targets=targets), s["reduce"])
        if name == "integrated_gradients":
            ig = integrated_gradients(
                score_fn, images, baseline=s["baseline"], steps=s["steps"], method=s["method"],
                targets=targets,
            )  # fmt: skip
            return reduce_channels(ig, s["reduce"])
        if name == "gradcam":
            return layer_gradcam(score_fn, images, layer=layer, targets=targets)
        relevance = lrp(score_fn, images, targets=targets, composite=s["composite"])
        return reduce_channels(relevance, s["reduce"])

    return jax.tree_util.Partial(run, score_fn, targets)


def own_maps(method, variables, images, predicted, maps):
    """The method's own map `[B, H, W]` of each image, or None (see the module docstring)."""
    import jax
    import jax.numpy as jnp

    trained = getattr(method, "trained", method)
    if hasattr(trained, "activations"):
        normalize = getattr(method, "normalize", lambda x: x)
        result = trained.activations(variables, normalize(jnp.asarray(images)))
        kernel = np.asarray(variables["params"]["last_layer"]["kernel"])  # [P, K]
        active = np.asarray(variables["prototype_state"]["active"], bool)
        sims = np.asarray(result.similarities)
        contribution = sims * kernel[:, predicted].T * active[None]
        top = np.argmax(contribution, axis=1)
        chosen = np.asarray(result.similarity_maps)[np.arange(len(top)), :, :, top]
        size = tuple(images.shape[1:3])
        return np.stack(
            [np.asarray(jax.image.resize(jnp.asarray(m), size, "cubic")) for m in chosen]
        )
    return maps.get("prp")


def randomisation_layers(method, variables, images, limit: int = 6) -> list[tuple[str, ...]]:
    """Parameter prefixes from the output down, in the order the prediction calls them (Flax
    keeps parameters sorted by name, not by depth): the modules `predict` calls, a backbone,
    encoder or predictor expanded into its own blocks, and arrays owned by the model itself
    (such as `prototypes`) just below the last module called, the head. Modules `predict`
    never calls (a decoder) are left out; at most `limit`."""
    import flax.linen as nn
    import jax

    params = variables["params"]
    calls: list[tuple[str, ...]] = []

    def record(next_fun, args, kwargs, context):
        path = tuple(context.module.path)
        if path and path not in calls:
            calls.append(path)
        return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
        jax.eval_shape(lambda x: method.predict(variables, x), images[:1])
    prefixes = []
    for key, value in params.items():
        children = list(value) if isinstance(value, dict) else []
        if (
            key in ("backbone", "encoder", "predictor")
            and children
            and all(isinstance(value[c], dict) for c in children)
        ):
            prefixes.extend((key, child) for child in children)
        else:
            prefixes.append((key,))

    def first_call(prefix):
        found = [i for i, path in enumerate(calls) if path[: len(prefix)] == prefix]
        return found[0] if found else None

    called = sorted((p for p in prefixes if first_call(p) is not None), key=first_call)
    owned = [p for p in prefixes if not isinstance(params[p[0]], dict)]
    top_first = [*called[-1:], *owned, *reversed(called[:-1])]
    return top_first[:limit]


# --- one run -----------------------------------------------------------------------------------
def evaluate_run(
    workdir: pathlib.Path,
    *,
    blackbox_workdir: str = "",
    explainers: str = "",
    num_images: int = 32,
    split_name: str = "test",
    seed: int = 0,
    batch_size: int = 256,
    prp_composite: str = cli.PRP_COMPOSITE,
) -> dict:
    """Evaluates one run and writes DIR/evaluation/; returns the JSON record."""
    import jax
    import jax.numpy as jnp

    import protojax
    from protojax import metrics
    from protojax.data import load_dataset

    progress = Progress(12)
    method, variables, config = protojax.load_workdir(workdir)
    dataset = load_dataset(config.data)
    if split_name not in dataset.splits:
        raise UsageError(
            f"--split={split_name} is not a split of this dataset; use one of "
            f"{', '.join(dataset.splits)}."
        )
    split = dataset.split(split_name)
    label, config_hash = config_identity(config)
    record = {
        "run": {
            "workdir": str(workdir),
            "method": config.method,
            "dataset": config.data.name,
            "config": label,
            "config_hash": config_hash,
            "seed": int(config.seed),
            "code_hash": code_hash(),
            "split": split_name,
            "num_images": None,
        },
        "transparency": {},
        "trustworthiness": {},
        "diversity": {},
        "not_applicable": {},
    }
    na = record["not_applicable"]
    figures = {}
    targets = method.targets(variables)
    sims_fn = similarity_fn(method, variables)
    prototypes = prototype_arrays(method, variables)

    # Pass over the split: logits, similarities, embeddings, labels.
    progress(f"a pass over the {split_name} split ({len(split)} images)")
    predict = jax.jit(method.predict)
    embed = jax.jit(method.embed)
    logits, labels, sims, latents = [], [], [], []
    for _, batch in split_batches(split, batch_size):
        images = jnp.asarray(batch["image"])
        logits.append(np.asarray(predict(variables, images)))
        labels.append(np.asarray(batch["label"]))
        if sims_fn is not None:
            sims.append(sims_fn(images))
            latents.append(np.asarray(embed(variables, images)))
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    sims = np.concatenate(sims) if sims else None
    latents = np.concatenate(latents) if latents else None

    # Trustworthiness: accuracy and the gap to the black box.
    trust = record["trustworthiness"]
    trust["top1_accuracy"] = float(metrics.accuracy(logits, labels).aggregate)
    k = min(5, logits.shape[1])
    trust[f"top{k}_accuracy"] = float(metrics.top_k_accuracy(logits, labels, k=k).aggregate)
    summary_path = workdir / "summary.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    if blackbox_workdir:
        progress("the black box's accuracy")
        trust.update(blackbox_accuracy(pathlib.Path(blackbox_workdir), config, split_name, k))
        trust["gap_to_blackbox"] = trust["blackbox_top1_accuracy"] - trust["top1_accuracy"]
    elif "blackbox_test_accuracy" in summary and split_name == "test":
        trust["blackbox_top1_accuracy"] = float(summary["blackbox_test_accuracy"])
        trust["gap_to_blackbox"] = trust["blackbox_top1_accuracy"] - trust["top1_accuracy"]
    else:
        na["gap_to_blackbox"] = "no --blackbox_workdir given"

    # Transparency.
    transparency = record["transparency"]
    if prototypes is not None and sims is not None:
        progress("transparency")
        vectors, classes, active, squared = prototypes
        usage = metrics.class_usage(sims, classes, num_classes=method.num_classes, active=active)
        transparency["prototypes"] = int(len(vectors))
        transparency["active_prototypes"] = int(active.sum())
        transparency["fraction_used"] = usage.fraction_used
        transparency["fraction_used_per_class"] = usage.per_class.tolist()
        transparency["unused_prototypes"] = usage.unused.tolist()
        transparency["usage_counts"] = usage.counts.tolist()
        duplicates = metrics.near_duplicates(vectors, active=active)
        transparency["near_duplicates"] = duplicates.count
        transparency["identical_prototypes"] = duplicates.identical
        near = metrics.nearest_labels(sims, labels, k=10)
        transparency["nearest10_class_purity"] = _number(
            metrics.source_purity(near, classes, active=active)
        )
        source = np.asarray(prototype_collection(variables).get("source_index", []))
        if source.size:
            train = dataset.split("train")
            pushed = source >= 0
            source_labels = np.full(source.shape, -1)
            if pushed.any():
                source_labels[pushed] = np.asarray(train.get_batch(source[pushed])["label"])
            transparency["push_source_purity"] = _number(
                metrics.source_purity(source_labels, classes, active=active)
            )
        else:
            na["push_source_purity"] = "the method does not push prototypes onto training data"
        figures["prototype_usage"] = usage_figure(usage.counts, classes, active, dataset)
    else:
        na["prototype usage"] = "the method has no prototype similarities"
    weights, weight_classes = last_layer(variables, prototypes)
    if weights is not None:
        structure = metrics.last_layer_structure(
            weights, weight_classes, active=None if prototypes is None else prototypes[2]
        )
        transparency["last_layer"] = {k: _number(v) for k, v in structure._asdict().items()}

    # Explanations of the first images.
    chosen = np.arange(min(num_images, len(split)))
    record["run"]["num_images"] = int(chosen.size)
    if "prp" in targets:
        record["run"]["prp_composite"] = prp_composite
    batch = split.get_batch(chosen)
    images = jnp.asarray(batch["image"])
    predicted = np.argmax(logits[chosen], axis=1)
    classes = None if prototypes is None else prototypes[1]
    prp_targets = None
    if sims is not None and classes is not None:
        own_class = classes[None, :] == predicted[:, None]
        prp_targets = np.argmax(np.where(own_class, sims[chosen], -np.inf), axis=1)
    names = choose_explainers(explainers, targets)
    progress(f"explainers {', '.join(names)} on {chosen.size} images")
    prp = cli.prp_options(prp_composite, getattr(method, "normalize", None), images.shape[-1])
    rng = jax.random.key(seed)
    maps, skipped = explainer_maps(
        names, targets, images, predicted, prp_targets, rng=rng, batch_size=batch_size,
        prp=prp,
    )  # fmt: skip
    for name, reason in skipped.items():
        na[f"explainer {name}"] = reason
    own = own_maps(method, variables, images, predicted, maps)
    if own is not None:
        maps[OWN] = own

    # Deletion and insertion.
    progress("deletion and insertion")
    probability = targets.get("class_probability")
    curves = {}
    for name, saliency in maps.items():
        deletion = metrics.deletion_curve(
            probability, images, saliency, targets=predicted, batch_size=batch_size
        )
        insertion = metrics.insertion_curve(
            probability, images, saliency, targets=predicted, batch_size=batch_size
        )
        curves[name] = (np.asarray(deletion.scores).mean(0), np.asarray(insertion.scores).mean(0))
        trust.setdefault("deletion_auc", {})[name] = float(deletion.aggregate)
        trust.setdefault("insertion_auc", {})[name] = float(insertion.aggregate)
    if curves:
        figures["deletion_insertion"] = curves_figure(curves, np.asarray(deletion.fractions))

    # Max-sensitivity and randomisation of the deterministic explainers.
    layer = None
    if "gradcam" in maps:
        from protojax.explain.gradcam import default_gradcam_layer

        layer = default_gradcam_layer(targets["class_logit"], images[:1], targets=predicted[:1])
    quick = [n for n in names if n in TRACEABLE and n in maps]
    few = min(16, chosen.size)
    progress(f"max-sensitivity of {', '.join(quick) or 'no explainer'} on {few} images")
    for name in quick:
        explain = traceable_explainer(
            name, targets["class_logit"], jnp.asarray(predicted[:few]), layer=layer
        )
        result = metrics.max_sensitivity(
            explain, images[:few], rng=jax.random.fold_in(rng, 1), radius=0.05,
            num_samples=10, normalize="explanation",
        )  # fmt: skip
        trust.setdefault("max_sensitivity", {})[name] = float(result.aggregate)
    progress("cascading parameter randomisation")
    layers = randomisation_layers(method, variables, images)
    for name in [n for n in quick if n in ("saliency", "gradcam")]:

        def explain_with(params, name=name):
            swapped = method.targets({**variables, "params": params})["class_logit"]
            fn = traceable_explainer(name, swapped, jnp.asarray(predicted[:few]), layer=layer)
            return fn(images[:few])

        result = metrics.model_randomisation(
            explain_with, variables["params"], layers, rng=jax.random.fold_in(rng, 2)
        )
        trust.setdefault("randomisation_spearman", {})[name] = {
            layer_name: _number(v) for layer_name, v in zip(result.layers, result.aggregate)
        }

    # Prototype faithfulness: AD/AI with PRP, and the removal effect.
    if prototypes is not None and "prp" in targets and "prototype_similarity" in targets:
        progress("AD/AI on prototype similarity with PRP")
        trust["ad_ai"] = ad_ai(
            targets, images, np.asarray(batch["label"]), classes, prototypes[2], rng=rng,
            prp=prp, batch_size=batch_size,
        )  # fmt: skip
    else:
        na["ad_ai"] = "the method exports no prp and prototype_similarity targets"
    if prototypes is not None and "active" in prototype_collection(variables):
        progress("prototype removal")
        trust["prototype_removal"] = removal(method, variables, images, batch["label"])
    else:
        na["prototype_removal"] = "the method has no prototypes to switch off"

    # Spatial misalignment.
    trained = getattr(method, "trained", method)
    if hasattr(trained, "activations") and classes is not None:
        progress("spatial misalignment (PGD outside the top prototype's box)")
        trust["spatial_misalignment"] = misalignment(
            method, variables, images, batch["label"], classes, rng=rng
        )
    else:
        na["spatial_misalignment"] = "the method has no prototype similarity maps"

    # Diversity.
    if prototypes is not None:
        progress("diversity")
        vectors, classes, active, squared = prototypes
        points = diversity_latents(method, variables, split, sims, latents, batch_size)
        result = metrics.prototype_diversity(
            vectors, classes, num_classes=method.num_classes, active=active,
            latents=points, labels=labels, similarities=sims, squared=squared,
        )  # fmt: skip
        record["diversity"] = {k: _number(v) for k, v in result._asdict().items()}
        figures["diversity"] = diversity_figure(vectors, classes, active, result, points, labels)
    else:
        na["diversity"] = "the method has no prototypes"

    # Localisation.
    if "mask" in batch:
        progress("localisation against the masks")
        record["localisation"] = localisation(maps, np.asarray(batch["mask"]))
    else:
        na["localisation"] = "the data has no masks"

    out = workdir / "evaluation"
    with cli.replaced_folder(out, owned=True) as staging:
        from protojax.explain.figures import save

        record["figures"] = []
        for name, fig in figures.items():
            save(fig, staging / f"{name}.png")
            record["figures"].append(f"{name}.png")
        (staging / "evaluation.json").write_text(json.dumps(record, indent=1) + "\n")
        (staging / "evaluation.md").write_text(run_markdown(record))
    log.info("evaluate: wrote %s", out)
    return record


def choose_explainers(flag: str, targets) -> list[str]:
    """The explainers to run: the flag's, checked against the method's `targets`, or the
    defaults (with PRP where the method exports a prp target)."""
    if not flag:
        return [*DEFAULT_EXPLAINERS, *(["prp"] if "prp" in targets else [])]
    names = cli.explainer_names(flag)
    if "prp" in names and "prp" not in targets:
        raise UsageError("This method exports no prp target; drop prp from --explainers.")
    if "relax" in names and "embedding" not in targets:
        raise UsageError("This method exports no embedding target; drop relax.")
    return names


def blackbox_accuracy(workdir: pathlib.Path, config, split_name: str, k: int) -> dict:
    """The black box's top-1 and top-k accuracy on the same split of the same data."""
    import jax
    import jax.numpy as jnp

    import protojax
    from protojax import metrics
    from protojax.data import load_dataset

    method, variables, other = protojax.load_workdir(workdir)
    if other.data.name != config.data.name or other.data.image_size != config.data.image_size:
        raise UsageError(
            f"--blackbox_workdir {workdir} is a run on {other.data.name} "
            f"({other.data.image_size} px), not on {config.data.name} "
            f"({config.data.image_size} px); pass a black box of the same data."
        )
    split = load_dataset(other.data).split(split_name)
    predict = jax.jit(method.predict)
    logits, labels = [], []
    for _, batch in split_batches(split, 256):
        logits.append(np.asarray(predict(variables, jnp.asarray(batch["image"]))))
        labels.append(np.asarray(batch["label"]))
    logits, labels = np.concatenate(logits), np.concatenate(labels)
    return {
        "blackbox_workdir": str(workdir),
        "blackbox_top1_accuracy": float(metrics.accuracy(logits, labels).aggregate),
        f"blackbox_top{k}_accuracy": float(metrics.top_k_accuracy(logits, labels, k=k).aggregate),
    }


def last_layer(variables, prototypes):
    """(`[P, K]` last-layer weights, their rows' classes or None), or (None, None)."""
    params = variables.get("params", {})
    if "last_layer" in params and "kernel" in params["last_layer"]:
        return np.asarray(params["last_layer"]["kernel"]), prototypes[1] if prototypes else None
    interpreter = params.get("interpreter", {})
    kernels = [np.asarray(v) for p, v in _leaves(interpreter) if p[-1] == "kernel"]
    if kernels:
        return kernels[-1], None
    return None, None


def ad_ai(targets, images, labels, classes, active, *, rng, prp, batch_size) -> dict:
    """KMEx's AD/AI over every (image, prototype of its true class) pair, with PRP maps, and
    with random maps as the reference an explanation must beat."""
    import jax
    import jax.numpy as jnp

    from protojax import metrics
    from protojax.explain import explain_all

    pairs = [(i, j) for i, y in enumerate(labels) for j in np.flatnonzero((classes == y) & active)]
    rows = np.array([i for i, _ in pairs])
    protos = np.array([j for _, j in pairs])
    pair_images = images[rows]
    relevance = explain_all(
        None, pair_images, rng=rng, prp_fn=targets["prp"], prp_targets=protos,
        explainers=["prp"], options={"prp": prp}, batch_size=batch_size,
    ).maps["prp"]  # fmt: skip
    # KMEx's fixed random image: U[0, 1] noise, drawn once (images are in [0, 1] here).
    fill = jax.random.uniform(jax.random.key(0), images.shape[1:])
    score = targets["prototype_similarity"]
    result = {}
    random_maps = np.asarray(jax.random.normal(jax.random.fold_in(rng, 3), relevance.shape))
    for name, maps in (("prp", relevance), ("random", random_maps)):
        drops, rises = [], []
        for start in range(0, len(rows), batch_size):
            part = slice(start, start + batch_size)
            r = metrics.average_drop_increase(
                score, pair_images[part], maps[part], fill, targets=jnp.asarray(protos[part])
            )
            drops.append(np.asarray(r.per_example))
            rises.append(np.asarray(r.increase))
        result[name] = {
            "AD": float(np.concatenate(drops).mean()),
            "AI": float(np.concatenate(rises).mean()),
        }
    result["pairs"] = int(len(rows))
    return result


def removal(method, variables, images, labels) -> dict:
    import jax

    from protojax import metrics

    def logits_with(variables, images, active):
        state = {**variables["prototype_state"], "active": active}
        return method.predict({**variables, "prototype_state": state}, images)

    fn = jax.tree_util.Partial(logits_with, variables, images)
    result = metrics.prototype_removal(
        fn, np.asarray(labels), variables["prototype_state"]["active"]
    )
    drops = result.per_example
    return {
        "accuracy": result.accuracy,
        "mean_drop": _number(result.aggregate),
        "max_drop": _number(np.nanmax(drops)) if np.isfinite(drops).any() else None,
        "prototypes_with_drop": int(np.sum(drops > 0)),
        "drop_per_prototype": [_number(v) for v in drops],
    }


def misalignment(method, variables, images, labels, classes, *, rng) -> dict:
    """The benchmark in the model's input units (the official ε 0.4 is in normalised units)."""
    import jax

    from protojax import metrics

    trained = getattr(method, "trained", method)
    normalize = getattr(method, "normalize", lambda x: x)

    def activations(variables, x):
        result = trained.activations(variables, x)
        return result.logits, result.similarity_maps

    result = metrics.spatial_misalignment(
        jax.tree_util.Partial(activations, variables), normalize(images), np.asarray(labels),
        classes, rng=jax.random.fold_in(rng, 4),
    )  # fmt: skip
    return {
        "PAC": _number(result.aggregate),
        "PRC": float(np.mean(result.prc)),
        "PLC": float(np.mean(result.plc)),
        "accuracy_before": float(result.accuracy_before),
        "accuracy_after": float(result.accuracy_after),
        "units": "model input (normalised)"
        if getattr(method, "normalization", "none") != "none"
        else "pixels in [0, 1]",
    }


def diversity_latents(method, variables, split, sims, latents, batch_size):
    """`[N, D]` points in the prototypes' space: the embedding where it is that space
    (ProtoVAE's μ), otherwise (patch prototypes) each image's latent patch nearest to its
    most similar prototype; None where neither applies."""
    import jax
    import jax.numpy as jnp

    params = variables.get("params", {})
    if latents is None or "prototypes" not in params:
        return None
    d = int(np.prod(np.shape(params["prototypes"])[1:]))
    if latents.shape[1] == d and not hasattr(getattr(method, "trained", method), "activations"):
        return latents
    targets = method.targets(variables)
    if "latent" not in targets:
        return None
    latent = jax.jit(lambda fn, x: fn(x))
    prototypes = np.asarray(params["prototypes"]).reshape(-1, d)
    winners = np.argmax(sims, axis=1)
    points = []
    for indices, batch in split_batches(split, batch_size):
        z = np.asarray(latent(targets["latent"], jnp.asarray(batch["image"])))  # [B, h, w, D]
        z = z.reshape(len(z), -1, d)
        p = prototypes[winners[indices]]
        nearest = np.argmin(np.sum((z - p[:, None]) ** 2, axis=-1), axis=1)
        points.append(z[np.arange(len(z)), nearest])
    return np.concatenate(points)


def localisation(maps, masks) -> dict:
    from protojax import metrics

    boxes = metrics.mask_boxes(masks)
    out = {}
    for name, saliency in maps.items():
        boxed = metrics.max_box_accuracy(saliency, boxes, num_thresholds=100)
        out[name] = {
            "pointing_game": float(metrics.pointing_game(saliency, masks).aggregate),
            "relevance_rank": _number(metrics.relevance_rank_accuracy(saliency, masks).aggregate),
            "relevance_mass": _number(metrics.relevance_mass_accuracy(saliency, masks).aggregate),
            **{
                f"maxboxacc@{delta:.1f}": float(value)
                for delta, value in zip(np.asarray(boxed.iou_thresholds), boxed.max_box_acc)
            },
            "maxboxacc_v2": float(boxed.aggregate),
        }
    return out


def _number(value):
    """JSON-able: floats (None for NaN), lists of them, ints and strings as they are."""
    if value is None or isinstance(value, str | bool | int):
        return value
    array = np.asarray(value)
    if array.ndim:
        return [_number(v) for v in array.tolist()]
    value = float(array)
    return None if math.isnan(value) else value


# --- figures -----------------------------------------------------------------------------------
def _pyplot():
    from protojax.explain.figures import pyplot

    return pyplot()


def curves_figure(curves, fractions):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for name, (deletion, insertion) in curves.items():
        axes[0].plot(fractions, deletion, label=name)
        axes[1].plot(fractions, insertion, label=name)
    for ax, title in zip(axes, ("deletion (lower is more faithful)", "insertion (higher)")):
        ax.set_title(title)
        ax.set_xlabel("fraction of pixels removed" if "deletion" in title else "inserted")
        ax.set_ylabel("probability of the predicted class")
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def usage_figure(counts, classes, active, dataset):
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(max(6, len(counts) * 0.12), 3.5))
    colours = plt.get_cmap("tab10")(np.asarray(classes) % 10)
    ax.bar(np.arange(len(counts)), counts, color=colours)
    unused = np.flatnonzero(active & (counts == 0))
    ax.plot(unused, np.zeros(len(unused)), "kx", label="unused")
    ax.set_xlabel("prototype (colour: its class)")
    ax.set_ylabel("images for which it is the nearest")
    ax.set_title(f"prototype usage: {len(unused)} of {int(active.sum())} active unused")
    if len(unused):
        ax.legend()
    fig.tight_layout()
    return fig


def diversity_figure(vectors, classes, active, result, points, labels):
    plt = _pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(14, 4))
    v = vectors[active]
    gaps = np.sqrt(np.maximum(np.sum((v[:, None] - v[None]) ** 2, axis=-1), 0.0))
    image = axes[0].imshow(gaps, cmap="viridis")
    fig.colorbar(image, ax=axes[0])
    axes[0].set_title("pairwise distances of the active prototypes")
    volumes = np.asarray(result.log_volume, float)
    axes[1].bar(np.arange(len(volumes)), np.nan_to_num(volumes, nan=0.0))
    axes[1].set_title("log-volume per class")
    axes[1].set_xlabel("class")
    if points is not None:
        centre = points.mean(0)
        _, _, vt = np.linalg.svd(points - centre, full_matrices=False)
        flat, protos = (points - centre) @ vt[:2].T, (v - centre) @ vt[:2].T
        axes[2].scatter(flat[:, 0], flat[:, 1], c=labels % 10, cmap="tab10", s=4, alpha=0.5)
        colour = None if classes is None else classes[active] % 10
        axes[2].scatter(protos[:, 0], protos[:, 1], c=colour, cmap="tab10", marker="*", s=150,
                        edgecolors="black")  # fmt: skip
        axes[2].set_title("PCA of the latents (dots) and prototypes (stars)")
    else:
        axes[2].axis("off")
    fig.tight_layout()
    return fig


# --- markdown ----------------------------------------------------------------------------------
def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        shown = ", ".join(_fmt(v) for v in value[:12])
        return f"[{shown}{', …' if len(value) > 12 else ''}]"
    return str(value)


def definitions() -> dict[str, str]:
    from protojax import metrics
    from protojax.prototypes import diversity

    return {
        "accuracy": definition(metrics.accuracy),
        "top_k": definition(metrics.top_k_accuracy),
        "usage": definition(metrics.class_usage),
        "duplicates": definition(metrics.near_duplicates),
        "purity": definition(metrics.source_purity),
        "last_layer": definition(metrics.last_layer_structure),
        "deletion": definition(metrics.deletion_curve),
        "insertion": definition(metrics.insertion_curve),
        "max_sensitivity": definition(metrics.max_sensitivity),
        "randomisation": definition(metrics.model_randomisation),
        "ad_ai": definition(metrics.average_drop_increase),
        "removal": definition(metrics.prototype_removal),
        "misalignment": definition(metrics.spatial_misalignment),
        "entropy": definition(diversity.prototype_diversity_entropy),
        "log_volume": definition(metrics.class_log_volumes),
        "distance": definition(metrics.mean_pairwise_distance),
        "davies_bouldin": definition(diversity.davies_bouldin),
        "coverage": definition(metrics.class_coverage),
        "pointing_game": definition(metrics.pointing_game),
        "relevance_rank": definition(metrics.relevance_rank_accuracy),
        "relevance_mass": definition(metrics.relevance_mass_accuracy),
        "maxboxacc": definition(metrics.max_box_accuracy),
    }


def _explainer_table(columns: dict[str, dict], names: list[str]) -> list[str]:
    """Rows: explainers; columns: metrics."""
    lines = [
        "| explainer | " + " | ".join(columns) + " |",
        "|---|" + "---|" * len(columns),
    ]
    for name in names:
        cells = [_fmt(columns[c].get(name)) for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return lines


def run_markdown(record: dict) -> str:
    d = definitions()
    used: list[str] = []
    run = record["run"]
    lines = [
        f"# Evaluation of {run['workdir']}",
        "",
        f"Method `{run['method']}` on `{run['dataset']}`, config `{run['config']}` "
        f"(hash {run['config_hash']}, seed {run['seed']}), code hash {run['code_hash']}, "
        f"split `{run['split']}`; explanation metrics on its first {run['num_images']} images.",
        "",
        "Each metric is defined once, in the docstring of the function named beside it "
        "(its first paragraph is quoted below the tables).",
        "",
        "## Transparency",
        "",
    ]
    t = record["transparency"]
    rows = [
        ("prototypes (active)", f"{t.get('prototypes', '—')} ({t.get('active_prototypes', '—')})",
         None),
        ("fraction of prototypes ever the nearest", t.get("fraction_used"), "usage"),
        ("… per class", t.get("fraction_used_per_class"), "usage"),
        ("unused prototypes", t.get("unused_prototypes"), "usage"),
        ("near-duplicate prototypes", t.get("near_duplicates"), "duplicates"),
        ("identical prototypes", t.get("identical_prototypes"), "duplicates"),
        ("push-source class purity", t.get("push_source_purity"), "purity"),
        ("10 nearest images' class purity", t.get("nearest10_class_purity"), "purity"),
    ]  # fmt: skip
    for key, value in t.get("last_layer", {}).items():
        rows.append((f"last layer: {key}", value, "last_layer"))
    lines += _rows(rows, d, used)
    trust = record["trustworthiness"]
    lines += ["", "## Trustworthiness", ""]
    rows = [(key, trust[key], "top_k" if "top" in key and "1" not in key else "accuracy")
            for key in trust if "accuracy" in key or key == "gap_to_blackbox"]  # fmt: skip
    lines += _rows(rows, d, used)
    names = sorted({n for key in ("deletion_auc", "insertion_auc") for n in trust.get(key, {})})
    columns = {
        c: trust[c] for c in ("deletion_auc", "insertion_auc", "max_sensitivity") if c in trust
    }
    if names:
        lines += ["", "Explainers (`own`: the method's own map):", ""]
        lines += _explainer_table(columns, names)
        lines += ["", f"- deletion: {d['deletion']}", f"- insertion: {d['insertion']}",
                  "- max_sensitivity (radius 0.05, 10 samples, relative): "
                  f"{d['max_sensitivity']}"]  # fmt: skip
    for name, steps in trust.get("randomisation_spearman", {}).items():
        lines += ["", f"Parameter randomisation of {name} (Spearman, layers randomised "
                  f"cumulatively from the top): {d['randomisation']}", ""]  # fmt: skip
        lines += ["| layers up to | Spearman |", "|---|---|"]
        lines += [f"| {layer} | {_fmt(value)} |" for layer, value in steps.items()]
    if "ad_ai" in trust:
        a = trust["ad_ai"]
        lines += ["", f"AD/AI on prototype similarity ({a['pairs']} image–prototype pairs of "
                  f"the true class): {d['ad_ai']}", "", "| maps | AD (↑) | AI (↓) |",
                  "|---|---|---|"]  # fmt: skip
        for label, key in ((f"prp ({run['prp_composite']})", "prp"), ("random", "random")):
            lines.append(f"| {label} | {_fmt(a[key]['AD'])} | {_fmt(a[key]['AI'])} |")
    if "prototype_removal" in trust:
        r = trust["prototype_removal"]
        lines += ["", f"Prototype removal: {d['removal']}", "",
                  f"accuracy {_fmt(r['accuracy'])}, mean drop {_fmt(r['mean_drop'])}, "
                  f"max drop {_fmt(r['max_drop'])}, prototypes whose removal costs accuracy: "
                  f"{r['prototypes_with_drop']}."]  # fmt: skip
    if "spatial_misalignment" in trust:
        s = trust["spatial_misalignment"]
        lines += ["", f"Spatial misalignment (ε 0.4, step 0.01, 40 iterations, in "
                  f"{s['units']}): {d['misalignment']}", "",
                  "| PAC | PRC | PLC | accuracy before | accuracy after |", "|---|---|---|---|---|",
                  f"| {_fmt(s['PAC'])} | {_fmt(s['PRC'])} | {_fmt(s['PLC'])} | "
                  f"{_fmt(s['accuracy_before'])} | {_fmt(s['accuracy_after'])} |"]  # fmt: skip
    div = record.get("diversity", {})
    lines += ["", "## Diversity", ""]
    lines += _rows(
        [
            ("diversity entropy", div.get("entropy"), "entropy"),
            ("log-volume per class", div.get("log_volume"), "log_volume"),
            ("mean pairwise distance", div.get("mean_distance"), "distance"),
            ("… within classes", div.get("mean_distance_within_class"), "distance"),
            ("Davies–Bouldin", div.get("davies_bouldin"), "davies_bouldin"),
            ("coverage per class (2-D PCA)", div.get("coverage"), "coverage"),
        ],
        d,
        used,
    )
    if "localisation" in record:
        loc = record["localisation"]
        columns = {}
        for name, values in loc.items():
            for metric, value in values.items():
                columns.setdefault(metric, {})[name] = value
        lines += ["", "## Localisation", ""]
        lines += _explainer_table(columns, list(loc))
        lines += ["", f"- pointing_game: {d['pointing_game']}",
                  f"- relevance_rank: {d['relevance_rank']}",
                  f"- relevance_mass: {d['relevance_mass']}",
                  "- maxboxacc (100 thresholds, boxes around the masks): "
                  f"{d['maxboxacc']}"]  # fmt: skip
    if used:
        lines += ["", "## Definitions of the tables' metrics", ""]
        lines += [f"- {text}" for text in used]
    if record.get("not_applicable"):
        lines += ["", "## Not applicable", ""]
        lines += [f"- {k}: {v}" for k, v in record["not_applicable"].items()]
    if record.get("figures"):
        lines += ["", "## Figures", ""]
        lines += [f"![{f}]({f})" for f in record["figures"]]
    return "\n".join(lines) + "\n"


def _rows(rows, d, used: list[str]) -> list[str]:
    """A metric table naming each definition's function; `used` collects the definitions."""
    if all(value is None for _, value, _ in rows):
        return ["Not applicable (see below)."]
    lines = ["| metric | value | defined by |", "|---|---|---|"]
    for name, value, key in rows:
        if value is None:
            continue
        if key and d[key] not in used:
            used.append(d[key])
        lines.append(f"| {name} | {_fmt(value)} | {d[key].split(':')[0] if key else ''} |")
    return lines


# --- several runs ------------------------------------------------------------------------------
def flatten(record: dict) -> dict[str, float]:
    """Every scalar number of a record's predicates, keyed `predicate/a/b`."""
    out = {}

    def walk(prefix, value):
        if isinstance(value, dict):
            for key, inner in value.items():
                walk(f"{prefix}/{key}", inner)
        elif isinstance(value, bool):
            return
        elif isinstance(value, int | float):
            out[prefix] = float(value)
        elif isinstance(value, list) and value and "per_class" not in prefix and len(value) <= 20:
            numbers = [v for v in value if isinstance(v, int | float) and not isinstance(v, bool)]
            if numbers and "unused" not in prefix and "usage_counts" not in prefix:
                if "drop_per_prototype" not in prefix:
                    out[f"{prefix} (mean over entries)"] = float(np.mean(numbers))

    for predicate in PREDICATES:
        if predicate in record:
            walk(predicate, record[predicate])
    return out


def several_runs(records: list[dict]) -> tuple[str, dict]:
    """(markdown, json) of the table: one column per config, mean ± std over its seeds."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for record in records:
        key = (record["run"]["config"], record["run"]["config_hash"])
        groups.setdefault(key, []).append(record)
    columns = list(groups)
    flat = {key: [flatten(r) for r in rs] for key, rs in groups.items()}
    metric_names = sorted({m for rows in flat.values() for row in rows for m in row})
    table = {}
    for key in columns:
        label = f"{key[0]} ({key[1]})"
        table[label] = {}
        for name in metric_names:
            values = [row[name] for row in flat[key] if name in row and math.isfinite(row[name])]
            if values:
                table[label][name] = {
                    "mean": float(np.mean(values)),
                    "std": float(np.std(values, ddof=1)) if len(values) > 1 else 0.0,
                    "n": len(values),
                }
    labels = list(table)
    lines = ["# Evaluation across runs", "",
             "Each cell: mean ± standard deviation (ddof 1) over the seeds of one config "
             "(n runs); definitions in each run's evaluation.md and the functions it names.",
             "", "| config | config hash | code hash | split | seeds | workdirs |",
             "|---|---|---|---|---|---|"]  # fmt: skip
    for key in columns:
        rs = groups[key]
        codes = sorted({r["run"]["code_hash"] for r in rs})
        splits = sorted({r["run"]["split"] for r in rs})
        seeds = sorted(r["run"]["seed"] for r in rs)
        dirs = ", ".join(r["run"]["workdir"] for r in rs)
        lines.append(f"| {key[0]} | {key[1]} | {', '.join(codes)} | {', '.join(splits)} | "
                     f"{', '.join(map(str, seeds))} | {dirs} |")  # fmt: skip
    lines += ["", "| metric | " + " | ".join(labels) + " |", "|---|" + "---|" * len(labels)]
    for name in metric_names:
        cells = []
        for label in labels:
            cell = table[label].get(name)
            cells.append("—" if cell is None else
                         f"{cell['mean']:.4g} ± {cell['std']:.2g} (n={cell['n']})")  # fmt: skip
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    payload = {
        "runs": [r["run"] for r in records],
        "table": table,
    }
    return "\n".join(lines) + "\n", payload


def main(argv: list[str]) -> None:
    if any(cli.parse_flags(argv)):
        raise UsageError("experiments.evaluate reads each run's config from its workdir.")
    if bool(FLAGS.workdir) == bool(FLAGS.workdirs):
        raise UsageError("Pass either --workdir=DIR (one run) or --workdirs=D1,D2,... --out=DIR.")
    if FLAGS.num_images < 1 or FLAGS.batch_size < 1:
        raise UsageError("--num_images and --batch_size must be ≥ 1.")
    cli.check_prp_composite(FLAGS.prp_composite)
    options = {
        "blackbox_workdir": FLAGS.blackbox_workdir,
        "explainers": FLAGS.explainers,
        "num_images": FLAGS.num_images,
        "split_name": FLAGS.split,
        "seed": FLAGS.seed,
        "batch_size": FLAGS.batch_size,
        "prp_composite": FLAGS.prp_composite,
    }
    if FLAGS.workdir:
        evaluate_run(pathlib.Path(FLAGS.workdir), **options)
        print(f"Wrote {pathlib.Path(FLAGS.workdir) / 'evaluation'}/evaluation.md")
        return
    if not FLAGS.out:
        raise UsageError("--workdirs needs --out=DIR, the folder of the table.")
    workdirs = [pathlib.Path(w) for w in FLAGS.workdirs.split(",") if w]
    records = []
    for number, workdir in enumerate(workdirs, 1):
        log.info("evaluate: run %d/%d: %s", number, len(workdirs), workdir)
        records.append(evaluate_run(workdir, **options))
    markdown, payload = several_runs(records)
    with cli.replaced_folder(FLAGS.out) as staging:
        (staging / "evaluation.md").write_text(markdown)
        (staging / "evaluation.json").write_text(json.dumps(payload, indent=1) + "\n")
    print(f"Wrote {pathlib.Path(FLAGS.out) / 'evaluation.md'}")


if __name__ == "__main__":
    define_flags()
    cli.run_launcher(main)
