"""Explains a trained model's predictions with every explainer, beside its own explanation.

  python -m experiments.explain --workdir=DIR [--explainers=saliency,smoothgrad,...]
      [--num_images=8] [--target=class_logit] [--split=test] [--batch_size=256] [--out=DIR]
      [--prp_composite=prp_zplus]

Explainers (`--explainers`, comma-separated, in the grid's column order; default: every one
that applies): saliency, smoothgrad, integrated_gradients, gradcam, occlusion, rise, relax,
lrp, and prp for methods that export a `prp` target (ProtoPNet, ProtoVAE, Pantypes, KMEx).

Targets (`--target`), each a score the method exports in `targets()`:
- `class_logit` (default) or `class_probability`: of each image's predicted class;
- `prototype:J`: prototype J's similarity;
- `nearest_prototype`: the similarity to each image's most similar prototype;
- `latent`: the embedding, which only RELAX explains (RELAX always explains the embedding).
PRP explains prototype J for `prototype:J`, and otherwise each image's most similar prototype
(of its predicted class, for the class targets), with the LRP composite `--prp_composite`:
`prp_zplus` (default: the official rules with z⁺ for Dense layers too) or `prp` (the official
rules); they differ on encoders with Dense layers (ProtoVAE, Pantypes), see docs/fidelity.md.

The explainers see images in [0, 1] (the loaded run normalises inside, see
`protojax.load_workdir`): integrated gradients' baseline, occlusion's fill and the masks of
RISE and RELAX are black.

It writes, under DIR/explanations/SPLIT/ (or --out, which must be new, empty or an earlier
output of this launcher), replaced whole, so that only this launch's files are there:
- `grid.png`: rows are images (with prediction and label), columns are explainers;
- `image_NNN/EXPLAINER.png`: one figure per image and explainer, with its colour bar, and
  `image_NNN/image.json`, the image's prediction, label, probability and explained score;
- the method's own explanation beside them, from its module's `own_explanation` hook: for
  example ProtoPNet's "this looks like that" (`image_NNN/this_looks_like_that.png` and the
  class galleries), ProtoVAE's and Pantypes' decoded prototypes with the image's
  similarities, KMEx's nearest centroids, FLINT's most relevant attributes;
- `posthoc.json`: the settings, timings and the figures written.

Then it rewrites the run's report, DIR/report/index.html (`protojax.runs.write_run_report`).
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
    "explainers", "", "Comma-separated explainers, in the grid's column order (default: all)."
)
flags.DEFINE_integer("num_images", 8, "Images of the split to explain (its first ones).")
flags.DEFINE_string("target", "class_logit", "Score explained (see above).")
flags.DEFINE_string("split", "test", "Split whose images are explained.")
flags.DEFINE_integer("batch_size", 256, "Perturbed images an explainer evaluates at once.")
flags.DEFINE_string("gradcam_layer", "", "Module path Grad-CAM explains (default: the backbone).")
flags.DEFINE_integer("seed", 0, "Seed of SmoothGrad's noise and the RISE and RELAX masks.")
flags.DEFINE_string("out", "", "Output folder (default: WORKDIR/explanations/SPLIT).")
flags.DEFINE_string("prp_composite", cli.PRP_COMPOSITE, cli.PRP_COMPOSITE_HELP)

LATENT = "latent"
CLASS_TARGETS = ("class_logit", "class_probability")


def _similarities(score, images, num_prototypes: int) -> np.ndarray:
    """`[B, P]` each image's similarity to each prototype, in one compiled loop."""
    import jax
    import jax.numpy as jnp

    @jax.jit
    def run(score, images):
        each = lambda j: score(images, jnp.full((images.shape[0],), j))  # noqa: E731
        return jax.lax.map(each, jnp.arange(num_prototypes)).T

    return np.asarray(run(score, images))


