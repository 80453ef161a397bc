"""The shortcut case study: do explanations reveal a model that reads a spurious marker?

  python -m experiments.shortcut_study --workdir=DIR [--num_images=16] [--smoke]

On the generated shapes set with `data.shapes.shortcut=True`, every training image carries a
small white square on its top edge whose position gives the class away (a stand-in for the
hospital tag of chest X-rays). Three models train on these marked images:
- a black box (the small CNN of `blackbox_shapes`);
- ProtoPNet (`protopnet_shapes`, its backbone from the black box of the same arm);
- ProtoVAE (the official CIFAR-10 encoder/decoder at 32 px, built here: no shapes config).
The control arm trains the same three on the same images without markers.

For every model the study reports the test accuracy on clean images (`test`) and on the same
images with the markers stamped (`test_marked`), and, on the first `--num_images` marked test
images, each explainer's share of positive relevance on the marker and on the object
(`protojax.metrics.relevance_mass_accuracy` with the split's `marker_mask` and `mask`). The
class explained is the predicted one. The explainers: saliency, SmoothGrad, integrated
gradients, Grad-CAM, occlusion, RISE (on the class probability), RELAX (on the embedding),
LRP (black box), PRP (ProtoPNet and ProtoVAE) and the method's own map (ProtoPNet: the
upsampled similarity map of the prototype adding most to the predicted logit, minus its
minimum; ProtoVAE: PRP of its most similar prototype of the predicted class).

Writes, under DIR:
- `shortcut/{blackbox,protopnet,protovae}` and `control/...`: the six training workdirs; a
  workdir whose run finished (it has summary.json) is not trained again, an unfinished one
  resumes;
- `results.json`: the accuracies and fractions;
- `shortcut_study.md`: the tables; `figures/ARM_MODEL.png`: a grid of marked test images
  with each explainer's map (marker outlined in cyan, object in green).

All images are 32 px (ProtoVAE's CIFAR-10 pair needs 32), with no horizontal flips: a flip
would move class k's marker onto class K−1−k's place. `--smoke` shrinks the data and every
stage to a few seconds, to check the pipeline.
"""

from __future__ import annotations

import functools
import json
import logging
import pathlib
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from experiments import cli
from protojax.config import ConfigDict
from protojax.errors import UsageError
from protojax.explain import runner

FLAGS = flags.FLAGS


def define_flags() -> None:
    """Defined when run as a launcher only, so that tests importing this module's pieces
    beside another launcher's do not define `--workdir` twice."""
    flags.DEFINE_string("workdir", None, "Folder of the study: its six runs and its report.")
    flags.DEFINE_integer("num_images", 16, "Marked test images explained per model.")
    flags.DEFINE_bool("smoke", False, "Tiny data and one epoch per stage: checks the pipeline.")


log = logging.getLogger(__name__)

ARMS = ("shortcut", "control")
MODELS = ("blackbox", "protopnet", "protovae")
IMAGE_SIZE = 32
EXPLAINERS = (*runner.EXPLAINERS, "own")  # the post-hoc ones, then the method's own map


