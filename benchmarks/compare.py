"""protojax against PyTorch references, alternated in one process on the same machine.

    python benchmarks/compare.py [--only=protovae,protopnet_joint,...] [--repeats=3]
        [--device=cpu|gpu] [--precision=float32|bfloat16] [--tf32] [--out=FILE.jsonl]

For each measurement both sides are built and warmed up (protojax compiles), then timed
alternately, protojax then PyTorch, `--repeats` times (A B A B …), each turn `steps` calls;
a turn's load average (1 min) is recorded. One JSON line per measurement: the median
seconds per call of each side, rates, the ratio protojax rate / reference rate (> 1: protojax
faster), the load averages and the machine. Shapes, batch sizes and precision are equal on
both sides; data are synthetic.

The measurements (`--only` picks some):
- `protovae`: ProtoVAE's CIFAR-10 train step (official encoder/decoder, four losses), batch 128;
- `protopnet_joint`: ProtoPNet's joint step, ResNet-34 at 224, batch 16 (CPU) or 80 (GPU);
- `push`: ProtoPNet's push per batch at the same shapes (batch 16 on CPU, 75 on GPU);
- `blackbox`: the ResNet-18 black box's train step at CIFAR size, batch 128;
- `relax`: RELAX with 3,000 masks, 100 per batch, one 224 px image, ResNet-50 embedding;
- `integrated_gradients`: 50 steps (trapezoid), one 224 px image, ResNet-50 logit;
- `smoothgrad`: 50 samples, one 224 px image, ResNet-50 logit (Captum's NoiseTunnel);
- `kmeans`: a whole fit (k-means++ seeding, Lloyd to tol 1e-4, best of `--kmeans_n_init`
  seedings, 10 by default) against scikit-learn's KMeans, with both inertias; with one
  seeding the two inertias differ by the luck of the draw, the best of ten compares them;
- `resnet50_step` (not in the default list): the ResNet-50 black-box train step at 224 with
  its model FLOP utilisation against the measured matrix rate of the device (for GPUs).

The PyTorch side is `benchmarks/torch_refs.py` (torch, torchvision, captum). The protojax
train steps come from `protojax_train_step`, the one place that builds them.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from benchmarks.machine import cpu_model  # noqa: E402

DEFAULT = (
    "protovae",
    "protopnet_joint",
    "push",
    "blackbox",
    "relax",
    "integrated_gradients",
    "smoothgrad",
    "kmeans",
)


@dataclasses.dataclass
class Pair:
    """One measurement: two zero-argument callables that each run one unit of work to the
    end (synchronised), `items` images (or fits) per call, and what describes it."""

    name: str
    unit: str
    items: int
    protojax: Callable[[], object]
    reference: Callable[[], object]
    reference_name: str
    details: dict
    steps: int = 1
    after: Callable[[], dict] | None = None  # extra figures read after timing (inertia …)


# --- what is shared with the package (tested in tests/test_benchmarks_compare.py) ----------


def synthetic_batch(image_shape, num_classes: int, batch_size: int, seed: int = 0) -> dict:
    """A batch in the method protocol's layout, images uniform in [-1, 1]."""
    rng = np.random.default_rng(seed)
    return {
        "image": rng.uniform(-1, 1, (batch_size, *image_shape)).astype(np.float32),
        "label": rng.integers(0, num_classes, batch_size).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
        "valid": np.ones(batch_size, bool),
    }


def protojax_train_step(config, *, phase: str = ""):
    """`(step, state, batch, method)` for `config`'s phase (default the first that trains),
    at `config.data.batch_size` on a synthetic batch: `step(state) -> (state, metrics)` runs
    one compiled, donated train step as the engine does.

    Built with the engine's public `protojax.train.build_train_step`, as
    `experiments/benchmark.py` builds its step.
    """
    import jax

    from protojax.data import pipeline
    from protojax.data.specs import describe
    from protojax.methods import build_method
    from protojax.train import build_train_step, initial_state, make_data_mesh

    dataset = describe(config.data)
    method = build_method(config, dataset)
    mesh = make_data_mesh()
    state, plan = initial_state(method, config, dataset, mesh, steps_per_epoch=100)
    phases = [p for p in plan.phases if p.epochs > 0 and (not phase or p.name == phase)]
    if not phases:
        raise ValueError(f"No phase named {phase!r} trains in {config.method}.")
    batch = pipeline.to_global(
        synthetic_batch(dataset.image_shape, dataset.num_classes, config.data.batch_size), mesh
    )
    compiled = build_train_step(method, phases[0], plan, mesh, config).compile(state, batch)

    def step(state):
        new_state, metrics, _ = compiled(state, batch)
        return new_state, jax.block_until_ready(metrics)

    return step, state, batch, method


