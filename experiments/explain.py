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

YELLOW = (1.0, 0.85, 0.0)


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


def _show(ax, image, title: str = "", box=None) -> None:
    """Shows an image (pixel-exact), with box (y0, x0, y1, x1) outlined on top of it."""
    from matplotlib.patches import Rectangle

    ax.imshow(np.clip(image, 0, 1), interpolation="nearest")
    if box is not None:
        y0, x0, y1, x1 = (int(v) for v in box)
        # Pixel i spans [i − 0.5, i + 0.5] in imshow's coordinates.
        ax.add_patch(Rectangle((x0 - 0.5, y0 - 0.5), x1 - x0, y1 - y0, fill=False, lw=2, ec=YELLOW))
    ax.set_xticks([])
    ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=8)


def explain_protopnet(
    method, variables, config, dataset, out: pathlib.Path, *, num_images: int, top_k: int, split
) -> list[pathlib.Path]:
    """Writes the per-image figures, the class galleries and explanations.json; returns the
    figure paths."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from protojax.data.pipeline import normalize
    from protojax.imaging import overlay_heatmap, to_rgb
    from protojax.prototypes.projection import high_activation_box, upsample_activation

    state = variables["prototype_state"]
    if not np.any(np.asarray(state["source_index"]) >= 0):
        raise UsageError(
            "This run has not pushed its prototypes yet, so they are not training patches; "
            "explain a run that has passed its first push epoch."
        )
    names = dataset.class_names
    batch_size = max(1, min(config.data.eval_batch_size, 64))
    views = _PrototypeViews(method, variables, config, dataset.split("train"), batch_size)
    kernel = np.asarray(variables["params"]["last_layer"]["kernel"])  # [P, K]
    active = np.asarray(state["active"])
    classes = np.asarray(state["prototype_class"])
    out.mkdir(parents=True, exist_ok=True)
    paths, records = [], []

    split_data = dataset.split(split)
    chosen = np.arange(min(num_images, len(split_data)))
    for start in range(0, len(chosen), batch_size):
        raw = split_data.get_batch(chosen[start : start + batch_size])
        images = normalize(raw["image"], config.data.normalization)
        result = method.activations(variables, images)
        logits, sims = np.asarray(result.logits), np.asarray(result.similarities)
        maps = np.asarray(result.similarity_maps)
        for row in range(len(images)):
            n = int(chosen[start + row])
            predicted = int(np.argmax(logits[row]))
            contribution = np.where(active, sims[row] * kernel[:, predicted], -np.inf)
            top = [int(j) for j in np.argsort(-contribution, kind="stable")[:top_k]]
            image = to_rgb(raw["image"][row])
            size = image.shape[:2]
            fig, axes = plt.subplots(
                len(top),
                5,
                figsize=(11, 2.3 * len(top) + 0.6),
                squeeze=False,
                gridspec_kw={"width_ratios": [1, 1, 1, 1, 1.4]},
            )
            fig.suptitle(
                f"{split} image {n}: predicted {names[predicted]} (logit "
                f"{logits[row, predicted]:.2f}), true {names[int(raw['label'][row])]}",
                fontsize=10,
            )
            entry = {
                "index": n,
                "label": int(raw["label"][row]),
                "predicted": predicted,
                "logit": float(logits[row, predicted]),
                "prototypes": [],
            }
            for r, j in enumerate(top):
                activation = np.asarray(upsample_activation(maps[row, :, :, j], size))
                box = high_activation_box(activation)
                weight = float(kernel[j, predicted])
                first = r == 0
                overlay = overlay_heatmap(image, activation)
                _show(axes[r, 0], image, "this image" if first else "", box)
                _show(axes[r, 1], overlay, "activation" if first else "", box)
                _show(axes[r, 2], views.patch(j), "looks like" if first else "")
                source_title = "prototype's source" if first else ""
                _show(axes[r, 3], views.source(j), source_title, views.boxes[j])
                axes[r, 4].axis("off")
                text = (
                    f"prototype {j} ({names[int(classes[j])]})\n"
                    f"similarity {sims[row, j]:.3f}\n"
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
            path = out / f"image_{n:03d}.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            paths.append(path)
            records.append(entry)

    gallery = out / "gallery"
    gallery.mkdir(exist_ok=True)
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
        path = gallery / f"class_{k:03d}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)

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
