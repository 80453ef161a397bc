"""Explains a trained model's predictions with every explainer, beside its own explanation.

  python -m experiments.explain --workdir=DIR [--explainers=saliency,smoothgrad,...]
      [--num_images=8] [--target=class_logit] [--split=test] [--top_k=3] [--batch_size=256]

Targets (`--target`), each a score the method exports in `targets()`:
- `class_logit` (default) or `class_probability`: of each image's predicted class;
- `prototype:J`: prototype J's similarity;
- `nearest_prototype`: the similarity to each image's most similar prototype;
- `latent`: the embedding, which only RELAX explains (RELAX always explains the embedding).

It writes, under DIR/explanations/SPLIT/:
- `grid.png`: rows are images (with prediction and label), columns are explainers;
- `image_NNN/EXPLAINER.png`: one figure per image and explainer, with its colour bar, and
  `image_NNN/image.json`, the image's prediction, label, probability and explained score;
- the method's own explanation beside them: ProtoPNet's "this looks like that"
  (`image_NNN/this_looks_like_that.png`, class galleries in DIR/explanations/gallery/),
  ProtoVAE's and Pantypes' decoded prototypes with the image's similarities
  (`image_NNN/decoded_prototypes.png`);
- `explanations.json`: the settings, timings and numbers behind the figures.

Then it rewrites the run's report, DIR/report/index.html (`protojax.explain.report`).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
from absl import flags

from experiments import cli
from protojax.errors import UsageError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Work directory of a training run.")
flags.DEFINE_string(
    "explainers",
    "saliency,smoothgrad,integrated_gradients,gradcam,occlusion,rise,relax",
    "Comma-separated explainers, in the grid's column order.",
)
flags.DEFINE_integer("num_images", 8, "Images of the split to explain (its first ones).")
flags.DEFINE_string("target", "class_logit", "Score explained (see the module docstring).")
flags.DEFINE_string("split", "test", "Split whose images are explained.")
flags.DEFINE_integer("top_k", 3, "Prototypes shown per image in the method's own explanation.")
flags.DEFINE_integer("batch_size", 256, "Perturbed images an explainer evaluates at once.")
flags.DEFINE_string("gradcam_layer", "", "Module path Grad-CAM explains (default: the backbone).")
flags.DEFINE_integer("seed", 0, "Seed of SmoothGrad's noise and the RISE and RELAX masks.")

YELLOW = (1.0, 0.85, 0.0)
LATENT = "latent"


class _PrototypeViews:
    """Each prototype's source image (in [0, 1]), its self-activation box and its patch."""

    def __init__(self, method, variables, config, train_split, batch_size: int):
        from protojax.data.pipeline import normalize
        from protojax.prototypes.projection import high_activation_box

        state = {k: np.asarray(v) for k, v in variables["prototype_state"].items()}
        self.sources, self.boxes = {}, {}
        pushed = np.flatnonzero(state["source_index"] >= 0)
        for start in range(0, len(pushed), batch_size):
            ids = pushed[start : start + batch_size]
            raw = train_split.get_batch(state["source_index"][ids])
            images = normalize(raw["image"], config.data.normalization)
            maps = np.asarray(method.self_activations(variables, images, ids))
            for row, j in enumerate(ids):
                self.sources[int(j)] = raw["image"][row]
                self.boxes[int(j)] = high_activation_box(maps[row])

    def source(self, j: int) -> np.ndarray:
        from protojax.imaging import to_rgb

        return to_rgb(self.sources[j])

    def patch(self, j: int) -> np.ndarray:
        from protojax.imaging import crop, to_rgb

        return crop(to_rgb(self.sources[j]), self.boxes[j])


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _show(ax, image, title: str = "", box=None) -> None:
    """Shows an image (pixel-exact), with box (y0, x0, y1, x1) outlined on top of it."""
    from matplotlib.patches import Rectangle

    image = np.clip(image, 0, 1)
    if image.shape[-1] == 1:
        ax.imshow(image[..., 0], cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    else:
        ax.imshow(image, interpolation="nearest")
    if box is not None:
        y0, x0, y1, x1 = (int(v) for v in box)
        # Pixel i spans [i − 0.5, i + 0.5] in imshow's coordinates.
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=2, ec=YELLOW))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def _save(fig, path: pathlib.Path) -> pathlib.Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def explain_protopnet(method, variables, config, dataset, batch, out: pathlib.Path, *, top_k):
    """ProtoPNet's own explanation: "this looks like that" per image (the `top_k` prototypes
    adding most to the predicted logit: activation and its 95th-percentile box, source patch
    and image, similarity × weight) and each class's gallery. Returns the numbers shown."""
    from protojax.data.pipeline import normalize
    from protojax.imaging import overlay_heatmap, to_rgb
    from protojax.prototypes.projection import high_activation_box, upsample_activation

    state = variables["prototype_state"]
    if not np.any(np.asarray(state["source_index"]) >= 0):
        raise UsageError(
            "This run has not pushed its prototypes yet, so they are not training patches; "
            "explain a run that has passed its first push epoch."
        )
    plt = _pyplot()
    names = dataset.class_names
    chunk = max(1, min(config.data.eval_batch_size, 64))
    views = _PrototypeViews(method, variables, config, dataset.split("train"), chunk)
    kernel = np.asarray(variables["params"]["last_layer"]["kernel"])  # [P, K]
    active = np.asarray(state["active"])
    classes = np.asarray(state["prototype_class"])
    result = method.activations(variables, normalize(batch["image"], config.data.normalization))
    logits, sims = np.asarray(result.logits), np.asarray(result.similarities)
    maps = np.asarray(result.similarity_maps)
    records = []
    for row, n in enumerate(batch["index"]):
        predicted = int(np.argmax(logits[row]))
        contribution = np.where(active, sims[row] * kernel[:, predicted], -np.inf)
        top = [int(j) for j in np.argsort(-contribution, kind="stable")[:top_k]]
        image = to_rgb(batch["image"][row])
        fig, axes = plt.subplots(
            len(top), 5, figsize=(11, 2.3 * len(top) + 0.6), squeeze=False,
            gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.4]},
        )  # fmt: skip
        fig.suptitle(
            f"image {n}: predicted {names[predicted]} (logit {logits[row, predicted]:.2f}), "
            f"true {names[int(batch['label'][row])]}",
            fontsize=10,
        )
        entry = {"index": int(n), "prototypes": []}
        for r, j in enumerate(top):
            activation = np.asarray(upsample_activation(maps[row, :, :, j], image.shape[:2]))
            box = high_activation_box(activation)
            weight = float(kernel[j, predicted])
            first = r == 0
            _show(axes[r, 0], image, "this image" if first else "", box)
            _show(
                axes[r, 1], overlay_heatmap(image, activation), "activation" if first else "", box
            )
            _show(axes[r, 2], views.patch(j), "looks like" if first else "")
            source_title = "prototype's source" if first else ""
            _show(axes[r, 3], views.source(j), source_title, views.boxes[j])
            axes[r, 4].axis("off")
            text = (
                f"prototype {j} ({names[int(classes[j])]})\nsimilarity {sims[row, j]:.3f}\n"
                f"weight to {names[predicted]}: {weight:.3f}\n"
                f"contribution {sims[row, j] * weight:.3f}"
            )
            axes[r, 4].text(0.0, 0.5, text, fontsize=9, va="center", family="monospace")
            entry["prototypes"].append(
                {
                    "prototype": j,
                    "class": int(classes[j]),
                    "similarity": float(sims[row, j]),
                    "weight": weight,
                    "contribution": float(sims[row, j] * weight),
                    "activation_box": [int(v) for v in box],
                }
            )
        fig.tight_layout()
        _save(fig, out / f"image_{n:03d}" / "this_looks_like_that.png")
        records.append(entry)

    per_class = method.prototypes_per_class
    for k in range(method.num_classes):
        ids = [j for j in range(k * per_class, (k + 1) * per_class) if j in views.sources]
        if not ids:
            continue
        fig, axes = plt.subplots(2, len(ids), figsize=(1.8 * len(ids) + 0.4, 4.0), squeeze=False)
        fig.suptitle(f"class {names[k]}: prototypes (patch above, source below)", fontsize=10)
        for col, j in enumerate(ids):
            status = "" if active[j] else " (pruned)"
            _show(axes[0, col], views.patch(j), f"p{j}{status}")
            _show(axes[1, col], views.source(j), box=views.boxes[j])
        fig.tight_layout()
        _save(fig, out.parent / "gallery" / f"class_{k:03d}.png")
    return records


