"""Explains a trained model's predictions from its work directory.

  python -m experiments.explain --workdir=DIR [--num_images=N] [--top_k=3] [--split=test]

For ProtoPNet it writes, under DIR/explanations/:
- `image_NNN.png`, one per explained image ("this looks like that"): the image with its
  predicted and true class and the predicted logit, then, for each of the `top_k` prototypes
  that add most to the predicted logit, the prototype's activation on the image (overlay and
  its 95th-percentile box), the prototype's source image with its box, the source patch, and
  the similarity, the last-layer weight to the predicted class and their product, the
  contribution;
- `gallery/class_KKK.png`, each class's prototypes: source patch and source image with box;
- `explanations.json`, the numbers behind the figures.

The model must have been pushed (its prototypes are training patches). The data is loaded
from the run's `config.data`. Other methods' runs stop with exit code 2 before their
checkpoint is read (ProtoVAE and Pantypes runs write their figures while training).
"""

from __future__ import annotations

import json
import pathlib

import numpy as np
from absl import flags

from experiments import cli
from protojax.errors import UsageError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Work directory of a training run.")
flags.DEFINE_integer("num_images", 8, "Images of the split to explain (its first ones).")
flags.DEFINE_integer("top_k", 3, "Prototypes shown per image.")
flags.DEFINE_string("split", "test", "Split whose images are explained.")
flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/explanations).")


def explain_protopnet(
    method, variables, config, dataset, out: pathlib.Path, *, num_images: int, top_k: int, split
) -> list[pathlib.Path]:
    """Writes the per-image figures, the class galleries and explanations.json; returns the
    figure paths."""
    from protojax.data.pipeline import normalize
    from protojax.explain import figures
    from protojax.explain.prototypes import (
        high_activation_box,
        top_contributions,
        upsample_activation,
    )

    state = {k: np.asarray(v) for k, v in variables["prototype_state"].items()}
    if not np.any(state["source_index"] >= 0):
        raise UsageError(
            "This run has not pushed its prototypes yet, so they are not training patches; "
            "explain a run that has passed its first push epoch."
        )
    names = dataset.class_names
    batch_size = max(1, min(config.data.eval_batch_size, 64))
    sources = method.prototype_sources(variables, dataset.split("train"), batch_size=batch_size)
    kernel = np.asarray(variables["params"]["last_layer"]["kernel"])  # [P, K]
    out.mkdir(parents=True, exist_ok=True)
    paths, records = [], []

    def save(fig, path: pathlib.Path) -> None:
        fig.savefig(path, dpi=110)
        figures.pyplot().close(fig)
        paths.append(path)

    split_data = dataset.split(split)
    chosen = np.arange(min(num_images, len(split_data)))
    for start in range(0, len(chosen), batch_size):
        raw = split_data.get_batch(chosen[start : start + batch_size])
        result = method.activations(variables, normalize(raw["image"], config.data.normalization))
        logits, sims = np.asarray(result.logits), np.asarray(result.similarities)
        maps = np.asarray(result.similarity_maps)
        for row in range(len(raw["image"])):
            n, label = int(chosen[start + row]), int(raw["label"][row])
            predicted = int(np.argmax(logits[row]))
            top = top_contributions(sims[row], kernel[:, predicted], state["active"], k=top_k)
            size = raw["image"].shape[1:3]
            entry = {
                "index": n,
                "label": label,
                "predicted": predicted,
                "logit": float(logits[row, predicted]),
                "prototypes": [],
            }
            evidence = []
            for j, similarity, weight, contribution in zip(*top):
                j = int(j)
                activation = np.asarray(upsample_activation(maps[row, :, :, j], size))
                box = high_activation_box(activation)
                source = sources.row(j)
                text = (
                    f"prototype {j} ({names[int(state['prototype_class'][j])]})\n"
                    f"similarity {similarity:.3f}\n"
                    f"weight to {names[predicted]}: {weight:.3f}\n"
                    f"contribution {contribution:.3f}"
                )
                evidence.append(
                    figures.Evidence(
                        activation,
                        box,
                        sources.patch(j),
                        sources.images[source],
                        sources.boxes[source],
                        text,
                    )
                )
                entry["prototypes"].append(
                    {
                        "prototype": j,
                        "class": int(state["prototype_class"][j]),
                        "similarity": float(similarity),
                        "weight": float(weight),
                        "contribution": float(contribution),
                        "activation_box": [int(v) for v in box],
                    }
                )
            title = (
                f"{split} image {n}: predicted {names[predicted]} (logit "
                f"{logits[row, predicted]:.2f}), true {names[label]}"
            )
            fig = figures.this_looks_like_that(raw["image"][row], evidence, title=title)
            save(fig, out / f"image_{n:03d}.png")
            records.append(entry)

    gallery = out / "gallery"
    gallery.mkdir(exist_ok=True)
    per_class = method.prototypes_per_class
    for k in range(method.num_classes):
        ids = [j for j in range(k * per_class, (k + 1) * per_class) if j in sources.prototypes]
        if not ids:
            continue
        rows = [sources.row(j) for j in ids]
        fig = figures.class_gallery(
            [sources.patch(j) for j in ids],
            sources.images[rows],
            sources.boxes[rows],
            [f"p{j}" + ("" if state["active"][j] else " (pruned)") for j in ids],
            title=f"class {names[k]}: prototypes (patch above, source below)",
        )
        save(fig, gallery / f"class_{k:03d}.png")

    (out / "explanations.json").write_text(json.dumps({"images": records}, indent=1) + "\n")
    return paths


def _check_method(workdir: pathlib.Path) -> None:
    """Stops before any checkpoint is read when the run is not a ProtoPNet run."""
    from protojax.train.workdir import CONFIG, FIGURES

    path = workdir / CONFIG
    if not path.exists():  # load_workdir says what is missing
        return
    name = json.loads(path.read_text()).get("method")
    if name == "protopnet":
        return
    where = (
        f" (its decoded prototypes, reconstructions and latent PCA are in {workdir / FIGURES})"
        if name in ("protovae", "pantypes")
        else ""
    )
    raise UsageError(
        f"experiments.explain supports protopnet runs only; {workdir} is a {name} run{where}."
    )


def main(argv: list[str]) -> None:
    FLAGS([__name__, *argv])
    if not FLAGS.workdir:
        raise UsageError("Pass --workdir=DIR, the work directory of a training run.")
    if FLAGS.num_images < 0 or FLAGS.top_k < 1:
        raise UsageError("--num_images must be ≥ 0 and --top_k ≥ 1.")
    import protojax
    from protojax.data import load_dataset

    workdir = pathlib.Path(FLAGS.workdir)
    _check_method(workdir)
    method, variables, config = protojax.load_workdir(workdir)
    dataset = load_dataset(config.data)
    out = pathlib.Path(FLAGS.out) if FLAGS.out else workdir / "explanations"
    paths = explain_protopnet(
        method,
        variables,
        config,
        dataset,
        out,
        num_images=FLAGS.num_images,
        top_k=min(FLAGS.top_k, method.num_prototypes),
        split=FLAGS.split,
    )
    print(f"Wrote {len(paths)} figures under {out}.")


if __name__ == "__main__":
    cli.run_launcher(main)
