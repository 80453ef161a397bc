"""Progress for long loops: a one-line bar with rate and ETA on a terminal, plain log lines
otherwise (CI logs, files)."""

from __future__ import annotations

import sys
import time


def _duration(seconds: float) -> str:
    seconds = int(max(seconds, 0))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}"


class Progress:
    """Reports `done / total` with rate and ETA.

    On a terminal the line is redrawn in place; otherwise a line is printed every
    `log_every` updates (and at the end). Only the main process prints.
    """

    def __init__(
        self,
        total: int,
        description: str,
        *,
        unit: str = "step",
        log_every: int = 50,
        enabled: bool = True,
        stream=None,
    ):
        self.total = total
        self.description = description
        self.unit = unit
        self.log_every = max(1, log_every)
        self.stream = stream or sys.stderr
        self.enabled = enabled
        self.tty = enabled and hasattr(self.stream, "isatty") and self.stream.isatty()
        self.done = 0
        self.start = time.perf_counter()
        self.postfix = ""
        self._line_open = False  # a redrawn bar is on screen without its newline

    def update(self, count: int = 1, postfix: str = "") -> None:
        self.done += count
        if postfix:
            self.postfix = postfix
        if not self.enabled:
            return
        if self.tty:
            self._draw(end="")
        elif self.done % self.log_every == 0 or self.done == self.total:
            self._draw(end="\n")

    def _draw(self, end: str) -> None:
        elapsed = time.perf_counter() - self.start
        rate = self.done / elapsed if elapsed > 0 else 0.0
        eta = (self.total - self.done) / rate if rate > 0 else 0.0
        if self.tty:
            width = 24
            filled = int(width * self.done / max(self.total, 1))
            bar = "█" * filled + "·" * (width - filled)
            line = (
                f"\r{self.description} |{bar}| {self.done}/{self.total} "
                f"[{_duration(elapsed)}<{_duration(eta)}, {rate:.1f} {self.unit}/s] {self.postfix}"
            )
            self.stream.write(line.ljust(110) + end)
            self._line_open = not end
        else:
            self.stream.write(
                f"{self.description}: {self.done}/{self.total} {self.unit}s, {rate:.1f}/s, "
                f"eta {_duration(eta)} {self.postfix}".rstrip()
                + end
            )
        self.stream.flush()

    def close(self) -> None:
        """Ends the bar's line; safe to call more than once."""
        if self._line_open:
            self.stream.write("\n")
            self.stream.flush()
            self._line_open = False