def explain_decoded(method, variables, config, dataset, batch, out: pathlib.Path, *, top_k):
    """ProtoVAE's and Pantypes' own explanation per image: the image and its reconstruction,
    then the `top_k` prototypes adding most to the predicted logit, decoded, each with its
    similarity to the image and its contribution. Returns the numbers shown."""
    import jax

    from protojax.data.pipeline import denormalize, normalize

    plt = _pyplot()
    net, names = method.net, dataset.class_names
    images = normalize(batch["image"], config.data.normalization)
    _, sims, logits = (np.asarray(a) for a in net.apply(variables, images, method=net.infer))
    outputs = net.apply(variables, images, train=False)
    decoded = net.apply(variables, variables["params"]["prototypes"], method=net.decode)
    decoded, rebuilt = (
        np.clip(denormalize(np.asarray(jax.device_get(x)), config.data.normalization), 0, 1)
        for x in (decoded, outputs.reconstruction)
    )
    kernel = np.asarray(variables["params"]["last_layer"])  # [P, K]
    active = np.asarray(variables["prototype_state"]["active"])
    records = []
    for row, n in enumerate(batch["index"]):
        predicted = int(np.argmax(logits[row]))
        contribution = np.where(active, sims[row] * kernel[:, predicted], -np.inf)
        top = [int(j) for j in np.argsort(-contribution, kind="stable")[:top_k]]
        fig, axes = plt.subplots(1, 2 + len(top), figsize=(1.9 * (2 + len(top)), 2.6))
        _show(axes[0], batch["image"][row], "image")
        _show(axes[1], rebuilt[row], "reconstruction")
        for ax, j in zip(axes[2:], top, strict=True):
            owner = names[int(variables["prototype_state"]["prototype_class"][j])]
            _show(ax, decoded[j], f"p{j} ({owner})")
            ax.set_xlabel(
                f"sim {sims[row, j]:.2f} × w {kernel[j, predicted]:.2f}\n= {contribution[j]:.2f}",
                fontsize=7,
            )
        fig.suptitle(
            f"image {n}: predicted {names[predicted]} (logit {logits[row, predicted]:.2f}), "
            f"true {names[int(batch['label'][row])]}; decoded prototypes",
            fontsize=9,
        )
        fig.tight_layout()
        _save(fig, out / f"image_{n:03d}" / "decoded_prototypes.png")
        records.append(
            {
                "index": int(n),
                "prototypes": [
                    {
                        "prototype": j,
                        "similarity": float(sims[row, j]),
                        "contribution": float(contribution[j]),
                    }
                    for j in top
                ],  # fmt: skip
            }
        )
    return records


