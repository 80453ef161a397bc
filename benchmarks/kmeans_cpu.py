"""k-means on CPU: protojax.prototypes.kmeans against scikit-learn's KMeans (Lloyd).

Run as `python benchmarks/kmeans_cpu.py` (about ten minutes on 2 busy cores). The data are
50,000 × 512 standard-normal float32 rows, k = 50, n_init = 1.

- Time per Lloyd iteration: (t(max_iter = 1 + S) − t(max_iter = 1)) / S with tol = 0, so
  that all S iterations run, from the same seeding; this removes seeding and set-up from
  the figure. scikit-learn gets its own k-means++ centres as an explicit `init`, because
  its seeding of float32 data (computed in float64 chunks) takes far longer than its
  iterations. The repeats interleave the two libraries, so that a busy machine slows both
  alike. The headline uses the fastest run of each length (the least disturbed), the
  median runs are shown beside it, and so is the CPU time of the process (all threads).
- n_iter and inertia: one fit of each to convergence with the defaults (tol = 1e-4,
  max_iter = 300), from their own seedings.
- protojax's compile time: the first call's time less a warm call's, summed over the
  programs used (max_iter 1, 1 + S and 300).
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import platform
import statistics
import sys
import time

import jax
import numpy as np
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus

# Run from a checkout without installing: the repository root holds the protojax package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from protojax.prototypes.kmeans import kmeans  # noqa: E402


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _timed(fn, *args, **kwargs):
    """Wall-clock seconds, CPU seconds of this process (all threads) and the result."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=30, help="Lloyd iterations timed per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    x = np.random.default_rng(args.seed).standard_normal((args.n, args.d), dtype=np.float32)
    x_device = jax.device_put(x)
    key = jax.random.key(args.seed)

    def fit_jax(max_iter, tol):
        result = kmeans(x_device, args.k, key, n_init=1, max_iter=max_iter, tol=tol)
        return jax.block_until_ready(result)

    def fit_sklearn(init, max_iter, tol):
        fit = KMeans(args.k, init=init, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd")
        return fit.fit(x)

    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: nproc {len(os.sched_getaffinity(0))}, {_cpu_model()}")
    print(f"versions: jax {jax.__version__}, scikit-learn {sklearn.__version__}")
    print(f"data: {args.n} x {args.d} float32 standard normal, k = {args.k}, n_init = 1")
    print("load average (1, 5, 15 min) at start: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))

    steps = args.steps
    programs = [(1, 0.0), (1 + steps, 0.0), (300, 1e-4)]
    compile_s = 0.0
    for max_iter, tol in programs:
        first, _, _ = _timed(fit_jax, max_iter, tol)
        warm, _, _ = _timed(fit_jax, max_iter, tol)
        compile_s += first - warm
    print(f"protojax compile time ({len(programs)} programs): {compile_s:.1f} s")

    seeding_s, _, (init, _) = _timed(kmeans_plusplus, x, args.k, random_state=args.seed)
    print(f"scikit-learn k-means++ seeding alone: {seeding_s:.1f} s")

    # Per library, the (wall, CPU) seconds of every run of 1 and of 1 + S iterations.
    runs = {name: {1: [], 1 + steps: []} for name in ("protojax", "scikit-learn")}
    for repeat in range(args.repeats):
        for max_iter in (1, 1 + steps):
            wall, cpu, _ = _timed(fit_jax, max_iter, 0.0)
            runs["protojax"][max_iter].append((wall, cpu))
            wall, cpu, fitted = _timed(fit_sklearn, init, max_iter, 0.0)
            assert fitted.n_iter_ == max_iter, "scikit-learn converged early; lower --steps"
            runs["scikit-learn"][max_iter].append((wall, cpu))
        print(
            f"repeat {repeat}: 1 + {steps} iterations in "
            + ", ".join(f"{name} {times[1 + steps][-1][0]:.2f} s" for name, times in runs.items())
        )

    print(
        f"per Lloyd iteration, (t(1 + {steps}) − t(1)) / {steps} over {args.repeats} repeats: "
        "min of each, and median of each"
    )
    per_iter = {}
    for name, times in runs.items():
        figures = []
        for column in (0, 1):  # wall, CPU
            short = [t[column] for t in times[1]]
            long = [t[column] for t in times[1 + steps]]
            figures.append(1e3 * (min(long) - min(short)) / steps)
            figures.append(1e3 * (statistics.median(long) - statistics.median(short)) / steps)
        per_iter[name] = figures
        print(
            f"  {name}: wall {figures[0]:.1f} ms (median {figures[1]:.1f}), "
            f"CPU {figures[2]:.1f} ms (median {figures[3]:.1f})"
        )
    print(
        "  scikit-learn / protojax, wall: "
        f"{per_iter['scikit-learn'][0] / per_iter['protojax'][0]:.2f} "
        f"(median {per_iter['scikit-learn'][1] / per_iter['protojax'][1]:.2f})"
    )

    jax_s, _, result = _timed(fit_jax, 300, 1e-4)
    sk_s, _, fitted = _timed(fit_sklearn, init, 300, 1e-4)
    print(
        f"to convergence (tol 1e-4): protojax n_iter {int(result.n_iter)}, inertia "
        f"{float(result.inertia):.6g}, {jax_s:.1f} s with seeding; scikit-learn n_iter "
        f"{fitted.n_iter_}, inertia {fitted.inertia_:.6g}, {sk_s:.1f} s without seeding"
    )
    print("load average (1, 5, 15 min) at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))


if __name__ == "__main__":
    main()
