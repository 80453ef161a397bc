"""FLINT on scikit-learn's digits (28 px), a quick CPU run with MNIST's networks and gating.

Command: python -m experiments.train --config=flint_digits --workdir=workdirs/flint_digits
Runtime: about 3 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 (f) and fidelity ≥ 0.90.

MNIST's networks (J = 25), [0, 1] inputs and coefficient gating on 1,293 training images, with
light augmentation because the set is small. Not an official set-up: batch 32 and Adam 1e-3,
re-created at 4e-4 from epoch 16 (the official 1e-4 → 4e-5 at epoch 19, scaled to 20 epochs;
at 1e-4 the few steps leave f near 0.90).
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("flint")
    config.data.name = "digits"
    config.data.image_size = 28
    config.data.batch_size = 32
    config.data.eval_batch_size = 128
    config.data.augment.crop_padding = 2
    config.data.augment.rotation_degrees = 10.0
    config.train.epochs = 20
    config.optim.lr = 1e-3
    config.optim.reset_epoch = 16
    config.optim.reset_lr = 4e-4
    config.seed = 121
    return config