def alternate(sides: dict[str, Callable[[], object]], *, repeats: int, steps: int) -> dict:
    """Times the sides in turn, `repeats` rounds of `steps` calls each (A B A B …).

    Returns `{"seconds": {side: [wall s per call]}, "cpu_seconds": {side: [CPU s of this
    process per call, all threads]}, "load": [1-min load average after each round]}`.
    """
    seconds = {name: [] for name in sides}
    cpu_seconds = {name: [] for name in sides}
    load = []
    for _ in range(repeats):
        for name, fn in sides.items():
            for _ in range(steps):
                start, start_cpu = time.perf_counter(), time.process_time()
                fn()
                seconds[name].append(time.perf_counter() - start)
                cpu_seconds[name].append(time.process_time() - start_cpu)
        load.append(round(os.getloadavg()[0], 2))
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "load": load}


def summarize(seconds: dict[str, list[float]], items: int) -> dict:
    """Median seconds per call, rate (items / median s) per side, and protojax / reference."""
    out = {}
    for name, values in seconds.items():
        median = statistics.median(values)
        out[f"{name}_s_median"] = round(median, 4)
        out[f"{name}_s_all"] = [round(v, 4) for v in values]
        out[f"{name}_rate"] = round(items / median, 3)
    protojax, reference = (statistics.median(v) for v in seconds.values())
    out["ratio"] = round(reference / protojax, 3)
    return out


# --- the measurements ----------------------------------------------------------------------


class Context:
    """Device, precision and batch sizes of the run, and the torch side's device."""

    def __init__(self, args):
        import torch

        self.args = args
        self.gpu = args.device == "gpu"
        self.torch_device = torch.device("cuda" if self.gpu else "cpu")
        self.bf16 = args.precision == "bfloat16"
        self.autocast = torch.bfloat16 if self.bf16 else None

    def torch_images(self, batch):
        import torch

        images = torch.from_numpy(np.array(batch["image"])).permute(0, 3, 1, 2).contiguous()
        images = images.to(self.torch_device)
        if self.gpu and self.bf16:  # AMP's preferred layout
            images = images.contiguous(memory_format=torch.channels_last)
        return images

    def torch_labels(self, batch):
        import torch

        return torch.from_numpy(np.array(batch["label"])).long().to(self.torch_device)

    def module(self, model):
        import torch

        model = model.to(self.torch_device)
        if self.gpu and self.bf16:
            model = model.to(memory_format=torch.channels_last)
        return model

    def sync(self):
        import torch

        if self.gpu:
            torch.cuda.synchronize()


def _config(name: str, ctx: Context, **overrides):
    from protojax.config import load_config, set_value

    config = load_config(name)
    set_value(config, "train.precision", ctx.args.precision)
    for key, value in overrides.items():
        set_value(config, key, value)
    return config


def _train_pair(ctx, name, config, model, optimizer, loss_fn, *, phase="", details=None):
    from benchmarks import torch_refs

    step, state, batch, method = protojax_train_step(config, phase=phase)
    holder = {"state": state}

    def jax_side():
        holder["state"], _ = step(holder["state"])

    images, labels = ctx.torch_images(batch), ctx.torch_labels(batch)

    def torch_side():
        torch_refs.train_step(model, optimizer, loss_fn, images, labels, ctx.autocast)
        ctx.sync()

    batch_size = config.data.batch_size
    info = {"batch_size": batch_size, "image_shape": list(batch["image"].shape[1:])}
    return Pair(name, "images/s", batch_size, jax_side, torch_side, "torch", info | (details or {}))