def study_config(model: str, arm: str, root: pathlib.Path, *, smoke: bool = False) -> ConfigDict:
    """The training config of `model` in `arm` ('shortcut': marked training images; 'control':
    clean ones). ProtoPNet's backbone is read from the black box's workdir of the same arm."""
    from experiments.configs import blackbox_shapes, common, protopnet_shapes

    if model == "blackbox":
        config = blackbox_shapes.get_config()
        config.train.epochs = 4
    elif model == "protopnet":
        config = protopnet_shapes.get_config()
        config.model.backbone_weights = str(root / arm / "blackbox")
        config.model.prototypes_per_class = 5
        config.model.push_batch_size = 250
        # Warm-up, one joint epoch, the push after it, one last-layer epoch.
        config.train.epochs = 2
        config.model.warm_epochs, config.model.push_start, config.model.push_every = 1, 1, 1
        config.model.last_layer_epochs = 1
    elif model == "protovae":
        config = common.base_config("protovae")
        config.data.name = "shapes"
        config.data.normalization = "symmetric"
        config.data.batch_size = 64
        config.model.arch = "cifar10"
        config.model.latent_dim = 64
        config.model.prototypes_per_class = 5
        config.optim.lr = 1e-3
        config.train.epochs = 3
    else:
        raise UsageError(f"Unknown model {model!r}; the study trains {', '.join(MODELS)}.")
    data = config.data
    data.image_size = IMAGE_SIZE
    data.augment.hflip = False
    data.eval_batch_size = 250
    data.shapes.shortcut = arm == "shortcut"
    data.shapes.num_train, data.shapes.num_val, data.shapes.num_test = 2000, 200, 500
    config.train.progress = False
    if smoke:
        data.shapes.num_train, data.shapes.num_val, data.shapes.num_test = 128, 64, 64
        data.batch_size, data.eval_batch_size = 32, 64
        config.train.epochs = 1
        if model == "protopnet":
            config.model.warm_epochs, config.model.push_start = 0, 0
            config.model.last_layer_epochs = 1
            config.model.push_batch_size = 64
    return config


def train_or_resume(config: ConfigDict, workdir: pathlib.Path) -> dict:
    """The run's summary; trains (or resumes) only where no summary.json is written yet."""
    from protojax import runs
    from protojax.train.workdir import SUMMARY

    if (workdir / SUMMARY).is_file():
        log.info("%s finished earlier; not trained again.", workdir)
    else:
        log.info("Training %s.", workdir)
        runs.train(config, workdir)
    return json.loads((workdir / SUMMARY).read_text())


def _call(fn, variables, images, *args):
    return fn(variables, images, *args)


def _bound(fn, variables) -> jax.tree_util.Partial:
    """`fn(variables, ...)` as a Partial whose leaves are the variables."""
    return jax.tree_util.Partial(functools.partial(_call, fn), variables)


def predicted_classes(method, variables, images: np.ndarray, *, batch_size: int) -> np.ndarray:
    """Arg-max classes `[N]` of images `[N, H, W, C]` in [0, 1]."""
    predict = jax.jit(method.predict)
    out = [
        np.asarray(jnp.argmax(predict(variables, images[i : i + batch_size]), axis=-1))
        for i in range(0, len(images), batch_size)
    ]
    return np.concatenate(out)


def explanation_maps(
    model: str, method, variables, config, images, classes, *, rng: jax.Array
) -> dict[str, np.ndarray]:
    """Each explainer's map `[B, H, W]` of `classes [B]` on images `[B, H, W, C]` in [0, 1]
    (only the explainers that apply to `model`), for a run loaded by `load_workdir`."""
    from protojax import explain
    from protojax.methods.common import class_probability

    targets = method.targets(variables)
    logit = targets["class_logit"]
    probability = _bound(functools.partial(class_probability, method.predict), variables)
    images, classes = jnp.asarray(images), jnp.asarray(classes)
    keys = jax.random.split(rng, 4)
    size = images.shape[1:3]
    maps = {
        "saliency": explain.reduce_channels(
            explain.saliency(logit, images, targets=classes), "max_abs"
        ),
        "smoothgrad": explain.reduce_channels(
            explain.smoothgrad(logit, images, rng=keys[0], num_samples=16, targets=classes),
            "max_abs",
        ),
        "integrated_gradients": explain.reduce_channels(
            explain.integrated_gradients(logit, images, steps=16, targets=classes), "sum"
        ),
        "occlusion": explain.occlusion(
            probability, images, patch=4, stride=2, fill=0.5, targets=classes
        ),
        # RISE and RELAX are mask-weighted means of a score: positive everywhere, with an
        # offset (the mean score) that says nothing of the pixel; above-mean importance counts.
        "rise": _above_mean(
            explain.rise(
                probability,
                images,
                explain.rise_masks(keys[1], 500, size, grid=8),
                batch_size=100,
                targets=classes,
            )
        ),
        "relax": _above_mean(
            explain.relax(
                _bound(method.embed, variables),
                images,
                explain.relax_masks(keys[2], 500, size, grid=8),
                batch_size=100,
            ).importance
        ),
    }
    if "features" in targets:
        maps["gradcam"] = explain.gradcam(
            targets["features"], targets["head"], images, targets=classes
        )
    if model == "blackbox":
        composite = explain.composite_by_name("epsilon_plus_box", **_input_bounds(config))
        maps["lrp"] = explain.reduce_channels(
            explain.lrp(logit, images, targets=classes, composite=composite), "sum"
        )
    if model == "protopnet":
        maps.update(_protopnet_maps(method, variables, config, images, classes))
    if model == "protovae":
        maps.update(_protovae_maps(method, variables, config, images, classes))
    return {name: np.asarray(value, np.float32) for name, value in maps.items()}