OWN_EXPLANATIONS = {
    "protopnet": explain_protopnet,
    "protovae": explain_decoded,
    "pantypes": explain_decoded,
}


def resolve_target(spec: str, targets, images, predicted, num_prototypes: int | None):
    """(score function or None for `latent`, `[B]` indices or None, a description)."""
    import jax.numpy as jnp

    exported = ", ".join(sorted(targets))
    if spec in ("class_logit", "class_probability"):
        if spec not in targets:
            raise UsageError(f"This method exports no {spec} target; its targets: {exported}.")
        return targets[spec], jnp.asarray(predicted), f"{spec} of the predicted class"
    if spec == LATENT:
        return None, None, "the embedding"
    if spec.startswith("prototype:") or spec == "nearest_prototype":
        if "prototype_similarity" not in targets:
            raise UsageError(
                f"--target={spec} needs prototypes; this method's targets: {exported}."
            )
        score = targets["prototype_similarity"]
        if spec == "nearest_prototype":
            each = [jnp.full((len(images),), j) for j in range(num_prototypes)]
            sims = np.stack([np.asarray(score(images, js)) for js in each], axis=1)
            nearest = np.argmax(sims, axis=1)
            return score, jnp.asarray(nearest), "similarity to the nearest prototype"
        try:
            j = int(spec.split(":", 1)[1])
        except ValueError:
            j = -1
        if not 0 <= j < (num_prototypes or 0):
            raise UsageError(
                f"--target={spec}: J must be a prototype index in 0 … {(num_prototypes or 1) - 1}."
            )
        return score, jnp.full((len(images),), j), f"similarity to prototype {j}"
    raise UsageError(
        f"Unknown --target={spec}; use class_logit, class_probability, prototype:J, "
        "nearest_prototype or latent."
    )


def _explainers(target: str) -> list[str]:
    from protojax.explain import EXPLAINERS

    names = [name.strip() for name in FLAGS.explainers.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPLAINERS]
    if unknown or not names:
        raise UsageError(
            f"Unknown explainer '{unknown[0] if unknown else ''}' in --explainers; use names "
            f"among {', '.join(EXPLAINERS)}."
        )
    if target == LATENT:
        if FLAGS["explainers"].present and names != ["relax"]:
            raise UsageError("--target=latent is the embedding, which only RELAX explains; "
                             "pass --explainers=relax.")  # fmt: skip
        return ["relax"]
    return names


def write_run_report(workdir: pathlib.Path) -> pathlib.Path:
    """Rewrites DIR/report/ from the run's config, summary and figures."""
    from protojax.explain.report import write_report
    from protojax.train import workdir as wd

    config = json.loads((workdir / wd.CONFIG).read_text())
    summary_path = workdir / wd.SUMMARY
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    data = config.get("data", {})
    title = f"{config.get('method', 'run')} on {data.get('name', '?')}: {workdir.resolve().name}"
    return write_report(workdir, title=title, config=config, summary=summary)


