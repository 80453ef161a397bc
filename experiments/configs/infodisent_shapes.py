"""InfoDisent on the shapes set (64 px, 6 classes), explaining a blackbox_shapes black box.

Command: python -m experiments.train --config=infodisent_shapes --workdir=workdirs/infodisent_shapes
Runtime: TBD
Expected: TBD
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("infodisent")
    config.data.name = "shapes"
    config.data.image_size = 64
    config.data.batch_size = 64
    config.data.eval_batch_size = 250
    config.model.backbone = "small_cnn_wide"
    # The black box trained first when model.source_workdir is empty: blackbox_shapes'
    # settings, without its horizontal flips (the data section is shared, and InfoDisent's
    # feature cache needs un-augmented images).
    config.model.source_epochs = 6
    config.model.source_lr = 2e-3
    config.optim.lr = 1e-2
    config.optim.unmixing_lr = 1e-3
    config.train.epochs = 10
    return config
