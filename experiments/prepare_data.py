"""Prepares a TFDS dataset as ArrayRecord files, for `data.name=tfds:NAME`.

    python -m experiments.prepare_data --dataset=cifar10 --data_dir=~/tensorflow_datasets

This is the one step that needs network access, and it needs TensorFlow for datasets with
`Image` features (nearly every image dataset: TFDS encodes images with TensorFlow while it
prepares them). Install it with the `tf` extra first: `pip install -e '.[tf]'`. Reading the
prepared files afterwards needs neither network nor TensorFlow. Datasets whose files must be
downloaded by hand take `--manual_dir`. An empty `--data_dir` means TFDS's default
(`$TFDS_DATA_DIR`, else `~/tensorflow_datasets`).

`python -m experiments.train` runs the same preparation by itself when `data.download` is on
(the default) and the run has one process. On failure the last line printed is one sentence
saying what went wrong; the exit code is 2 for an unknown dataset name and 1 otherwise.
"""

from __future__ import annotations

from absl import flags

from experiments import cli
from protojax.errors import UsageError


def _define_flags() -> dict[str, flags.FlagHolder]:
    """Defines the flags when run as a script, so that importing this module defines none."""
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
    name, overrides = cli.parse_flags(argv)
    if name or overrides:
        raise UsageError("prepare_data takes no --config; pass --dataset=NAME.")
    options = {key: holder.value for key, holder in holders.items()}
    if not options["dataset"]:
        raise UsageError("Pass --dataset=NAME, a TFDS dataset name such as cifar10.")
    from protojax.data.tfds_source import prepare_tfds

    directory = prepare_tfds(options["dataset"], options["data_dir"], options["manual_dir"])
    print(f"Prepared {options['dataset']} as ArrayRecord in {directory}.")


if __name__ == "__main__":
    _holders = _define_flags()
    cli.run_launcher(lambda argv: main(argv, _holders))
