"""Black-box reference: ResNet-18 (CIFAR stem) on CIFAR-10 from TFDS.

Command: python -m experiments.train --config=blackbox_cifar --workdir=workdirs/blackbox_cifar
Runtime: not measured here (no GPU); 200 epochs of 352 steps, see benchmarks/ for step rates.
Expected: test_accuracy ≈ 0.95 (the usual ResNet-18 result with this recipe; not run here).
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("blackbox")
    config.data.name = "tfds:cifar10"
    config.data.image_size = 32
    config.data.batch_size = 128
    config.data.eval_batch_size = 512
    config.data.normalization = "symmetric"
    config.data.val_fraction = 0.1
    config.data.augment.crop_padding = 4
    config.data.augment.hflip = True
    config.model.backbone = "resnet18"
    config.model.stem = "cifar"
    config.optim.kind = "sgd"
    config.optim.lr = 0.1
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "cosine"
    config.train.epochs = 200
    return config
