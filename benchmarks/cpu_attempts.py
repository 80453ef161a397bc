"""What XLA and JAX offer on the ProtoPNet ResNet-34 joint step (224 px), one variant per process.

    python benchmarks/cpu_attempts.py [--batch=4] [--steps=3]       # every variant, in turn
    python benchmarks/cpu_attempts.py --variant=NAME [--batch=4]    # one

Variants (`VARIANTS`): the default step; `jax_default_matmul_precision` at `highest` and at
`bfloat16`; NCHW convolutions (every backbone conv computed with NCHW/OIHW dimension numbers,
transposed at its boundary, so that XLA's layout assignment can keep NCHW between layers);
fusion boundaries (an optimisation barrier after every residual block). One JSON line per
variant: wall and process-CPU seconds per step (the median of `--steps` after one warm-up),
the compile seconds and the load. CPU seconds are the figure to compare on a shared machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

VARIANTS = ("default", "precision_highest", "precision_bfloat16", "nchw", "block_barriers")
# How many convolutions or blocks a variant rewrote while the step was traced (a check that
# it took effect).
_REWRITTEN = {"count": 0}


def _nchw_conv(lhs, rhs, window_strides, padding, *, dimension_numbers=None, **kwargs):
    """An NHWC/HWIO convolution computed in NCHW/OIHW."""
    import jax

    _REWRITTEN["count"] += 1
    y = jax.lax.conv_general_dilated(
        lhs.transpose(0, 3, 1, 2),
        rhs.transpose(3, 2, 0, 1),
        window_strides,
        padding,
        dimension_numbers=("NCHW", "OIHW", "NCHW"),
        **kwargs,
    )
    return y.transpose(0, 2, 3, 1)


def _block_barrier(next_fun, args, kwargs, context):
    """Flax interceptor: an optimisation barrier on the output of every residual block."""
    import jax

    from protojax.nn.resnet import BasicBlock, Bottleneck

    out = next_fun(*args, **kwargs)
    if context.method_name == "__call__" and isinstance(context.module, (BasicBlock, Bottleneck)):
        _REWRITTEN["count"] += 1
        out = jax.lax.optimization_barrier(out)
    return out


def run_variant(variant: str, batch: int, steps: int) -> dict:
    import contextlib

    import flax.linen as nn
    import jax

    import protojax.nn.layers as layers
    from benchmarks.compare import protojax_train_step
    from protojax.config import load_config, set_value

    if variant.startswith("precision_"):
        jax.config.update("jax_default_matmul_precision", variant.removeprefix("precision_"))
    if variant == "nchw":
        layers.conv_general_dilated = _nchw_conv
    config = load_config("protopnet_cub")
    set_value(config, "data.batch_size", batch)
    set_value(config, "model.allow_random_init", True)
    scope = nn.intercept_methods(_block_barrier) if variant == "block_barriers" else None
    start = time.perf_counter()
    with scope or contextlib.nullcontext():
        step, state, _, _ = protojax_train_step(config, phase="joint")
    compile_s = time.perf_counter() - start
    state, _ = step(state)  # warm-up
    walls, cpus = [], []
    for _ in range(steps):
        wall, cpu = time.perf_counter(), time.process_time()
        state, _ = step(state)
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return {
        "variant": variant,
        "batch_size": batch,
        "wall_s_per_step": round(statistics.median(walls), 3),
        "cpu_s_per_step": round(statistics.median(cpus), 3),
        "compile_s": round(compile_s, 1),
        "rewritten": _REWRITTEN["count"],
        "load_1min": round(os.getloadavg()[0], 2),
        "jax": jax.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--variant", choices=VARIANTS, default="")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.batch, args.steps)), flush=True)
        return
    env = {**os.environ, "JAX_ENABLE_COMPILATION_CACHE": "false"}
    for variant in VARIANTS:
        command = [sys.executable, __file__, f"--variant={variant}", f"--batch={args.batch}"]
        result = subprocess.run(
            [*command, f"--steps={args.steps}"], env=env, capture_output=True, text=True
        )
        lines = [line for line in result.stdout.splitlines() if line.startswith("{")]
        print(
            lines[-1]
            if lines
            else json.dumps({"variant": variant, "failed": result.stderr[-300:]}),
            flush=True,
        )


if __name__ == "__main__":
    main()