def protovae(ctx):
    import torch

    from benchmarks import torch_refs

    config = _config("protovae_cifar", ctx)
    model = ctx.module(torch_refs.ProtoVAECifar()).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return _train_pair(ctx, "protovae", config, model, optimizer, torch_refs.protovae_loss)


def _protopnet_config(ctx, batch_size):
    return _config(
        "protopnet_cub", ctx, **{"data.batch_size": batch_size, "model.allow_random_init": True}
    )


def protopnet_joint(ctx):
    from benchmarks import torch_refs

    batch_size = ctx.args.protopnet_batch or (80 if ctx.gpu else 16)
    config = _protopnet_config(ctx, batch_size)
    model = ctx.module(torch_refs.ProtoPNet()).train()
    optimizer = torch_refs.protopnet_joint_optimizer(model)
    return _train_pair(
        ctx, "protopnet_joint", config, model, optimizer, torch_refs.protopnet_loss, phase="joint"
    )


def push(ctx):
    import jax

    from benchmarks import torch_refs
    from protojax.data import pipeline
    from protojax.data.specs import describe
    from protojax.methods import build_method
    from protojax.train.loop import make_data_mesh

    batch_size = ctx.args.push_batch or (75 if ctx.gpu else 16)
    config = _protopnet_config(ctx, batch_size)
    dataset = describe(config.data)
    method = build_method(config, dataset)
    raw = synthetic_batch(dataset.image_shape, dataset.num_classes, batch_size)
    mesh = make_data_mesh()
    batch = pipeline.to_global(raw, mesh)
    variables = jax.jit(method.init)(jax.random.key(0), batch)

    class OneBatchPass:  # the run context's ordered pass, over the one synthetic batch
        def __init__(self):
            self.mesh = mesh

        def reduce(self, fn, init, split="train", *, batch_size=None, indices=None):
            return fn(init, batch)

    def jax_side():  # the engine's push: the latent program, then the class-specific minimum
        jax.block_until_ready(method.project(variables, OneBatchPass()))

    model = ctx.module(torch_refs.ProtoPNet()).eval()
    images, labels = ctx.torch_images(raw), ctx.torch_labels(raw)

    def torch_side():
        state = torch_refs.PushState(model, ctx.torch_device)
        with torch_autocast(ctx):
            torch_refs.push_batch(model, state, images, labels)
        ctx.sync()

    predict = jax.jit(method.predict)

    def eval_rate():  # the push target on GPU: push at least as fast as evaluation
        jax.block_until_ready(predict(variables, batch["image"]))
        seconds = alternate(
            {"eval": lambda: jax.block_until_ready(predict(variables, batch["image"]))},
            repeats=3,
            steps=1,
        )["seconds"]["eval"]
        return {"protojax_eval_rate": round(batch_size / statistics.median(seconds), 3)}

    info = {"batch_size": batch_size, "image_shape": list(dataset.image_shape)}
    return Pair(
        "push", "images/s", batch_size, jax_side, torch_side, "torch", info, after=eval_rate
    )


def torch_autocast(ctx):
    import torch

    return torch.autocast(ctx.torch_device.type, dtype=ctx.autocast, enabled=ctx.bf16)


def blackbox(ctx):
    from benchmarks import torch_refs

    config = _config("blackbox_cifar", ctx)
    model = ctx.module(torch_refs.resnet_cifar()).train()
    return _train_pair(
        ctx, "blackbox", config, model, torch_refs.sgd(model), torch_refs.classification_loss
    )


def resnet50_step(ctx):
    """The black box's step with ResNet-50 (ImageNet stem) at 224: the bf16 MFU measurement."""
    import torch

    from benchmarks import torch_refs

    batch_size = ctx.args.resnet50_batch or (128 if ctx.gpu else 8)
    config = _config(
        "blackbox_cifar",
        ctx,
        **{
            "model.backbone": "resnet50",
            "model.stem": "imagenet",
            "data.image_size": 224,
            "data.batch_size": batch_size,
        },
    )
    model = ctx.module(torch_refs.torchvision().models.resnet50(num_classes=10)).train()
    pair = _train_pair(
        ctx, "resnet50_step", config, model, torch_refs.sgd(model), torch_refs.classification_loss
    )
    # Model FLOPs of one step: 3× the forward's multiply-adds ×2 (forward + two backward).
    forward_gflop = 4.09 * 2 * (224 / 224) ** 2  # torchvision ResNet-50: 4.09 GMACs at 224
    pair.details["model_tflop_per_step"] = round(3 * forward_gflop * batch_size / 1e3, 3)
    if ctx.gpu:
        pair.details["device_matrix_tflops"] = _matrix_rate(torch.bfloat16 if ctx.bf16 else None)
    return pair