def main(argv: list[str]) -> None:
    FLAGS([__name__, *argv])
    if not FLAGS.workdir:
        raise UsageError("Pass --workdir=DIR, the work directory of a training run.")
    if FLAGS.num_images < 1 or FLAGS.top_k < 1 or FLAGS.batch_size < 1:
        raise UsageError("--num_images, --top_k and --batch_size must be ≥ 1.")
    explainers = _explainers(FLAGS.target)
    import jax
    import jax.numpy as jnp

    import protojax
    from protojax.data import load_dataset
    from protojax.data.pipeline import normalize
    from protojax.explain import explain_all
    from protojax.explain.grid import comparison_grid, explanation_figure

    workdir = pathlib.Path(FLAGS.workdir)
    method, variables, config = protojax.load_workdir(workdir)
    dataset = load_dataset(config.data)
    if FLAGS.split not in dataset.splits:
        raise UsageError(f"--split={FLAGS.split} is not a split of this dataset; use one of "
                         f"{', '.join(dataset.splits)}.")  # fmt: skip
    split = dataset.split(FLAGS.split)
    chosen = np.arange(min(FLAGS.num_images, len(split)))
    batch = {**split.get_batch(chosen), "index": chosen}
    images = jnp.asarray(normalize(batch["image"], config.data.normalization))
    names = dataset.class_names
    targets = method.targets(variables)
    probabilities = np.asarray(jax.nn.softmax(method.predict(variables, images), axis=-1))
    predicted = probabilities.argmax(axis=1)
    score_fn, indices, described = resolve_target(
        FLAGS.target, targets, images, predicted, getattr(method, "num_prototypes", None)
    )
    embed_fn = targets.get("embedding", jax.tree_util.Partial(method.embed, variables))
    options = {"gradcam": {"layer": FLAGS.gradcam_layer}} if FLAGS.gradcam_layer else None
    try:
        result = explain_all(
            score_fn, images, rng=jax.random.key(FLAGS.seed), targets=indices,
            embed_fn=embed_fn, explainers=explainers, options=options,
            batch_size=FLAGS.batch_size,
        )  # fmt: skip
    except ValueError as error:  # a Grad-CAM layer that is not there, say
        raise UsageError(str(error)) from None
    for name, count in result.nonfinite.items():
        print(f"warning: {name}'s maps hold {count} NaN or infinite values; their figures say "
              "so instead of drawing them.", file=sys.stderr)  # fmt: skip

    out = workdir / "explanations" / FLAGS.split
    out.mkdir(parents=True, exist_ok=True)
    labels = [names[int(y)] for y in batch["label"]]
    guesses = [names[int(p)] for p in predicted]
    notes = [f"p={probabilities[i, p]:.2f}" for i, p in enumerate(predicted)]
    fig = comparison_grid(
        batch["image"], result.maps, predictions=guesses, labels=labels, notes=notes,
        title=f"{config.method}, {FLAGS.split} split: {described}",
    )  # fmt: skip
    paths = [_save(fig, out / "grid.png")]
    for row, n in enumerate(chosen):
        folder = out / f"image_{n:03d}"
        for name, maps in result.maps.items():
            shown = {name: maps[row]}
            if name == "relax":
                shown["relax uncertainty"] = result.uncertainty[row]
            what = "the embedding" if name == "relax" else described
            fig = explanation_figure(
                batch["image"][row], shown,
                title=f"{name} of {what}: predicted {guesses[row]}, label {labels[row]}",
            )  # fmt: skip
            paths.append(_save(fig, folder / f"{name}.png"))
        facts = {
            "split": FLAGS.split,
            "index": int(n),
            "label": labels[row],
            "prediction": guesses[row],
            "probability": round(float(probabilities[row, predicted[row]]), 4),
            "target": FLAGS.target,
        }
        (folder / "image.json").write_text(json.dumps(facts, indent=1) + "\n")

    own = OWN_EXPLANATIONS.get(config.method)
    records = own(method, variables, config, dataset, batch, out, top_k=FLAGS.top_k) if own else []
    record = {
        "target": FLAGS.target,
        "explainers": explainers,
        "settings": result.settings,
        "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
        "nonfinite": result.nonfinite,
        "images": [int(n) for n in chosen],
        "own_explanation": records,
    }
    (out / "explanations.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    index = write_run_report(workdir)
    print(f"Wrote the grid and {len(paths) - 1} figures under {out}; report: {index}")


if __name__ == "__main__":
    cli.run_launcher(main)
