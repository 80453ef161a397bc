"""Pantypes on Fashion-MNIST (tfds:fashion_mnist): 5 per class, 100 epochs (appendix).

Command: python -m experiments.train --config=pantypes_fmnist
Runtime: about 11 hours on 2 CPU cores (from the benchmarked step rate); GPU not measured.
Expected: test_accuracy close to ProtoVAE's 0.919, with higher coverage.

Latent size, prototypes, batch and epochs follow the paper's appendix (Tables 2 and 3)
(METHODS.md §3.3); loss weights 1, 1, 1 and 1 for the volume term (orthonormality 0);
inputs are in [-1, 1].

Prepare the data once with
  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR]
(with a DIR, train with --config.data.data_dir=DIR too). A stratified 10% of the training
split is held out as validation (data.val_fraction).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("pantypes", "fmnist", prototypes_per_class=5, epochs=100)