def _matrix_rate(dtype) -> float:
    """The device's measured matrix rate (TFLOP/s): the best of 10 JAX 8192² matmuls."""
    import jax
    import jax.numpy as jnp

    n = 8192
    a = jnp.ones((n, n), jnp.bfloat16 if dtype is not None else jnp.float32)
    matmul = jax.jit(lambda x: x @ x)
    jax.block_until_ready(matmul(a))
    best = float("inf")
    for _ in range(10):
        start = time.perf_counter()
        jax.block_until_ready(matmul(a))
        best = min(best, time.perf_counter() - start)
    return round(2 * n**3 / best / 1e12, 1)


class _Classifier:
    """A ResNet-50 (protojax.nn) with global average pooling and a dense head of 1,000."""

    def __init__(self, seed=0):
        import flax.linen as nn
        import jax
        import jax.numpy as jnp

        from protojax.nn import backbone_by_name

        class Net(nn.Module):
            @nn.compact
            def __call__(self, x, embed_only=False):
                features = backbone_by_name("resnet50")(x).mean(axis=(1, 2))
                return features if embed_only else nn.Dense(1000)(features)

        self.net = Net()
        self.variables = jax.jit(self.net.init)(jax.random.key(seed), jnp.zeros((1, 224, 224, 3)))

    def embed_fn(self):
        import jax

        def embed(variables, images):
            return self.net.apply(variables, images, embed_only=True)

        return jax.tree_util.Partial(embed, self.variables)

    def score_fn(self):
        import jax
        import jax.numpy as jnp

        def score(variables, images, targets):
            logits = self.net.apply(variables, images)
            return jnp.take_along_axis(logits, targets[:, None], axis=1)[:, 0]

        return jax.tree_util.Partial(score, self.variables)


def _image(ctx):
    raw = synthetic_batch((224, 224, 3), 1000, 1, seed=1)
    return raw, ctx.torch_images(raw), ctx.torch_labels(raw)


def relax(ctx):
    import jax

    from benchmarks import torch_refs
    from protojax.explain import relax as relax_jax
    from protojax.explain import relax_masks

    num_masks, per_batch = ctx.args.relax_masks, 100
    raw, images, _ = _image(ctx)
    embed = _Classifier().embed_fn()
    image = jax.device_put(raw["image"])
    keys = iter(range(1 << 30))

    def jax_side():  # masks are drawn inside, as the official loop draws them per batch
        masks = relax_masks(jax.random.key(next(keys)), num_masks, 224)
        jax.block_until_ready(relax_jax(embed, image, masks, batch_size=per_batch))

    encoder = ctx.module(torch_refs.resnet50_embedding())

    def torch_side():
        with torch_autocast(ctx):
            torch_refs.relax(encoder, images, num_masks=num_masks, batch_size=per_batch)
        ctx.sync()

    info = {"masks": num_masks, "masks_per_batch": per_batch, "image_shape": [224, 224, 3]}
    return Pair("relax", "masks/s", num_masks, jax_side, torch_side, "torch loop", info)


def _gradient_pair(ctx, name, jax_explain, torch_explain, count):
    import jax

    raw, images, _ = _image(ctx)
    classifier = _Classifier()
    score = classifier.score_fn()
    image = jax.device_put(raw["image"])
    targets = jax.device_put(np.array([3], np.int32))
    model = ctx.module(_torch_classifier())
    batch = ctx.args.explain_batch or None

    def jax_side():
        jax.block_until_ready(jax_explain(score, image, targets, batch))

    def torch_side():
        with torch_autocast(ctx):
            torch_explain(model, images.clone().requires_grad_(False), 3, batch)
        ctx.sync()

    info = {"count": count, "batch_size": batch, "image_shape": [224, 224, 3]}
    return Pair(name, "images/s", 1, jax_side, torch_side, "captum", info)


