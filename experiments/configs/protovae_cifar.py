"""ProtoVAE on CIFAR-10 (tfds:cifar10) with the official settings and augmentation.

Command: python -m experiments.train --config=protovae_cifar
Runtime: about 12 hours on 2 CPU cores (benchmarks/protovae_cifar_cpu.md); GPU not measured.
Expected: test_accuracy ≈ 0.846 (paper 84.6).

Latent size, prototypes, batch, epochs and Adam 1e-3 follow the official settings.py
(SrishtiGautam/ProtoVAE); inputs are in [-1, 1].

Augmentation as the official code: horizontal flip and a random crop after 2 px of
padding, without colour jitter (the official ColorJitter() has no arguments: a no-op).

Prepare the data once with
  python -m experiments.prepare_data --dataset=cifar10 [--data_dir=DIR]
(with a DIR, train with --config.data.data_dir=DIR too). As the official code, the whole
training split trains (data.val_fraction=0) and each epoch's last partial batch is kept
(data.drop_last=False).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("protovae", "cifar", prototypes_per_class=10, epochs=36)
