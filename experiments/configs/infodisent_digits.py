"""InfoDisent on scikit-learn's digits (28 px), explaining the blackbox_digits black box.

Command: python -m experiments.train --config=infodisent_digits --workdir=workdirs/infodisent_digits
Runtime: TBD
Expected: TBD
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("infodisent")
    config.data.name = "digits"
    config.data.image_size = 28
    config.data.batch_size = 64
    config.model.backbone = "small_cnn"
    # The black box trained first when model.source_workdir is empty: blackbox_digits' settings.
    config.model.source_epochs = 12
    config.model.source_lr = 2e-3
    config.optim.lr = 1e-2
    config.optim.unmixing_lr = 1e-3
    config.train.epochs = 20
    return config
