"""k-means on CPU: protojax.prototypes.kmeans against scikit-learn's KMeans (Lloyd).

Run as `python benchmarks/kmeans_cpu.py` (about five minutes on 2 busy cores), at normal
priority. The data are 50,000 × 512 standard-normal float32 rows, k = 50.

- Both libraries start from the same centres, scikit-learn's k-means++ seeding of the data
  (`sklearn.cluster.kmeans_plusplus`), given as an explicit `init`; seeding is timed apart.
- Time per Lloyd iteration: (t(max_iter = 1 + S) − t(max_iter = 1)) / S with tol = 0, so
  that all S iterations run; the difference removes the set-up (centring, copies) from the
  figure. The repeats interleave the two libraries, so that a busy machine slows both
  alike. The fastest run of each length (the least disturbed) and the median runs are
  reported, in wall time and in CPU time of the process (all threads).
- n_iter and inertia: one fit of each to convergence with the defaults (tol = 1e-4,
  max_iter = 300) from the same centres; then protojax's whole fit with its own seeding.
- protojax's compile time: the first call's time less a warm call's, summed over the
  programs used; the persistent compilation cache is switched off for this.
- The load average (1 min) is printed before and after every repeat: the machine is shared.
"""

from __future__ import annotations

import argparse
import datetime
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np
import sklearn
from sklearn.cluster import KMeans, kmeans_plusplus

# Run from a checkout without installing: the repository root holds the protojax package.
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))
from benchmarks.machine import machine_line  # noqa: E402
from protojax.prototypes.kmeans import kmeans  # noqa: E402


def _timed(fn, *args, **kwargs):
    """Wall-clock seconds, CPU seconds of this process (all threads) and the result."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = fn(*args, **kwargs)
    return time.perf_counter() - start, time.process_time() - start_cpu, result


def _load() -> str:
    return "{:.2f} {:.2f} {:.2f}".format(*os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=50_000)
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--k", type=int, default=50)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--steps", type=int, default=60, help="Lloyd iterations timed per run")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    jax.config.update("jax_enable_compilation_cache", False)  # compile times are real

    x = np.random.default_rng(args.seed).standard_normal((args.n, args.d), dtype=np.float32)
    x_device = jax.device_put(x)

    print(f"date: {datetime.date.today().isoformat()}")
    print(f"machine: {machine_line()}")
    print(f"versions: jax {jax.__version__}, scikit-learn {sklearn.__version__}")
    print(f"data: {args.n} x {args.d} float32 standard normal, k = {args.k}")
    print(f"load average (1, 5, 15 min) at start: {_load()}")

    seeding_s, _, (init, _) = _timed(kmeans_plusplus, x, args.k, random_state=args.seed)
    print(f"scikit-learn k-means++ seeding (the shared start): {seeding_s:.1f} s")
    init_device = jax.device_put(init)

    def fit_jax(max_iter, tol):
        result = kmeans(x_device, args.k, None, max_iter=max_iter, tol=tol, init=init_device)
        return jax.block_until_ready(result)

    def fit_sklearn(max_iter, tol):
        fit = KMeans(args.k, init=init, n_init=1, max_iter=max_iter, tol=tol, algorithm="lloyd")
        return fit.fit(x)

    def fit_jax_seeded():
        result = kmeans(x_device, args.k, jax.random.key(args.seed), n_init=1)
        return jax.block_until_ready(result)

    steps = args.steps
    compile_s = 0.0
    for fit in (
        lambda: fit_jax(1, 0.0),
        lambda: fit_jax(1 + steps, 0.0),
        lambda: fit_jax(300, 1e-4),
    ):
        first, _, _ = _timed(fit)
        warm, _, _ = _timed(fit)
        compile_s += first - warm
    print(f"protojax compile time (3 programs): {compile_s:.1f} s")

    # Per library, the (wall, CPU) seconds of every run of 1 and of 1 + S iterations.
    fits = {"protojax": fit_jax, "scikit-learn": fit_sklearn}
    runs = {name: {1: [], 1 + steps: []} for name in fits}
    for repeat in range(args.repeats):
        before = os.getloadavg()[0]
        for max_iter in (1, 1 + steps):
            for name, fit in fits.items():
                wall, cpu, result = _timed(fit, max_iter, 0.0)
                n_iter = int(result.n_iter) if name == "protojax" else result.n_iter_
                assert n_iter == max_iter, f"{name} converged early; lower --steps"
                runs[name][max_iter].append((wall, cpu))
        print(
            f"repeat {repeat}: 1 + {steps} iterations in "
            + ", ".join(f"{name} {times[1 + steps][-1][0]:.2f} s" for name, times in runs.items())
            + f" (load {before:.2f} -> {os.getloadavg()[0]:.2f})"
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
    ratios = [per_iter["scikit-learn"][i] / per_iter["protojax"][i] for i in range(4)]
    print(
        "  scikit-learn / protojax: wall {:.2f} (median {:.2f}), CPU {:.2f} (median {:.2f})".format(
            *ratios
        )
    )

    jax_s, _, result = _timed(fit_jax, 300, 1e-4)
    sk_s, _, fitted = _timed(fit_sklearn, 300, 1e-4)
    print(
        f"to convergence from the shared start (tol 1e-4): protojax n_iter {int(result.n_iter)}, "
        f"inertia {float(result.inertia):.6g}, {jax_s:.1f} s; scikit-learn n_iter "
        f"{fitted.n_iter_}, inertia {fitted.inertia_:.6g}, {sk_s:.1f} s; labels equal "
        f"{np.mean(np.asarray(result.labels) == fitted.labels_):.4%}"
    )
    fit_jax_seeded()  # compile
    seeded_s, _, seeded = _timed(fit_jax_seeded)
    print(
        f"protojax with its own k-means++ seeding (n_init 1): n_iter {int(seeded.n_iter)}, "
        f"inertia {float(seeded.inertia):.6g}, {seeded_s:.1f} s with seeding"
    )
    print(f"load average (1, 5, 15 min) at end: {_load()}")


if __name__ == "__main__":
    main()
