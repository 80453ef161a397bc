"""What the benchmark scripts record of the machine they run on."""

from __future__ import annotations

import os
import platform


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what `platform` knows of it."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def machine_line() -> str:
    """`nproc N, MODEL, niceness K`: the cores this process may use (`os.sched_getaffinity`),
    the CPU model and the process's niceness."""
    return f"nproc {len(os.sched_getaffinity(0))}, {cpu_model()}, niceness {os.nice(0)}"
