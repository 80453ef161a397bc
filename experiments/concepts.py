"""Concept maps of a trained model's images: k-means on its backbone's activations (NAVE, NAS).

  python -m experiments.concepts --workdir=DIR --layers=stage1,stage2 [--k=3,5,8]
      [--num_images=8] [--split=test] [--measure_images=0] [--out=DIR/concepts]

Each image's activations at `--layers` (names of the run's backbone, as `return_layers`
takes them) are resized bilinearly to the finest layer's grid, L2-normalised per pixel and
layer, concatenated, and clustered per image into k concepts
(`protojax.explain.concepts.concept_maps`). It writes, under the output folder:
- `concepts.png`: one row per image, the image then its concept map for each k, one column
  per k;
- `concepts.npz`: the label maps `labels_k{K}` `[N, H, W]` and the images' `indices`.

With `--measure_images=N` on a split that has object masks and boxes (the shapes set), it
also measures on its first N images and writes `measures.json`:
- `best_segment_iou[k]`: the mean IoU of each image's best-matching concept with its mask;
- `max_box_accuracy`: MaxBoxAcc at IoU 0.3, 0.5 and 0.7 (`protojax.metrics.max_box_accuracy`,
  1000 CAM thresholds) of Grad-CAM at the backbone's last map for the true class, alone
  (`gradcam`) and averaged within each image's concepts (`superpixel_k{K}`, NAS's
  superpixelification).

The run's method must have a `backbone` (the black box, ProtoPNet); Grad-CAM needs its
`features` and `head` targets.
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
flags.DEFINE_list("layers", None, "Backbone layers whose activations are clustered.")
flags.DEFINE_list("k", ["5"], "Concepts per image; several values give one column each.")
flags.DEFINE_integer("num_images", 8, "Images drawn (the split's first ones).")
flags.DEFINE_string("split", "test", "Split whose images are segmented.")
flags.DEFINE_integer("measure_images", 0, "Images measured against the masks (0: none).")
flags.DEFINE_integer("seed", 0, "Seed of the k-means.")
flags.DEFINE_string("out", "", "Output directory (default: WORKDIR/concepts).")


def backbone_features(method, variables, config, layers: tuple[str, ...]):
    """`features(images [B, H, W, C] in [0, 1]) -> {layer: [B, h, w, c]}` from the run's
    backbone, in inference mode, normalised as the run trains."""
    import jax

    from protojax.data.pipeline import normalize
    from protojax.nn import backbone_by_name

    if "backbone" not in variables["params"] or "backbone" not in config.model:
        raise UsageError(
            f"The {config.method} run has no backbone to read layers from; use a black-box or "
            "ProtoPNet run."
        )
    module = backbone_by_name(config.model.backbone, stem=config.model.stem, return_layers=layers)
    scoped = {name: tree["backbone"] for name, tree in variables.items() if "backbone" in tree}

    @jax.jit
    def features(images):
        inputs = normalize(images, config.data.normalization)
        return module.apply(scoped, inputs, train=False)[1]

    return features


def gradcam_maps(method, variables, config, images, classes):
    """Grad-CAM `[B, H, W]` at the backbone's last map for `classes`, images in [0, 1]."""
    import jax.numpy as jnp

    from protojax.data.pipeline import normalize
    from protojax.explain.gradcam import gradcam

    trained = getattr(method, "trained", method)  # targets on normalised images
    targets = trained.targets(variables)
    if "features" not in targets or "head" not in targets:
        raise UsageError(f"The {config.method} run has no features/head targets for Grad-CAM.")
    inputs = jnp.asarray(normalize(images, config.data.normalization))
    return np.asarray(
        gradcam(targets["features"], targets["head"], inputs, targets=jnp.asarray(classes))
    )


def segment(features, images, ks, seed: int, batch_size: int = 64) -> dict[int, np.ndarray]:
    """Concept label maps `{k: [N, H, W]}` of images `[N, H, W, C]`."""
    import jax

    from protojax.explain.concepts import concept_maps

    out = {}
    for k in ks:
        parts = []
        for start in range(0, len(images), batch_size):
            rng = jax.random.fold_in(jax.random.key(seed), start)
            batch = images[start : start + batch_size]
            parts.append(np.asarray(concept_maps(features, batch, k=k, rng=rng).labels))
        out[k] = np.concatenate(parts)
    return out


