"""FLINT on CIFAR-10 (tfds:cifar10) with the official settings.

Command: python -m experiments.train --config=flint_cifar
Runtime: not measured (25 epochs of 782 steps at batch 64 with a BN-free ResNet-18).
Expected: f accuracy near the black box, fidelity ≥ ~0.9 (paper Table 1; not verified here).

The official set-up: MyResNet (version '34', no BatchNorm, 3 channels), attr_RN18_multi
(J = 36) and decode_CIFAR with an L1 reconstruction; inputs normalised with FLINT's CIFAR-10
mean and std; a random 32-px crop after 2 px of padding; batch 64, 25 epochs, seed 121;
rec 2, expl 0.6·[e > 2], spa 0.001·[e > 1] + 0.149·[e > 2], ent 0.2·[e > 3]; Adam 1e-4,
re-created with lr 4e-5 at epoch 19 (phase `epochs19-25`, optimizer `adam_reset`).

Prepare the data once with
  python -m experiments.prepare_data --dataset=cifar10 [--data_dir=DIR]
"""

from experiments.configs._flint import flint_config


def get_config():
    return flint_config("cifar10")