def _input_bounds(config) -> dict[str, float | tuple[float, ...]]:
    """The range of the model's inputs (pixels in [0, 1], normalised as the run was): the
    bounds of LRP's z^β rule at the first layer; per channel where the channels differ."""
    from protojax.data.pipeline import normalize
    from protojax.explain import input_bounds

    return input_bounds(functools.partial(normalize, mode=config.data.normalization), 3)


def _above_mean(maps: jax.Array) -> jax.Array:
    """Maps `[B, H, W]` minus each one's mean."""
    return maps - jnp.mean(maps, axis=(1, 2), keepdims=True)


def _protopnet_maps(method, variables, config, images, classes) -> dict[str, jax.Array]:
    """ProtoPNet's own map: the upsampled similarity map of the prototype adding most to the
    explained logit, minus its minimum (as its figures are min-max normalised)."""
    from protojax import explain
    from protojax.data.pipeline import normalize
    from protojax.explain.prototypes import top_contributions, upsample_activation

    result = method.activations(variables, normalize(images, config.data.normalization))
    kernel = np.asarray(variables["params"]["last_layer"]["kernel"])  # [P, K]
    active = np.asarray(variables["prototype_state"]["active"])
    sims, maps = np.asarray(result.similarities), np.asarray(result.similarity_maps)
    own, tops = [], []
    for row, k in enumerate(np.asarray(classes)):
        top = int(top_contributions(sims[row], kernel[:, k], active, k=1).prototypes[0])
        upsampled = upsample_activation(maps[row, :, :, top], images.shape[1:3])
        own.append(upsampled - jnp.min(upsampled))
        tops.append(top)
    # PRP of the same prototype: the method's `prp` target (from the add-on's last conv,
    # before its sigmoid) under the official rules, bounded by the model's input range.
    composite = explain.composite_by_name("prp", **_input_bounds(config))
    prp_score = method.targets(variables)["prp"]
    prp = explain.lrp(prp_score, images, targets=jnp.asarray(tops), composite=composite)
    return {"own": jnp.stack(own), "prp": explain.reduce_channels(prp, "sum")}


def _protovae_maps(method, variables, config, images, classes) -> dict[str, jax.Array]:
    """ProtoVAE's own map: PRP (the official `prp` composite) of the prototype of the explained
    class nearest to the image's μ (its most similar one)."""
    from protojax import explain
    from protojax.data.pipeline import normalize

    prototypes = variables["params"]["prototypes"]  # [P, d]
    mu = method.embed(variables, images)  # [B, d]
    ids = np.arange(len(prototypes)).reshape(-1, method.prototypes_per_class)
    ids = jnp.asarray(ids[np.asarray(classes)])  # [B, M], the explained class's prototypes
    distances = jnp.linalg.norm(mu[:, None, :] - prototypes[ids], axis=-1)
    nearest = jnp.take_along_axis(ids, jnp.argmin(distances, axis=1)[:, None], 1)[:, 0]
    # PRP starts at the first layer's input, the normalised image, whose relevance stays on
    # its pixel.
    embed = _bound(getattr(method, "trained", method).embed, variables)
    relevance = explain.protovae_relevance(prototypes)
    inputs = normalize(images, config.data.normalization)
    composite = explain.composite_by_name("prp", **_input_bounds(config))
    prp = explain.prp(embed, relevance, inputs, targets=nearest, composite=composite)
    return {"own": explain.reduce_channels(prp, "sum")}


