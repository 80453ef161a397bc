"""FLINT on scikit-learn's digits (28 px), a quick CPU run with MNIST's networks and gating.

Command: python -m experiments.train --config=flint_digits --workdir=workdirs/flint_digits
Runtime: about 3 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 (f) and fidelity ≥ 0.90.

The official MNIST set-up (networks, J = 25, batch 16, [0, 1] inputs, the MNIST coefficient
gating and Adam 1e-4 re-created at 4e-5 from epoch 19) on 1,293 training images: 24 epochs
so that the optimizer reset runs, with light augmentation because the set is small.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("flint")
    config.data.name = "digits"
    config.data.image_size = 28
    config.data.batch_size = 16
    config.data.eval_batch_size = 128
    config.data.augment.crop_padding = 2
    config.data.augment.rotation_degrees = 10.0
    config.train.epochs = 24
    config.seed = 121
    return config
