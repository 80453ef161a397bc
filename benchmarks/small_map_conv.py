"""XLA:CPU's convolution against `nn.layers.conv_general_dilated`'s patch product, forward and
both gradients, on the shapes of the ProtoVAE decoders and backbones' last stages.

    python benchmarks/small_map_conv.py [--batch=128] [--repeats=5]

Prints one line per (shape, form): wall and process-CPU milliseconds per call. The patch form
is used by protojax only where the map is smaller than the kernel; the larger maps show
that it would not pay there.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from protojax.nn.layers import conv_general_dilated  # noqa: E402

# (input channels, output channels, map size): 3×3 kernels, padding 1.
SHAPES = ((128, 512, 2), (256, 1024, 2), (256, 128, 2), (64, 256, 4), (128, 256, 4), (512, 512, 4))
SHAPES += ((32, 128, 16),)
NHWC = ("NHWC", "HWIO", "NHWC")


def patch_product(x, k, *_, **__):
    """The 3×3, padding-1 convolution `[B, H, W, C_in]` → `[B, H, W, C_out]` as one matmul."""
    b, h, w, c_in = x.shape
    padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
    cols = [padded[:, i : i + h, j : j + w] for i in range(3) for j in range(3)]
    y = jnp.concatenate(cols, -1).reshape(-1, 9 * c_in) @ k.reshape(9 * c_in, -1)
    return y.reshape(b, h, w, k.shape[-1])


def timed(fn, *args, repeats: int) -> tuple[float, float]:
    jax.block_until_ready(fn(*args))
    wall, cpu = time.perf_counter(), time.process_time()
    for _ in range(repeats):
        jax.block_until_ready(fn(*args))
    return (time.perf_counter() - wall) / repeats, (time.process_time() - cpu) / repeats


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    forms = {"lax": jax.lax.conv_general_dilated, "patches": conv_general_dilated}
    for c_in, c_out, size in SHAPES:
        x = jnp.asarray(rng.normal(size=(args.batch, size, size, c_in)), jnp.float32)
        k = jnp.asarray(rng.normal(size=(3, 3, c_in, c_out)), jnp.float32)
        for name, conv in forms.items():
            if name == "patches" and size >= 3:
                conv = patch_product  # the library keeps lax here; time the product itself

            def loss(x, k, conv=conv):
                y = conv(x, k, (1, 1), ((1, 1), (1, 1)), dimension_numbers=NHWC)
                return jnp.sum(y * y)

            wall, cpu = timed(jax.jit(jax.grad(loss, (0, 1))), x, k, repeats=args.repeats)
            print(
                f"{c_in:4d} -> {c_out:4d} on {size:2d}x{size:<2d} {name:8s} "
                f"wall {wall * 1e3:8.1f} ms  cpu {cpu * 1e3:8.1f} ms",
                flush=True,
            )


if __name__ == "__main__":
    main()