def measure(method, variables, config, split, features, ks, count: int, seed: int) -> dict:
    """`best_segment_iou` and `max_box_accuracy` on the first `count` images of `split`."""
    from protojax.explain.concepts import best_segment_iou, superpixelify
    from protojax.metrics import max_box_accuracy

    raw = split.get_batch(np.arange(min(count, len(split))))
    if "mask" not in raw or "box" not in raw:
        raise UsageError("--measure_images needs a split with object masks and boxes (shapes).")
    labels = segment(features, raw["image"], ks, seed)
    cams = np.concatenate(
        [
            gradcam_maps(
                method, variables, config, raw["image"][s : s + 64], raw["label"][s : s + 64]
            )
            for s in range(0, len(raw["image"]), 64)
        ]
    )
    boxes = raw["box"][:, None, :]
    maps = {"gradcam": cams}
    maps |= {f"superpixel_k{k}": np.asarray(superpixelify(cams, labels[k])) for k in ks}
    accuracy = {}
    for name, saliency in maps.items():
        result = max_box_accuracy(saliency, boxes)
        accuracy[name] = {
            f"{t:.1f}": float(a)
            for t, a in zip(np.asarray(result.iou_thresholds), np.asarray(result.max_box_acc))
        }
    return {
        "images": int(len(raw["image"])),
        "best_segment_iou": {
            str(k): float(best_segment_iou(labels[k], raw["mask"]).mean()) for k in ks
        },
        "max_box_accuracy": accuracy,
    }


def main(argv: list[str]) -> None:
    FLAGS([__name__, *argv])
    if not FLAGS.workdir:
        raise UsageError("Pass --workdir=DIR, the work directory of a training run.")
    if not FLAGS.layers:
        raise UsageError("Pass --layers=NAME[,NAME...], backbone layers (e.g. stage1,stage2).")
    try:
        ks = sorted({int(k) for k in FLAGS.k})
    except ValueError:
        raise UsageError(f"--k takes integers, got {','.join(FLAGS.k)}.") from None
    if ks[0] < 2 or FLAGS.num_images < 1 or FLAGS.measure_images < 0:
        raise UsageError("--k must be ≥ 2, --num_images ≥ 1 and --measure_images ≥ 0.")
    import protojax
    from protojax.data import load_dataset
    from protojax.explain.concepts import concept_figure
    from protojax.explain.figures import pyplot

    workdir = pathlib.Path(FLAGS.workdir)
    method, variables, config = protojax.load_workdir(workdir)
    dataset = load_dataset(config.data)
    split = dataset.split(FLAGS.split)
    features = backbone_features(method, variables, config, tuple(FLAGS.layers))
    indices = np.arange(min(FLAGS.num_images, len(split)))
    raw = split.get_batch(indices)
    labels = segment(features, raw["image"], ks, FLAGS.seed)
    measures = None
    if FLAGS.measure_images:
        measures = measure(
            method, variables, config, split, features, ks, FLAGS.measure_images, FLAGS.seed
        )
    out = pathlib.Path(FLAGS.out) if FLAGS.out else workdir / "concepts"
    with cli.replaced_folder(out, owned=not FLAGS.out) as staging:
        names = dataset.class_names
        titles = [f"{FLAGS.split} {i}: {names[int(c)]}" for i, c in zip(indices, raw["label"])]
        fig = concept_figure(raw["image"], labels, titles=titles)
        fig.savefig(staging / "concepts.png", dpi=110)
        pyplot().close(fig)
        np.savez_compressed(
            staging / "concepts.npz", indices=indices, **{f"labels_k{k}": labels[k] for k in ks}
        )
        if measures is not None:
            (staging / "measures.json").write_text(json.dumps(measures, indent=1) + "\n")
    print(f"Wrote concept maps of {len(indices)} images under {out}.")
    if measures is not None:
        print(json.dumps(measures))


if __name__ == "__main__":
    cli.run_launcher(main)
