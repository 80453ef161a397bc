"""Start-up of a training launch: seconds to the first train step and to the end of the run,
with a cold and then a warm persistent compilation cache.

    python benchmarks/startup.py [--config=protovae_digits] [--runs=2] [-- --config.KEY=V ...]

Each round launches `python -m experiments.train --config=NAME --workdir=FRESH
--config.train.log_every_steps=1` twice, on a new cache folder (cold) and then on the same
folder (warm), each on a fresh workdir. The first step is the first progress line
(`NAME: 1/N steps`); its time counts from the launch, so it includes the imports, the data,
the initialisation and the compilation. One JSON line per launch, with the load average.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def launch(config: str, workdir: str, cache: str, extra: list[str]) -> dict:
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "JAX_COMPILATION_CACHE_DIR": cache}
    env.pop("XLA_FLAGS", None)
    env.pop("PROTOJAX_COMPILATION_CACHE", None)
    command = [
        sys.executable,
        "-m",
        "experiments.train",
        f"--config={config}",
        f"--workdir={workdir}",
        "--config.train.log_every_steps=1",
        *extra,
    ]
    start = time.perf_counter()
    process = subprocess.Popen(
        command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    first_step = None
    tail = []
    for line in process.stdout:
        if first_step is None and re.search(r": 1/\d+ steps", line):
            first_step = time.perf_counter() - start
        tail = (tail + [line.rstrip()])[-5:]
    code = process.wait()
    total = time.perf_counter() - start
    if code:
        raise SystemExit(f"{' '.join(command)} failed ({code}):\n" + "\n".join(tail))
    summary = json.loads((Path(workdir) / "summary.json").read_text())
    return {
        "first_step_s": round(first_step, 1) if first_step else None,
        "whole_run_s": round(total, 1),
        "steps": summary.get("steps"),
        "test_accuracy": summary.get("test_accuracy"),
        "load_1min": round(os.getloadavg()[0], 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="protovae_digits")
    parser.add_argument("--runs", type=int, default=1, help="cold/warm rounds")
    args, extra = parser.parse_known_args()
    extra = [a for a in extra if a != "--"]
    for round_index in range(args.runs):
        with tempfile.TemporaryDirectory() as scratch:
            cache = os.path.join(scratch, "cache")
            for kind in ("cold", "warm"):
                workdir = os.path.join(scratch, f"run_{kind}")
                result = launch(args.config, workdir, cache, extra)
                entries = len(os.listdir(cache)) if os.path.isdir(cache) else 0
                line = {"config": args.config, "round": round_index, "cache": kind}
                line |= result | {"cache_entries": entries, "overrides": extra}
                print(json.dumps(line), flush=True)


if __name__ == "__main__":
    main()