def _torch_classifier():
    from benchmarks import torch_refs

    return torch_refs.resnet50_classifier()


def integrated_gradients(ctx):
    from benchmarks import torch_refs
    from protojax.explain import integrated_gradients as ig

    steps = ctx.args.ig_steps
    return _gradient_pair(
        ctx,
        "integrated_gradients",
        lambda f, x, t, b: ig(f, x, steps=steps, batch_size=b, targets=t),
        lambda m, x, t, b: torch_refs.integrated_gradients(m, x, t, steps=steps, batch_size=b),
        steps,
    )


def smoothgrad(ctx):
    import jax

    from benchmarks import torch_refs
    from protojax.explain import smoothgrad as sg

    samples = ctx.args.smoothgrad_samples
    return _gradient_pair(
        ctx,
        "smoothgrad",
        lambda f, x, t, b: sg(
            f, x, rng=jax.random.key(0), num_samples=samples, batch_size=b, targets=t
        ),
        lambda m, x, t, b: torch_refs.smoothgrad(m, x, t, samples=samples, batch_size=b),
        samples,
    )


def kmeans(ctx):
    import jax
    from sklearn.cluster import KMeans

    from protojax.prototypes.kmeans import kmeans as kmeans_jax

    n, d, k = ctx.args.kmeans_n, ctx.args.kmeans_d, ctx.args.kmeans_k
    n_init = ctx.args.kmeans_n_init
    rng = np.random.default_rng(0)
    # Embedding-like data: k Gaussian clusters of unequal spread around random centres.
    centres = rng.normal(size=(k, d)).astype(np.float32) * 2.0
    assignment = rng.integers(0, k, n)
    spread = rng.uniform(0.5, 1.5, k).astype(np.float32)[assignment, None]
    x = (centres[assignment] + spread * rng.normal(size=(n, d))).astype(np.float32)
    x_device = jax.device_put(x)
    fits = {}

    def jax_side():
        result = kmeans_jax(x_device, k, jax.random.key(0), n_init=n_init, tol=1e-4, max_iter=300)
        fits["protojax"] = jax.block_until_ready(result)

    def sklearn_side():
        fit = KMeans(k, init="k-means++", n_init=n_init, max_iter=300, tol=1e-4, random_state=0)
        fits["sklearn"] = fit.fit(x)

    def after():
        a, b = fits["protojax"], fits["sklearn"]
        return {
            "protojax_inertia": float(a.inertia),
            "reference_inertia": float(b.inertia_),
            "protojax_n_iter": int(a.n_iter),
            "reference_n_iter": int(b.n_iter_),
        }

    info = {"n": n, "d": d, "k": k, "tol": 1e-4, "n_init": n_init}
    return Pair("kmeans", "fits/s", 1, jax_side, sklearn_side, "scikit-learn", info, after=after)


BUILDERS = {
    f.__name__: f
    for f in (
        protovae,
        protopnet_joint,
        push,
        blackbox,
        relax,
        integrated_gradients,
        smoothgrad,
        kmeans,
        resnet50_step,
    )
}


# --- driver --------------------------------------------------------------------------------


def machine() -> dict:
    import jax
    import torch

    info = {
        "cpu": cpu_model(),
        "nproc": len(os.sched_getaffinity(0)),
        "jax": jax.__version__,
        "jax_device": jax.devices()[0].device_kind,
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "onednn_max_cpu_isa": os.environ.get("ONEDNN_MAX_CPU_ISA", ""),
    }
    if torch.cuda.is_available():
        info["torch_device"] = torch.cuda.get_device_name()
    return info


