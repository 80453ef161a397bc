"""ProtoPNet on scikit-learn's digits (12 px): warm, joint, push and last-layer stages on CPU.

Command: python -m experiments.train --config=protopnet_digits --workdir=workdirs/protopnet_digits
Runtime: about 2 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 after push and the last-layer epochs (0.975 measured, seed 0).

The official stage structure, shortened: warm-up 2 epochs, joint epochs 2–14 with the StepLR
decay after 7 of them, a push after epoch 14, then 10 last-layer epochs. The backbone starts
from scratch (there are no ImageNet weights at this size), so it learns at 2e-3 rather than
the official fine-tuning rate of 1e-4; and the last-layer stage, about 200 times shorter than
the official one, learns at 3e-3 rather than 1e-4. At 12 px the small CNN gives a 3×3 latent
grid whose cells see overlapping parts of the digit.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("protopnet")
    config.data.name = "digits"
    config.data.image_size = 12
    config.data.batch_size = 64
    config.data.eval_batch_size = 256
    config.model.backbone = "small_cnn"
    config.model.prototypes_per_class = 5
    config.model.prototype_dim = 32
    config.model.push_batch_size = 256
    config.model.warm_epochs = 2
    config.model.push_start = 14
    config.model.push_every = 14
    config.model.last_layer_epochs = 10
    config.train.epochs = 15
    config.optim.joint_backbone_lr = 2e-3
    config.optim.joint_step_size = 8
    config.optim.last_layer_lr = 3e-3
    return config
