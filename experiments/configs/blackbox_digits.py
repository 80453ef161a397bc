"""Black-box reference: a small CNN on scikit-learn's digits (28 px).

Command: python -m experiments.train --config=blackbox_digits --workdir=workdirs/blackbox_digits
Runtime: about 1 minute on 2 CPU cores.
Expected: test_accuracy ≥ 0.97.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("blackbox")
    config.data.name = "digits"
    config.data.image_size = 28
    config.data.batch_size = 64
    config.model.backbone = "small_cnn"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.train.epochs = 12
    return config