def measure(pair: Pair, *, repeats: int, warmup: int) -> dict:
    start = time.perf_counter()
    pair.protojax()  # compiles
    first_call = time.perf_counter() - start
    for _ in range(warmup):
        pair.protojax()
    for _ in range(warmup + 1):
        pair.reference()
    timing = alternate(
        {"protojax": pair.protojax, "reference": pair.reference},
        repeats=repeats,
        steps=pair.steps,
    )
    line = {
        "measurement": pair.name,
        "unit": pair.unit,
        "reference": pair.reference_name,
        **pair.details,
        **summarize(timing["seconds"], pair.items),
        **{
            f"{side}_cpu_s_median": round(statistics.median(values), 4)
            for side, values in timing["cpu_seconds"].items()
        },
        "protojax_first_call_s": round(first_call, 2),
        "load_1min": timing["load"],
    }
    if pair.after is not None:
        line.update(pair.after())
    return line


def table(lines: list[dict]) -> str:
    """Markdown rows for RESULTS.md from compare.py's JSON lines."""
    rows = [
        "| measurement | shape | device | precision | protojax | reference | ratio | load |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for line in lines:
        size = {k: line[k] for k in ("batch_size", "masks", "count", "n", "d", "k") if k in line}
        shape = ", ".join(f"{k} {v}" for k, v in size.items() if v is not None)
        unit = line["unit"]
        rows.append(
            f"| {line['measurement']} | {shape} | {line['device']} | {line['precision']}"
            f"{' TF32' if line.get('tf32') else ''} | {line['protojax_rate']:.3g} {unit} | "
            f"{line['reference_rate']:.3g} {unit} ({line['reference']}) | "
            f"**{line['ratio']:.2f}×** | {min(line['load_1min'])}–{max(line['load_1min'])} |"
        )
    return "\n".join(rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(DEFAULT), help="comma-separated names")
    parser.add_argument("--repeats", type=int, default=3, help="alternated rounds per side")
    parser.add_argument("--steps", type=int, default=0, help="calls per round (0: each's own)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--device", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--precision", choices=("float32", "bfloat16"), default="float32")
    parser.add_argument("--tf32", action="store_true", help="allow TF32 on both sides (GPU)")
    parser.add_argument("--protopnet_batch", type=int, default=0)
    parser.add_argument("--push_batch", type=int, default=0)
    parser.add_argument("--resnet50_batch", type=int, default=0)
    parser.add_argument("--relax_masks", type=int, default=3000)
    parser.add_argument("--ig_steps", type=int, default=50)
    parser.add_argument("--smoothgrad_samples", type=int, default=50)
    parser.add_argument("--explain_batch", type=int, default=0, help="0: all at once")
    parser.add_argument("--kmeans_n", type=int, default=20_000)
    parser.add_argument("--kmeans_d", type=int, default=256)
    parser.add_argument("--kmeans_k", type=int, default=50)
    parser.add_argument("--kmeans_n_init", type=int, default=10)
    parser.add_argument("--out", default="", help="also append the JSON lines to this file")
    parser.add_argument("--table", default="", help="print RESULTS.md rows of a .jsonl; exit")
    args = parser.parse_args(argv)
    if args.table:
        print(table([json.loads(line) for line in open(args.table) if line.strip()]))
        return

    import jax
    import torch

    from benchmarks import torch_refs

    if args.device == "cpu":
        jax.config.update("jax_platforms", "cpu")
    # TF32 pinned on both sides: JAX's default matmul precision and torch's backends.
    jax.config.update("jax_default_matmul_precision", "tensorfloat32" if args.tf32 else "highest")
    torch_refs.set_precision(tf32=args.tf32)
    names = [name.strip() for name in args.only.split(",") if name.strip()]
    unknown = [name for name in names if name not in BUILDERS]
    if unknown:
        parser.error(f"unknown measurement {unknown[0]!r}; choose from {', '.join(BUILDERS)}")
    ctx = Context(args)
    header = {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "device": args.device,
        "precision": args.precision,
        "tf32": args.tf32,
        **machine(),
    }
    out = open(args.out, "a") if args.out else None  # noqa: SIM115
    for name in names:
        pair = BUILDERS[name](ctx)
        if args.steps:
            pair.steps = args.steps
        line = {**measure(pair, repeats=args.repeats, warmup=args.warmup), **header}
        text = json.dumps(line)
        print(text, flush=True)
        if out:
            out.write(text + "\n")
            out.flush()
        del pair
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