def resolve_target(spec: str, targets, images, predicted, prototype_class):
    """(score function or None for `latent`, `[B]` indices or None, a description, `[B]` the
    prototype PRP explains or None).

    `prototype_class`: `[P]` each prototype's class, or None for a model without prototypes.
    """
    exported = ", ".join(sorted(targets))
    has_prototypes = "prototype_similarity" in targets and prototype_class is not None
    sims = None
    if has_prototypes and ("prp" in targets or spec == "nearest_prototype"):
        sims = _similarities(targets["prototype_similarity"], images, len(prototype_class))
    nearest = None if sims is None else np.argmax(sims, axis=1)
    if spec in CLASS_TARGETS:
        if spec not in targets:
            raise UsageError(f"This method exports no {spec} target; its targets: {exported}.")
        if sims is not None:  # each image's most similar prototype of its predicted class
            own = np.asarray(prototype_class)[None, :] == np.asarray(predicted)[:, None]
            nearest = np.argmax(np.where(own, sims, -np.inf), axis=1)
        return targets[spec], np.asarray(predicted), f"{spec} of the predicted class", nearest
    if spec == LATENT:
        return None, None, "the embedding", nearest
    if spec.startswith("prototype:") or spec == "nearest_prototype":
        if not has_prototypes:
            raise UsageError(
                f"--target={spec} needs prototypes; this method's targets: {exported}."
            )
        score = targets["prototype_similarity"]
        if spec == "nearest_prototype":
            return score, nearest, "similarity to the nearest prototype", nearest
        count = len(prototype_class)
        try:
            j = int(spec.split(":", 1)[1])
        except ValueError:
            j = -1
        if not 0 <= j < count:
            raise UsageError(f"--target={spec}: J must be a prototype index in 0 … {count - 1}.")
        chosen = np.full((len(images),), j)
        return score, chosen, f"similarity to prototype {j}", chosen
    raise UsageError(
        f"Unknown --target={spec}; use class_logit, class_probability, prototype:J, "
        "nearest_prototype or latent."
    )


def prototype_classes(variables):
    """`[P]` each prototype's class, or None for a model without prototypes. KMEx's centroids
    come first: a KMEx run also holds its source's own prototypes."""
    from protojax.methods.kmex import STATE

    for collection in (STATE, "prototype_state"):
        if "prototype_class" in variables.get(collection, {}):
            return variables[collection]["prototype_class"]
    return None


def choose_explainers(flag: str, target: str, targets=None) -> list[str]:
    """The explainers to run: the flag's, checked, or every one that applies. `targets`: the
    method's, or None to check the flag alone (before the run loads)."""
    from protojax.explain import EXPLAINERS

    if target == LATENT:
        if flag and flag.replace(" ", "") != "relax":
            raise UsageError(
                "--target=latent is the embedding, which only RELAX explains; pass "
                "--explainers=relax."
            )
        return ["relax"]
    if not flag:
        return [name for name in EXPLAINERS if name != "prp" or "prp" in (targets or ("prp",))]
    names = cli.explainer_names(flag)
    if "prp" in names and targets is not None and "prp" not in targets:
        raise UsageError(
            "PRP explains prototypes, and this method exports no prp target; drop prp from "
            "--explainers."
        )
    return names


