"""FLINT on Fashion-MNIST (tfds:fashion_mnist) with the official settings.

Command: python -m experiments.train --config=flint_fmnist
Runtime: not measured (12 epochs of 3,750 steps at batch 16).
Expected: f accuracy near the black box, fidelity ≥ ~0.9 (paper Table 1; not verified here).

MNIST's networks, coefficients and schedule (see flint_mnist); [0, 1] inputs, batch 16,
12 epochs, seed 121.

Prepare the data once with
  python -m experiments.prepare_data --dataset=fashion_mnist [--data_dir=DIR]
"""

from experiments.configs._flint import flint_config


def get_config():
    return flint_config("fmnist")