def evaluate_model(
    model: str, workdir: pathlib.Path, dataset, *, num_images: int, rng: jax.Array
) -> tuple[dict, dict[str, np.ndarray], np.ndarray]:
    """(figures, maps `{explainer: [N, H, W]}`, predicted classes `[N]`) of the run in
    `workdir`, on `dataset`'s `test` and `test_marked` splits (the first `num_images` marked
    images explained)."""
    import protojax

    method, variables, config = protojax.load_workdir(workdir)
    batch_size = config.data.eval_batch_size
    result = {}
    for name, split in (("clean_accuracy", "test"), ("marked_accuracy", "test_marked")):
        data = dataset.split(split)
        batch = data.get_batch(np.arange(len(data)))
        predicted = predicted_classes(method, variables, batch["image"], batch_size=batch_size)
        result[name] = float(np.mean(predicted == batch["label"]))
    marked = dataset.split("test_marked").get_batch(np.arange(num_images))
    classes = predicted_classes(method, variables, marked["image"], batch_size=batch_size)
    maps = explanation_maps(model, method, variables, config, marked["image"], classes, rng=rng)
    result["fractions"] = relevance_shares(maps, marked)
    return result, maps, classes


def relevance_shares(maps: dict[str, np.ndarray], batch: dict) -> dict[str, dict[str, float]]:
    """`{explainer: {"marker": share, "object": share}}`: the mean over images of the share of
    each map's positive relevance inside the batch's `marker_mask` and `mask`
    (`protojax.metrics.relevance_mass_accuracy`)."""
    from protojax.metrics import relevance_mass_accuracy

    return {
        name: {
            "marker": float(relevance_mass_accuracy(value, batch["marker_mask"]).aggregate),
            "object": float(relevance_mass_accuracy(value, batch["mask"]).aggregate),
        }
        for name, value in maps.items()
    }


def area_shares(dataset, num_images: int) -> dict[str, float]:
    """The mean share of the image that the marker and the object cover: what a map spread
    evenly would put on each."""
    marked = dataset.split("test_marked").get_batch(np.arange(num_images))
    return {
        "marker": float(np.mean(marked["marker_mask"].mean(axis=(1, 2)))),
        "object": float(np.mean(marked["mask"].mean(axis=(1, 2)))),
    }


def maps_figure(batch: dict, maps: dict[str, np.ndarray], classes, class_names, *, title: str):
    """Rows: marked test images; columns: the image, then each explainer's positive relevance
    (scaled to its own maximum), with the marker outlined in cyan and the object in green."""
    from protojax.explain import figures

    plt = figures.pyplot()
    names = [name for name in EXPLAINERS if name in maps]
    rows, cols = len(batch["image"]), len(names) + 1
    fig, axes = plt.subplots(rows, cols, figsize=(1.3 * cols, 1.4 * rows + 0.4), squeeze=False)
    for row in range(rows):
        label, predicted = class_names[batch["label"][row]], class_names[classes[row]]
        figures.show(axes[row, 0], batch["image"][row])
        axes[row, 0].set_ylabel(f"{label}\n→ {predicted}", fontsize=7)
        for col, name in enumerate(names, start=1):
            positive = np.maximum(maps[name][row], 0.0)
            peak = positive.max()
            ax = axes[row, col]
            ax.imshow(positive / peak if peak > 0 else positive, cmap="inferno", vmin=0, vmax=1)
            for mask, colour in ((batch["marker_mask"][row], "cyan"), (batch["mask"][row], "lime")):
                if mask.any():
                    ax.contour(mask, levels=[0.5], colors=colour, linewidths=0.6)
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(name.replace("_", "\n"), fontsize=7)
    axes[0, 0].set_title("image", fontsize=7)
    fig.suptitle(title, fontsize=8)
    fig.tight_layout()
    return fig


