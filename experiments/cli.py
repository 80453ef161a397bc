"""Shared launcher plumbing: `--config=NAME --config.key=value` parsing and the error contract
(the one-sentence message is the last line printed; exit 2 for usage errors, 1 otherwise)."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import sys
from collections.abc import Callable, Iterator

from absl import flags

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


def parse_flags(argv: list[str]) -> tuple[str | None, list[tuple[str, str]]]:
    """Parses the launcher's absl flags from `argv`; returns the config name and overrides
    (for `load_config`), so that flags such as --distributed can act before the config loads."""
    name, overrides, rest = split_config_args(argv)
    if {"--help", "-h", "--helpfull"} & set(rest):
        doc = getattr(sys.modules["__main__"], "__doc__", None) or ""
        print(f"{doc.strip()}\n\nflags:\n{flags.FLAGS.get_help()}")
        raise SystemExit(0)
    positional = flags.FLAGS(["launcher", *rest])[1:]
    if positional:
        raise UsageError(
            f"Unexpected argument '{positional[0]}'; flags take the form --name=value."
        )
    return name, overrides


def load_config(name: str | None, overrides: list[tuple[str, str]]):
    """(config, short config name) from `--config=NAME` and its `--config.KEY=VALUE`s."""
    from protojax import config as config_lib

    if not name:
        raise UsageError("Pass --config=NAME (a file in experiments/configs/) or a path to a .py.")
    config = config_lib.load_config(name)
    config_lib.apply_overrides(config, overrides)
    return config, os.path.splitext(os.path.basename(name))[0]


def setup_logging() -> None:
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", datefmt="%H:%M:%S"
    )
    for noisy in ("absl", "jax._src", "orbax", "tensorflow_datasets"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def flag_error_sentence(error: flags.Error) -> str:
    """A usage sentence for an absl flag error; an unknown flag gets the closest valid ones."""
    if isinstance(error, flags.UnrecognizedFlagError):
        valid = sorted({*flags.FLAGS, "config"})
        close = difflib.get_close_matches(error.flagname, valid, n=3, cutoff=0.5)
        shown = close or valid
        label = "closest valid flags" if close else "valid flags"
        return (
            f"Unknown flag --{error.flagname}; {label}: "
            f"{', '.join('--' + name for name in shown)} (config keys go as --config.KEY=VALUE)."
        )
    return f"{str(error).strip().rstrip('.')}; see --help for the flags."


@contextlib.contextmanager
def error_contract() -> Iterator[None]:
    """Turns a ProtojaxError or an absl flag error into one sentence on the last line, with
    exit code 2 for usage errors and 1 for data and checkpoint errors. For launchers only:
    after the sentence the process's output is closed (see `_fail`)."""
    try:
        yield
    except ProtojaxError as error:
        _fail(str(error), error.exit_code)
    except flags.Error as error:
        _fail(flag_error_sentence(error), UsageError.exit_code)


def _fail(message: str, code: int) -> None:
    """Prints the sentence, then points stdout and stderr at /dev/null for the rest of the
    process: native threads and finalizers (TensorStore reads left in flight by a failed
    restore, asyncio tasks collected at shutdown) may still write, and nothing may follow the
    sentence."""
    sys.stdout.flush()
    print(f"error: {message}", file=sys.stderr)
    sys.stderr.flush()
    null = os.open(os.devnull, os.O_WRONLY)
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(AttributeError, OSError, ValueError):
            os.dup2(null, stream.fileno())
    os.close(null)
    raise SystemExit(code) from None


def enable_compilation_cache() -> str | None:
    """Points JAX's persistent compilation cache at a user cache folder, so that a second
    launch reuses the compiled steps; returns the folder, or None where it is switched off.

    The folder: `$JAX_COMPILATION_CACHE_DIR` if set, else `$XDG_CACHE_HOME/protojax/jax`, else
    `~/.cache/protojax/jax`. `PROTOJAX_COMPILATION_CACHE=0` switches it off. A folder that
    cannot be created leaves the cache off with a warning: it only saves time.
    """
    if os.environ.get("PROTOJAX_COMPILATION_CACHE", "1").lower() in ("0", "false", "off", "no"):
        return None
    folder = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "protojax", "jax"
    )
    try:
        os.makedirs(folder, exist_ok=True)
    except OSError as error:
        logging.warning("Compilation cache off: cannot create %s (%s).", folder, error)
        return None
    import jax

    jax.config.update("jax_compilation_cache_dir", folder)
    # JAX's default (1 s) leaves out the many small programs of a run (eval, push, metrics).
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.2)
    return folder


def run_launcher(main: Callable[[list[str]], None]) -> None:
    """Runs `main(argv)` under the error contract, with the persistent compilation cache."""
    setup_logging()
    enable_compilation_cache()
    with error_contract():
        main(sys.argv[1:])
