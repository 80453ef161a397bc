"""Shared launcher plumbing: `--help`, `--config=NAME --config.key=value` parsing, the error
contract (the one-sentence message is the last line printed; exit 2 for usage errors, 1
otherwise, 130 after Ctrl-C) and output folders replaced whole."""

from __future__ import annotations

import contextlib
import difflib
import logging
import os
import pathlib
import shutil
import sys
import tempfile
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
    positional = flags.FLAGS(["launcher", *rest])[1:]
    if positional:
        raise UsageError(
            f"Unexpected argument '{positional[0]}'; flags take the form --name=value."
        )
    return name, overrides


def load_config(name: str | None, overrides: list[tuple[str, str]]):
    """(config, short config name) from `--config=NAME` and its `--config.KEY=VALUE`s. Only
    the key names and types are checked here; `protojax.train.loop.validate_config` checks
    the ranges."""
    from protojax import config as config_lib

    if not name:
        raise UsageError("Pass --config=NAME (a file in experiments/configs/) or a path to a .py.")
    config = config_lib.load_config(name)
    config_lib.apply_overrides(config, overrides)
    # `NAME:ARG` (a config argument) names its default workdir NAME_ARG.
    base, _, arg = os.path.basename(name).partition(":")
    return config, "_".join(filter(None, (os.path.splitext(base)[0], arg)))


def explainer_names(flag: str) -> list[str]:
    """The comma-separated names of an --explainers flag, each one of protojax's explainers."""
    from protojax.explain import EXPLAINERS

    names = [name.strip() for name in flag.split(",") if name.strip()]
    unknown = [name for name in names if name not in EXPLAINERS]
    if unknown or not names:
        raise UsageError(
            f"Unknown explainer '{unknown[0] if unknown else ''}' in --explainers; use names "
            f"among {', '.join(EXPLAINERS)}."
        )
    return names


# PRP's LRP rules in the explain and evaluate launchers (`--prp_composite`); docs/fidelity.md
# gives the measurements behind the default.
PRP_COMPOSITE = "prp_zplus"
PRP_COMPOSITE_HELP = (
    "LRP composite of the PRP maps: prp_zplus (the official rules with z⁺ for Dense layers "
    "too, whose maps follow the digits' strokes) or prp (the official rules: ε for Dense layers)."
)


def check_prp_composite(flag: str) -> None:
    """Stops with a UsageError when --prp_composite names no LRP composite."""
    from protojax.explain import composite_by_name

    try:
        composite_by_name(flag)
    except ValueError as error:
        raise UsageError(f"--prp_composite: {error}") from None


def prp_options(flag: str, normalize, channels: int) -> dict:
    """PRP's `explain_all` options: the composite named by --prp_composite and the bounds of
    the model input's range."""
    from protojax.explain import input_bounds

    check_prp_composite(flag)
    return {"composite": flag, **input_bounds(normalize, channels)}


HELP_FLAGS = ("--help", "-h", "--helpfull", "-help")


def print_help() -> None:
    """The launcher's docstring, then its flags."""
    doc = getattr(sys.modules["__main__"], "__doc__", None) or ""
    print(f"{doc.strip()}\n\nflags:\n{flags.FLAGS.get_help()}")


# Marks a folder written by `replaced_folder`, which a later launch may replace whole.
OUTPUT_MARKER = ".protojax-output"


