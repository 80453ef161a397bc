"""RELAX with 3,000 masks at 224 px on a ResNet-50: time and peak memory (CPU).

Run as `python benchmarks/relax_memory.py [--masks 3000] [--batch_size 100] [--images 1]`.
The ResNet-50 (`protojax.nn.backbone_by_name("resnet50")`, ImageNet stem) has random
weights: no pretrained weights can be downloaded here, and the cost of RELAX does not depend
on the weights. The embedding is the global mean of the layer4 map (2,048 values), the image
a fixed random one in [0, 1].

Prints, for the chunked run (`batch_size` masks at a time, the official code's 100):
- XLA's temp (scratch) bytes of the compiled executable (`memory_analysis()`), beside those of
  the same RELAX with 10× fewer masks and of all masks at once (compiled, never run);
- compile seconds, then run seconds (wall and process CPU) of one full run;
- the process's peak resident memory (`ru_maxrss`) before and after the run.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import platform
import resource
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from protojax.explain import relax, relax_masks  # noqa: E402
from protojax.nn import backbone_by_name  # noqa: E402

SIZE = 224


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def _compile(embed, images, num_masks: int, batch_size: int | None):
    masks = jax.ShapeDtypeStruct((num_masks, SIZE, SIZE), jnp.float32)
    # The model and image are arguments, not constants XLA would fold at compile time.
    run = jax.jit(lambda e, x, m: relax(e, x, m, batch_size=batch_size))
    start = time.perf_counter()
    compiled = run.lower(embed, images, masks).compile()
    seconds = time.perf_counter() - start
    return compiled, compiled.memory_analysis().temp_size_in_bytes, seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--masks", type=int, default=3000)
    parser.add_argument("--batch_size", type=int, default=100)
    parser.add_argument("--images", type=int, default=1)
    args = parser.parse_args()
    machine = platform.processor() or platform.machine()
    print(f"jax {jax.__version__} on {jax.devices()[0].device_kind}, nproc {os.cpu_count()}, "
          f"{machine}, load {os.getloadavg()[0]:.1f}")  # fmt: skip

    model = backbone_by_name("resnet50")
    variables = model.init(jax.random.key(0), jnp.zeros((1, SIZE, SIZE, 3)))
    embed = jax.tree_util.Partial(
        lambda v, x: jnp.mean(model.apply(v, x, train=False), axis=(1, 2)), variables
    )
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.uniform(size=(args.images, SIZE, SIZE, 3)).astype(np.float32))
    masks = relax_masks(jax.random.key(1), args.masks, SIZE)
    mib = 2.0**20

    _, fewer, _ = _compile(embed, images, args.masks // 10, args.batch_size)
    _, at_once, _ = _compile(embed, images, args.masks, None)
    compiled, temp, compile_s = _compile(embed, images, args.masks, args.batch_size)
    print(f"temp bytes: {temp / mib:.0f} MiB for {args.masks} masks at batch_size "
          f"{args.batch_size}; {fewer / mib:.0f} MiB for {args.masks // 10} masks; "
          f"{at_once / mib:.0f} MiB for all {args.masks} at once (not run)")  # fmt: skip
    print(f"compile: {compile_s:.1f} s")
    rss_before = _peak_rss_mib()
    cpu, wall = time.process_time(), time.perf_counter()
    result = compiled(embed, images, masks)
    jax.block_until_ready(result)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    print(f"run: {wall:.1f} s wall, {cpu:.1f} s CPU ({args.images} image(s) x {args.masks} "
          f"masks = {args.images * args.masks / wall:.1f} masked images/s); load "
          f"{os.getloadavg()[0]:.1f}")  # fmt: skip
    print(f"peak RSS: {rss_before:.0f} MiB before the run, {_peak_rss_mib():.0f} MiB after")
    importance, uncertainty = np.asarray(result.importance), np.asarray(result.uncertainty)
    print(f"importance in [{importance.min():.4f}, {importance.max():.4f}], uncertainty in "
          f"[{uncertainty.min():.4g}, {uncertainty.max():.4g}], all finite: "
          f"{bool(np.isfinite(importance).all() and np.isfinite(uncertainty).all())}")  # fmt: skip


if __name__ == "__main__":
    main()