def report_markdown(results: dict) -> str:
    """The study's tables: accuracies, then per arm the marker / object shares."""
    area = results["area"]
    lines = [
        "| arm | model | clean test accuracy | marked test accuracy |",
        "|---|---|---|---|",
    ]
    for arm in ARMS:
        for model in MODELS:
            r = results[arm][model]
            lines.append(
                f"| {arm} | {model} | {r['clean_accuracy']:.3f} | {r['marked_accuracy']:.3f} |"
            )
    for arm in ARMS:
        lines += [
            "",
            f"Positive relevance on the marker / on the object, {arm} arm "
            f"(mean over {results['num_images']} marked test images, predicted class):",
            "",
            "| explainer | " + " | ".join(MODELS) + " |",
            "|---|" + "---|" * len(MODELS),
        ]
        for name in EXPLAINERS:
            cells = []
            for model in MODELS:
                share = results[arm][model]["fractions"].get(name)
                cells.append(f"{share['marker']:.2f} / {share['object']:.2f}" if share else "—")
            if any(cell != "—" for cell in cells):
                lines.append(f"| {name} | " + " | ".join(cells) + " |")
        lines.append(
            "| (area share) | "
            + " | ".join(f"{area['marker']:.3f} / {area['object']:.2f}" for _ in MODELS)
            + " |"
        )
    return "\n".join(lines) + "\n"


def run_study(
    root: pathlib.Path, *, num_images: int, smoke: bool = False, figure_rows: int = 4
) -> dict:
    """Trains (or resumes) the six runs under `root`, explains them and writes results.json,
    shortcut_study.md and figures/; returns the results."""
    from protojax.data import load_dataset
    from protojax.explain import figures

    started = time.perf_counter()
    configs = {
        (arm, model): study_config(model, arm, root, smoke=smoke)
        for arm in ARMS
        for model in MODELS
    }
    results = {"num_images": num_images, "train_wall_time_s": {}}
    for (arm, model), config in configs.items():
        summary = train_or_resume(config, root / arm / model)
        results["train_wall_time_s"][f"{arm}/{model}"] = summary["wall_time_s"]
    dataset = load_dataset(configs["shortcut", "blackbox"].data)
    if num_images > len(dataset.split("test_marked")):
        raise UsageError(
            f"--num_images={num_images} exceeds the {len(dataset.split('test_marked'))} test "
            "images."
        )
    results["area"] = area_shares(dataset, num_images)
    explaining = time.perf_counter()
    shown = dataset.split("test_marked").get_batch(np.arange(min(figure_rows, num_images)))
    rng = jax.random.key(0)
    with cli.replaced_folder(root / "figures", owned=True) as out:
        for arm in ARMS:
            results[arm] = {}
            for model in MODELS:
                log.info("Explaining %s/%s.", arm, model)
                result, maps, classes = evaluate_model(
                    model, root / arm / model, dataset, num_images=num_images, rng=rng
                )
                results[arm][model] = result
                fig = maps_figure(
                    shown,
                    {name: value[: len(shown["image"])] for name, value in maps.items()},
                    classes,
                    dataset.class_names,
                    title=f"{model}, {arm} arm: marked test images (true → predicted)",
                )
                fig.savefig(out / f"{arm}_{model}.png", dpi=110)
                figures.pyplot().close(fig)
    results["explain_wall_time_s"] = time.perf_counter() - explaining
    results["wall_time_s"] = time.perf_counter() - started
    (root / "results.json").write_text(json.dumps(results, indent=1) + "\n")
    (root / "shortcut_study.md").write_text(report_markdown(results))
    return results


def main(argv: list[str]) -> None:
    cli.parse_flags(argv)
    if not FLAGS.workdir:
        raise UsageError("Pass --workdir=DIR, the folder of the study's runs and report.")
    if FLAGS.num_images < 1:
        raise UsageError(f"--num_images must be at least 1; got {FLAGS.num_images}.")
    root = pathlib.Path(FLAGS.workdir).absolute()
    results = run_study(root, num_images=FLAGS.num_images, smoke=FLAGS.smoke)
    print(report_markdown(results))
    print(
        f"Wrote {root / 'shortcut_study.md'}, results.json and figures/ in "
        f"{results['wall_time_s']:.0f} s."
    )


if __name__ == "__main__":
    define_flags()
    cli.run_launcher(main)
