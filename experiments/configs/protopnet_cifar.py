"""ProtoPNet on CIFAR-10 (tfds:cifar10, 32 px) with a ResNet-18 (CIFAR stem) from scratch.

Command: python -m experiments.train --config=protopnet_cifar --config.data.data_dir=DIR
Runtime: not measured (no GPU here); 91 epochs of 351 steps at batch 128.
Expected: not established (no official CIFAR-10 setting); below blackbox_cifar's ≈ 0.95.

The official stage structure and learning rates (warm 5, push from epoch 10 every 10 epochs, 20
last-layer epochs after each push, StepLR(5, 0.1) on the joint stage) with 10 prototypes per
class of depth 128. With the CIFAR stem the ResNet-18 gives a 4×4 latent grid at 32 px. There
are no ImageNet weights at this size, so the backbone learns from scratch at 1e-3 rather than
the official fine-tuning rate of 1e-4. Flip and 4-pixel-crop augmentation; a stratified 10% of
the training split is held out as validation. Duplicate prototypes after push are a known
outcome on CIFAR-10 with small latent grids (fanconic/this-does-not-look-like-that issue #4).

Before running: `python -m experiments.prepare_data --dataset=cifar10 --data_dir=DIR`. The
run is 31 ProtoPNet epochs plus 3 × 20 last-layer epochs.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("protopnet")
    config.data.name = "tfds:cifar10"
    config.data.image_size = 32
    config.data.batch_size = 128
    config.data.eval_batch_size = 500
    config.data.normalization = "symmetric"
    config.data.val_fraction = 0.1
    config.data.augment.crop_padding = 4
    config.data.augment.hflip = True
    config.model.backbone = "resnet18"
    config.model.stem = "cifar"
    config.model.prototypes_per_class = 10
    config.model.prototype_dim = 128
    config.model.push_batch_size = 500
    config.optim.joint_backbone_lr = 1e-3
    config.train.epochs = 31
    return config
