"""Pantypes on Fashion-MNIST (tfds:fashion_mnist): 5 per class, 100 epochs (appendix).

Command: python -m experiments.train --config=pantypes_fmnist
Runtime: about 11 hours on 2 CPU cores (from the benchmarked step rate); GPU not measured.
Expected: test_accuracy close to ProtoVAE's 0.919, with higher coverage.

Latent size, prototypes, batch and epochs follow the paper's appendix (Tables 2 and 3)
(RuneDK93/pantypes); loss weights 1, 1, 1 and 1 for the volume term (orthonormality 0);
inputs are in [-1, 1].

Prepare the data once with
  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR]
(with a DIR, train with --config.data.data_dir=DIR too). As the official code, the whole
training split trains (data.val_fraction=0) and each epoch's last partial batch is kept
(data.drop_last=False).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("pantypes", "fmnist", prototypes_per_class=5, epochs=100)
