"""Black-box reference: a small CNN on the generated shapes set (64 px, 6 classes).

Command: python -m experiments.train --config=blackbox_shapes --workdir=workdirs/blackbox_shapes
Runtime: about 15–20 minutes on 2 idle CPU cores (29 CPU-minutes measured).
Expected: test_accuracy ≥ 0.9 (0.997 measured, seed 0).
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("blackbox")
    config.data.name = "shapes"
    config.data.image_size = 64
    config.data.batch_size = 64
    config.data.augment.hflip = True
    config.model.backbone = "small_cnn_wide"
    config.optim.lr = 2e-3
    config.optim.schedule = "cosine"
    config.train.epochs = 6
    return config
