"""Shared launcher plumbing: `--config=NAME --config.key=value` parsing and the error contract
(the one-sentence message is the last line printed; exit 2 for usage errors, 1 otherwise)."""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator

from protojax.errors import ProtojaxError, UsageError


def split_config_args(argv: list[str]) -> tuple[str | None, list[tuple[str, str]], list[str]]:
    """Separates `--config=NAME` and `--config.a.b=v` from the other arguments."""
    name, overrides, rest = None, [], []
    args = iter(argv)
    for arg in args:
        if arg.startswith("--config=") or arg == "--config":
            name = arg.split("=", 1)[1] if "=" in arg else next(args, None)
        elif arg.startswith("--config."):
            key, sep, value = arg[len("--config.") :].partition("=")
            if not sep:
                value = next(args, None)
                if value is None:
                    raise UsageError(f"--config.{key} needs a value, as in --config.{key}=VALUE.")
            overrides.append((key, value))
        else:
            rest.append(arg)
    return name, overrides, rest


def load_config_from_argv(argv: list[str]):
    """(config, config name, remaining argv) for a launcher that takes --config."""
    from protojax.config import apply_overrides, load_config

    name, overrides, rest = split_config_args(argv)
    if not name:
        raise UsageError("Pass --config=NAME (a file in experiments/configs/) or a path to a .py.")
    config = load_config(name)
    apply_overrides(config, overrides)
    return config, os.path.splitext(os.path.basename(name))[0], rest


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextlib.contextmanager
def error_contract() -> Iterator[None]:
    """Turns a ProtojaxError into its sentence on the last line and the matching exit code."""
    try:
        yield
    except ProtojaxError as error:
        sys.stdout.flush()
        print(f"error: {error}", file=sys.stderr)
        sys.stderr.flush()
        raise SystemExit(error.exit_code) from None


def run_launcher(main: Callable[[list[str]], None]) -> None:
    """Runs `main(argv)` under the error contract."""
    setup_logging()
    with error_contract():
        main(sys.argv[1:])
