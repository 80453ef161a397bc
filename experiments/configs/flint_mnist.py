"""FLINT on MNIST (tfds:mnist) with the official settings.

Command: python -m experiments.train --config=flint_mnist
Runtime: not measured (12 epochs of 3,750 steps at batch 16).
Expected: f accuracy near the black box, fidelity ≥ ~0.9 (paper Table 1; not verified here).

The official set-up: Net2_MNIST_old, attr_MNIST (J = 25) and decode_MNIST; [0, 1] inputs,
batch 16, 12 epochs, seed 121; rec 0.8, expl 0.5·[e > 2], spa 0.1·[e > 2], ent 0.2·[e > 4];
Adam 1e-4 (the re-creation at epoch 19 is beyond 12 epochs). It trains on the whole training
split; the test split stands in as validation, as the official code reports it every epoch.

Prepare the data once with
  python -m experiments.prepare_data --dataset=mnist [--data_dir=DIR]
"""

from experiments.configs._flint import flint_config


def get_config():
    return flint_config("mnist")
