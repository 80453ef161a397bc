"""Backbone forward passes on CPU: protojax against the real torchvision/timm model, same run.

Run as `python benchmarks/backbones_cpu.py [--archs a,b] [--repeats 3] [--out FILE.jsonl]`
(needs torch, torchvision and timm as `protojax/nn/torch_reference.py` says).

For each backbone, at 224 × 224 px, batch 32, float32, inference (eval mode):
- The torch model is `torch_backbone(arch)` (the real class, published size, random
  initialisation from seed 0); its state dict is converted with the library's own key map
  (`torch_state_dict_to_variables`), so both frameworks compute the same function on the
  same weights. Both compute the map a protojax backbone returns (`torch_features`: the
  layer before global pooling; ViT patch tokens after the final norm), with no classifier.
- torch runs under `torch.no_grad()` with `torch.set_num_threads(N)`, N the cores this process
  may use (`os.sched_getaffinity`); XLA:CPU uses its default thread pool over the same cores.
- protojax: `jax.jit(module.apply)`; the first call (compile + run) is timed apart.
- After one warm-up call of each, the two frameworks alternate `--repeats` times, so that a
  busy machine slows both alike; images/s = 32 / seconds per call, median and best.
- The largest absolute difference between the two outputs is printed as a check that the
  same function was timed.
- The 1-minute load average is printed before and after each backbone: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

# Run from a checkout without installing: the repository root holds the protojax package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_line  # noqa: E402
from protojax.nn import backbone_by_name, backbone_family  # noqa: E402
from protojax.nn.torch_reference import (  # noqa: E402
    import_timm,
    import_torch,
    import_torchvision,
    torch_backbone,
    torch_features,
)
from protojax.nn.weights import (  # noqa: E402
    check_variables,
    flatten_variables,
    torch_state_dict_to_variables,
)

ARCHS = (
    "resnet18 resnet34 resnet50 resnet101 resnet152 "
    "vgg11 vgg11_bn vgg13 vgg13_bn vgg16 vgg16_bn vgg19 vgg19_bn "
    "densenet121 densenet161 densenet169 densenet201 convnext_tiny convnext_small "
    "vit_b_16 vit_small_patch16_224 vit_base_patch16_224"
).split()


def _load() -> float:
    return os.getloadavg()[0]


def _seconds(fn) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def bench(arch: str, images: np.ndarray, repeats: int) -> dict:
    torch = import_torch()
    load_before = _load()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = torch_backbone(arch)
    state = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    variables = torch_state_dict_to_variables(state, family=backbone_family(arch))
    module = backbone_by_name(arch)
    like = jax.eval_shape(module.init, jax.random.key(0), images[:1])
    check_variables(flatten_variables(variables), flatten_variables(like), source=arch)
    variables = jax.device_put(variables)
    del state

    apply = jax.jit(module.apply)
    x = jax.device_put(images)

    def run_jax():
        return jax.block_until_ready(apply(variables, x))

    def run_torch():
        return torch_features(model, arch, images)

    first, _ = _seconds(run_jax)
    warm, _ = _seconds(run_jax)
    _seconds(run_torch)
    times = {"protojax": [], "torch": []}
    outputs = {}
    for _ in range(repeats):
        for name, fn in (("protojax", run_jax), ("torch", run_torch)):
            seconds, outputs[name] = _seconds(fn)
            times[name].append(seconds)
    diff = float(np.max(np.abs(np.asarray(outputs["protojax"]) - outputs["torch"])))
    batch = images.shape[0]
    row = {
        "arch": arch,
        "shape": list(np.shape(outputs["protojax"])),
        "compile_s": round(first - warm, 2),
        "max_abs_diff": diff,
        "max_abs_out": float(np.max(np.abs(outputs["torch"]))),
        "load_before": load_before,
        "load_after": _load(),
    }
    for name, ts in times.items():
        row[f"{name}_median_ips"] = round(batch / statistics.median(ts), 2)
        row[f"{name}_best_ips"] = round(batch / min(ts), 2)
        row[f"{name}_seconds"] = [round(t, 3) for t in ts]
    row["ratio_median"] = round(row["protojax_median_ips"] / row["torch_median_ips"], 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archs", default=",".join(ARCHS))
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default="", help="append one JSON line per backbone")
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are real

    torch = import_torch()
    threads = len(os.sched_getaffinity(0))
    torch.set_num_threads(threads)
    print(f"date: {datetime.datetime.now(datetime.UTC).isoformat(timespec='minutes')}")
    print(f"machine: {machine_line()}")
    print(
        f"versions: jax {jax.__version__}, torch {torch.__version__}, torchvision "
        f"{import_torchvision().__version__}, timm {import_timm().__version__}; "
        f"torch threads {torch.get_num_threads()}, XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}"
    )
    print(f"input: {args.batch} x {args.size} x {args.size} x 3 float32, repeats {args.repeats}")
    images = np.random.default_rng(0).normal(size=(args.batch, args.size, args.size, 3))
    images = images.astype(np.float32)
    print(
        "| arch | output | protojax img/s (median, best) | torch img/s (median, best) "
        "| ratio | compile s | max abs diff | load 1-min |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        row = bench(arch, images, args.repeats)
        print(
            f"| {arch} | {'×'.join(map(str, row['shape'][1:]))} "
            f"| {row['protojax_median_ips']}, {row['protojax_best_ips']} "
            f"| {row['torch_median_ips']}, {row['torch_best_ips']} | {row['ratio_median']} "
            f"| {row['compile_s']} | {row['max_abs_diff']:.1e} (of {row['max_abs_out']:.1f}) "
            f"| {row['load_before']:.1f} → {row['load_after']:.1f} |",
            flush=True,
        )
        if args.out:
            with open(args.out, "a") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