def main(argv: list[str]) -> None:
    if any(cli.parse_flags(argv)):
        raise UsageError(
            "experiments.explain reads the run's config from --workdir; drop --config."
        )
    if not FLAGS.workdir:
        raise UsageError("Pass --workdir=DIR, the work directory of a training run.")
    if FLAGS.num_images < 1 or FLAGS.batch_size < 1:
        raise UsageError("--num_images and --batch_size must be ≥ 1.")
    choose_explainers(FLAGS.explainers, FLAGS.target)
    cli.check_prp_composite(FLAGS.prp_composite)
    import jax

    import protojax
    from protojax.data import load_dataset
    from protojax.explain import explain_all
    from protojax.explain.figures import save
    from protojax.explain.grid import comparison_grid, explanation_figure
    from protojax.methods import method_module
    from protojax.runs import write_run_report

    workdir = pathlib.Path(FLAGS.workdir)
    method, variables, config = protojax.load_workdir(workdir)
    dataset = load_dataset(config.data)
    if FLAGS.split not in dataset.splits:
        raise UsageError(f"--split={FLAGS.split} is not a split of this dataset; use one of "
                         f"{', '.join(dataset.splits)}.")  # fmt: skip
    split = dataset.split(FLAGS.split)
    chosen = np.arange(min(FLAGS.num_images, len(split)))
    batch = split.get_batch(chosen)
    images = jax.numpy.asarray(batch["image"])  # in [0, 1]: the loaded method normalises
    names = dataset.class_names
    targets = method.targets(variables)
    explainers = choose_explainers(FLAGS.explainers, FLAGS.target, targets)
    probabilities = np.asarray(jax.nn.softmax(method.predict(variables, images), axis=-1))
    predicted = probabilities.argmax(axis=1)
    prototype_class = prototype_classes(variables)
    score_fn, indices, described, prp_prototypes = resolve_target(
        FLAGS.target, targets, images, predicted, prototype_class
    )
    embed_fn = targets.get("embedding", jax.tree_util.Partial(method.embed, variables))
    options = {"gradcam": {"layer": FLAGS.gradcam_layer}} if FLAGS.gradcam_layer else {}
    if "prp" in explainers:
        options["prp"] = cli.prp_options(
            FLAGS.prp_composite, getattr(method, "normalize", None), images.shape[-1]
        )
    try:
        result = explain_all(
            score_fn, images, rng=jax.random.key(FLAGS.seed), targets=indices,
            embed_fn=embed_fn, prp_fn=targets.get("prp"), prp_targets=prp_prototypes,
            explainers=explainers, options=options, batch_size=FLAGS.batch_size,
        )  # fmt: skip
    except ValueError as error:  # a Grad-CAM layer that is not there, say
        raise UsageError(str(error)) from None
    for name, count in result.nonfinite.items():
        print(f"warning: {name}'s maps hold {count} NaN or infinite values; their figures say "
              "so instead of drawing them.", file=sys.stderr)  # fmt: skip

    labels = [names[int(y)] for y in batch["label"]]
    guesses = [names[int(p)] for p in predicted]
    hook = getattr(method_module(config.method), "own_explanation", None)
    out = pathlib.Path(FLAGS.out) if FLAGS.out else workdir / "explanations" / FLAGS.split
    # PRP's column and figures name the composite that made them.
    titles = {name: name for name in result.maps}
    if "prp" in titles:
        titles["prp"] = f"prp ({FLAGS.prp_composite})"
    with cli.replaced_folder(out, owned=not FLAGS.out) as staging:
        fig = comparison_grid(
            batch["image"], {titles[name]: m for name, m in result.maps.items()},
            predictions=guesses, labels=labels,
            notes=[f"p={probabilities[i, p]:.2f}" for i, p in enumerate(predicted)],
            title=f"{config.method}, {FLAGS.split} split: {described}",
        )  # fmt: skip
        paths = [save(fig, staging / "grid.png")]
        for row, n in enumerate(chosen):
            folder = staging / f"image_{n:03d}"
            for name, maps in result.maps.items():
                shown = {titles[name]: maps[row]}
                if name == "relax":
                    shown["relax uncertainty"] = result.uncertainty[row]
                what = {"relax": "the embedding"}.get(name, described)
                if name == "prp":
                    what = f"prototype {int(prp_prototypes[row])}"
                heading = f"{titles[name]} of {what}: predicted {guesses[row]}, label {labels[row]}"
                fig = explanation_figure(batch["image"][row], shown, title=heading)
                paths.append(save(fig, folder / f"{name}.png"))
            facts = {
                "split": FLAGS.split,
                "index": int(n),
                "label": labels[row],
                "prediction": guesses[row],
                "probability": round(float(probabilities[row, predicted[row]]), 4),
                "target": described,
            }
            if prp_prototypes is not None and "prp" in result.maps:
                facts["prp_prototype"] = int(prp_prototypes[row])
            (folder / "image.json").write_text(json.dumps(facts, indent=1) + "\n")
        own = []
        if hook is not None:
            trained = getattr(method, "trained", method)  # takes normalised images
            own = hook(trained, variables, config, dataset, split=FLAGS.split, indices=chosen,
                       out=staging)  # fmt: skip
        record = {
            "target": FLAGS.target,
            "explainers": explainers,
            "settings": result.settings,
            "seconds": {k: round(v, 2) for k, v in result.seconds.items()},
            "nonfinite": result.nonfinite,
            "images": [int(n) for n in chosen],
            "figures": [p.relative_to(staging).as_posix() for p in paths],
            "own_explanation": [pathlib.Path(p).relative_to(staging).as_posix() for p in own],
        }
        (staging / "posthoc.json").write_text(json.dumps(record, indent=1, default=str) + "\n")
    index = write_run_report(workdir)
    print(f"Wrote the grid, {len(paths) - 1} explainer figures and {len(own)} of the method's "
          f"own under {out}; report: {index}")  # fmt: skip


if __name__ == "__main__":
    cli.run_launcher(main)