@contextlib.contextmanager
def replaced_folder(out: str | pathlib.Path, *, owned: bool = False) -> Iterator[pathlib.Path]:
    """A fresh staging folder beside `out` for one launch's outputs; when the block ends
    without an error it replaces `out` whole, so that what is on disk is exactly what this
    launch wrote (no files of an earlier, larger launch remain). On an error the staging
    folder is removed and `out` is left as it was.

    `owned`: `out` is the launcher's own default folder inside a workdir (such as
    WORKDIR/explanations), replaced even when an older launch left it without the mark that
    this function puts in the folders it writes.

    Raises:
      UsageError: `out` is a file, or a folder holding files that no launcher wrote (it is
        never replaced then).
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise UsageError(f"Output {out} is a file; pass a folder.")
    if not owned and out.is_dir() and any(out.iterdir()) and not (out / OUTPUT_MARKER).exists():
        raise UsageError(
            f"Output folder {out} holds files that no protojax launcher wrote; pass a new or "
            "empty folder, or move them away."
        )
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        staging = pathlib.Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    except OSError as error:
        raise ProtojaxError(f"Cannot write under {out.parent} ({error.strerror}).") from None
    staging.chmod(0o755)
    try:
        (staging / OUTPUT_MARKER).touch()
        yield staging
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    if out.exists():
        old = staging.with_name(staging.name + ".old")
        os.rename(out, old)
        os.rename(staging, out)
        shutil.rmtree(old)
    else:
        os.rename(staging, out)


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
    """Turns a ProtojaxError, an absl flag error or a failed file operation into one sentence
    on the last line, with exit code 2 for usage errors and 1 for data, file and checkpoint
    errors; Ctrl-C into one line (the engine's says where the run stands), exit code 130.
    For launchers only: after the line the process's output is closed (see `_fail`)."""
    try:
        yield
    except ProtojaxError as error:
        _fail(str(error), error.exit_code)
    except flags.Error as error:
        _fail(flag_error_sentence(error), UsageError.exit_code)
    except KeyboardInterrupt as error:
        _fail(str(error) or "interrupted; rerun the same command to resume", 130, label="")
    except OSError as error:
        if error.filename is None:
            raise
        _fail(
            f"{error.strerror or error} ({error.filename}); check the path and its permissions.",
            1,
        )


def _fail(message: str, code: int, *, label: str = "error: ") -> None:
    """Prints the sentence, then points stdout and stderr at /dev/null for the rest of the
    process: native threads and finalizers (TensorStore reads left in flight by a failed
    restore, asyncio tasks collected at shutdown) may still write, and nothing may follow the
    sentence."""
    sys.stdout.flush()
    print(f"{label}{message}", file=sys.stderr)
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
    """Runs `main(argv)` under the error contract, with the persistent compilation cache;
    `--help` (or -h) prints the launcher's docstring and flags instead, with exit code 0."""
    argv = sys.argv[1:]
    if set(HELP_FLAGS) & set(argv):
        print_help()
        raise SystemExit(0)
    setup_logging()
    drop_failed_read_leftovers()
    enable_compilation_cache()
    with error_contract():
        main(argv)


_ORBAX_DIR = f"{os.sep}orbax{os.sep}"


def drop_failed_read_leftovers() -> None:
    """Silences, for the rest of the launcher's process, the leftovers of a failed checkpoint
    read (the library leaves process-wide logging alone; a notebook gets the exception).

    When a read of a damaged checkpoint fails, Orbax stops awaiting its other reads and closes
    its event loop while TensorStore still has some in flight. What is left reports itself at
    any later time, before or after the error sentence: RuntimeError('Event loop is closed')
    from the reads' callbacks and the errors of Orbax read coroutines nobody awaits, as
    unraisable exceptions (seen on Python 3.12), and the same read errors in asyncio's "exception
    was never retrieved" log when their tasks are collected (seen on 3.11). Only these are
    dropped; anything else goes on as before."""
    previous = sys.unraisablehook
    if getattr(previous, "drops_failed_read_leftovers", False):
        return

    def hook(unraisable) -> None:
        error, source = unraisable.exc_value, unraisable.object
        if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
            return
        code = getattr(source, "cr_code", None)
        if code is not None and _ORBAX_DIR in code.co_filename:
            return
        previous(unraisable)

    hook.drops_failed_read_leftovers = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_drop_unretrieved_orbax_errors)


def _drop_unretrieved_orbax_errors(record: logging.LogRecord) -> bool:
    error = record.exc_info[1] if record.exc_info else None
    unretrieved = "exception was never retrieved" in str(record.msg)
    return not (unretrieved and error is not None and _raised_in_orbax(error))


def _raised_in_orbax(error: BaseException) -> bool:
    """Whether any frame of `error`'s traceback, or of the errors it was raised from, is
    Orbax code."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        frame = error.__traceback__
        while frame is not None:
            if _ORBAX_DIR in frame.tb_frame.f_code.co_filename:
                return True
            frame = frame.tb_next
        error = error.__cause__ or error.__context__
    return False
