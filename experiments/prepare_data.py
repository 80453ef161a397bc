"""Prepares a TFDS dataset as ArrayRecord files, for `data.name=tfds:NAME`.

    python -m experiments.prepare_data --dataset=cifar10 --data_dir=~/tensorflow_datasets

This is the one step that needs network access, and it needs TensorFlow for datasets with
`Image` features (nearly every image dataset: TFDS encodes images with TensorFlow while it
prepares them). Install it with the `tf` extra first: `pip install -e '.[tf]'`. Reading the
prepared files afterwards needs neither network nor TensorFlow. Datasets whose files must be
downloaded by hand take `--manual_dir`. An empty `--data_dir` means TFDS's default
(`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).

On failure the last line printed is one sentence saying what went wrong; the exit code is 2
for an unknown dataset name and 1 otherwise.
"""

from __future__ import annotations

from absl import app, flags

from experiments.cli import error_contract, setup_logging
from protojax.errors import DataError


def prepare(dataset: str, data_dir: str = "", manual_dir: str = "") -> str:
    """Downloads and prepares `dataset` as ArrayRecord; returns the directory written."""
    import tensorflow_datasets as tfds

    from protojax.data.tfds_source import find_builder

    builder = find_builder(dataset, data_dir or None, file_format="array_record")
    download_config = tfds.download.DownloadConfig(manual_dir=manual_dir or None)
    try:
        builder.download_and_prepare(file_format="array_record", download_config=download_config)
    except ModuleNotFoundError as error:
        if "tensorflow" not in str(error):
            raise
        raise DataError(
            f"Preparing TFDS dataset '{dataset}' needs TensorFlow; install it with "
            "pip install -e '.[tf]' and run this command again."
        ) from error
    except Exception as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else repr(error)
        raise DataError(
            f"Could not prepare TFDS dataset '{dataset}' in {builder.data_dir_root} ({reason}); "
            "check the network connection and --manual_dir."
        ) from error
    return str(builder.data_dir)


def _define_flags() -> dict[str, flags.FlagHolder]:
    """Defines the flags when run as a script, so that importing `prepare` defines none."""
    return {
        "dataset": flags.DEFINE_string("dataset", None, "TFDS dataset name, e.g. cifar10."),
        "data_dir": flags.DEFINE_string(
            "data_dir", "", "TFDS data directory (empty: TFDS's default)."
        ),
        "manual_dir": flags.DEFINE_string(
            "manual_dir", "", "Folder of manually downloaded files, for datasets that need them."
        ),
    }


def main(argv: list[str], holders: dict[str, flags.FlagHolder]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {' '.join(argv[1:])}.")
    options = {name: holder.value for name, holder in holders.items()}
    setup_logging()
    with error_contract():
        directory = prepare(**options)
    print(f"Prepared {options['dataset']} as ArrayRecord in {directory}.")


if __name__ == "__main__":
    _holders = _define_flags()
    flags.mark_flags_as_required(["dataset"])
    app.run(lambda argv: main(argv, _holders))
