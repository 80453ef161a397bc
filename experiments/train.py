"""Trains an experiment config.

  python -m experiments.train --config=NAME [--workdir=DIR] [--config.train.epochs=3]
      [--distributed] [--profile_steps=A:B]

NAME is a file in experiments/configs/ (or a path to one). Any config field can be
overridden with --config.KEY=VALUE; unknown keys and wrong types stop with exit code 2.
Rerunning on an existing workdir resumes it. The workdir defaults to workdirs/NAME.
"""

from __future__ import annotations

import json
import logging
import os

from absl import flags

from experiments import cli
from protojax.errors import UsageError

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "Work directory (default: workdirs/<config name>).")
flags.DEFINE_bool("distributed", False, "Call jax.distributed.initialize() first (pods, clusters).")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, with --distributed.")
flags.DEFINE_integer("num_processes", None, "Number of processes, with --distributed.")
flags.DEFINE_integer("process_id", None, "This process's id, with --distributed.")
flags.DEFINE_string("profile_steps", None, "A:B writes a jax.profiler trace of steps A..B.")


def _profile_steps(value: str | None) -> tuple[int, int] | None:
    if not value:
        return None
    try:
        first, last = (int(v) for v in value.split(":"))
    except ValueError:
        raise UsageError(f"--profile_steps expects A:B with integers, got '{value}'.") from None
    if not 0 <= first < last:
        raise UsageError(f"--profile_steps A:B needs 0 <= A < B, got '{value}'.")
    return first, last


def main(argv: list[str]) -> None:
    config_name, overrides = cli.parse_flags(argv)
    if FLAGS.distributed:
        import jax

        jax.distributed.initialize(
            coordinator_address=FLAGS.coordinator_address,
            num_processes=FLAGS.num_processes,
            process_id=FLAGS.process_id,
        )
        logging.info(
            "jax.distributed: process %d of %d, %d devices in all.",
            jax.process_index(),
            jax.process_count(),
            jax.device_count(),
        )
    config, name = cli.load_config(config_name, overrides)
    profile = _profile_steps(FLAGS.profile_steps)
    from protojax.runs import train

    workdir = FLAGS.workdir or os.path.join("workdirs", name)
    summary = train(config, workdir, profile_steps=profile)
    if summary is None:
        print(f"Stopped early; rerun the same command to resume from {workdir}.")
    else:
        print(json.dumps(summary, indent=2, default=float))
        print(f"Summary and figures are in {workdir}.")


if __name__ == "__main__":
    cli.run_launcher(main)
