"""KMEx on CIFAR-10 (tfds:cifar10, 32 px) on the official black box, an ImageNet ResNet-34.

Command: python -m experiments.train --config=kmex_cifar --workdir=workdirs/kmex_cifar
Runtime: not measured (no GPU here); 30 black-box epochs of 390 steps at batch 128.
Expected: test_accuracy close to blackbox_test_accuracy (the paper's claim; not run here).

The black box is a torchvision ResNet-34, ImageNet-pretrained, its pooled 512-d embedding and
a linear head, fine-tuned as the official code does (SrishtiGautam/KMEx `main.py`,
`utils/builders.py`, `utils/common.py::train`); then one embedding pass over the 50,000
training images and 5 centroids per class.

Official settings kept: the whole training split (no validation split), batch 128 with the
last partial batch dropped, a horizontal flip and a 2-pixel padded crop, SGD with lr 0.01 and
momentum 0.5, no weight decay, a per-step cosine from 0.01 to 1e-4 over 30 epochs, and the
ImageNet stem at 32 px (the last stage's grid is 1×1).

Before running: `python -m experiments.prepare_data --dataset=cifar10 --data_dir=DIR` and the
torchvision ImageNet weights converted with `python -m experiments.convert_weights
--arch=resnet34 --torch_checkpoint=PTH --out=weights/resnet34_imagenet.npz`.

Known bug of the official code, not reproduced: its CIFAR-10 normalisation constants
(`utils/dataloader_nrm.py::NRM['cifar10']`, mean ≈ 0.997 and std ≈ 0.032 per channel) are
not CIFAR-10's statistics (about 0.49 and 0.25): the official inputs are shifted to about −31
and scaled by about 31. This config uses the ImageNet statistics the pretrained ResNet-34 was
trained with. The official head is bias-free; this black box's head has a bias.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("kmex")
    config.data.name = "tfds:cifar10"
    config.data.image_size = 32
    config.data.batch_size = 128
    config.data.eval_batch_size = 500
    config.data.normalization = "imagenet"
    config.data.val_fraction = 0.0
    config.data.augment.hflip = True
    config.data.augment.crop_padding = 2
    config.model.backbone = "resnet34"
    config.model.stem = "imagenet"
    config.model.backbone_weights = "weights/resnet34_imagenet.npz"
    config.model.per_class = 5
    config.optim.kind = "sgd"
    config.optim.lr = 0.01
    config.optim.momentum = 0.5
    config.optim.schedule = "cosine"
    config.optim.final_lr_fraction = 0.01
    config.train.epochs = 30
    return config
