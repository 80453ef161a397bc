"""ProtoVAE on Fashion-MNIST (tfds:fashion_mnist) with the official settings.

Command: python -m experiments.train --config=protovae_fmnist
Runtime: about 1 hour on 2 CPU cores (from the benchmarked step rate); GPU not measured.
Expected: test_accuracy ≈ 0.919 (paper 91.9).

Latent size, prototypes, batch, epochs and Adam 1e-3 follow the official settings.py
(SrishtiGautam/ProtoVAE); inputs are in [-1, 1].

Prepare the data once with
  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR]
(with a DIR, train with --config.data.data_dir=DIR too). As the official code, the whole
training split trains (data.val_fraction=0) and each epoch's last partial batch is kept
(data.drop_last=False).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("protovae", "fmnist", prototypes_per_class=10, epochs=10)
