"""Builds a config from the library's defaults (`protojax.runs.default_config`): the
engine's `train`, the data layer's `data`, and the method's `model` and `optim` sections."""

from protojax.config import ConfigDict
from protojax.errors import UsageError
from protojax.runs import default_config as base_config

# The data set-ups of the official ProtoVAE and Pantypes code (main.py and settings.py of
# SrishtiGautam/ProtoVAE and RuneDK93/pantypes):
# source, image size, encoder/decoder pair, latent size, batch, and CIFAR's augmentation
# (horizontal flip and a 2-px padded crop; its ColorJitter() without arguments is a no-op).
_VAE_DATA = {
    "digits": ("digits", 28, "mnist", 32, 32),
    "mnist": ("tfds:mnist", 28, "mnist", 256, 128),
    "fmnist": ("tfds:fashion_mnist", 28, "mnist", 256, 128),
    "cifar": ("tfds:cifar10", 32, "cifar10", 512, 128),
    "svhn": ("tfds:svhn_cropped", 32, "svhn", 512, 64),
    "quickdraw": ("quickdraw:quickdraw", 28, "quickdraw", 512, 128),
}


def vae_config(method: str, dataset: str, *, prototypes_per_class: int, epochs: int) -> ConfigDict:
    """A ProtoVAE or Pantypes config on one of `_VAE_DATA`'s set-ups; inputs in [-1, 1].

    The official set-ups train on the whole training split and keep each epoch's last partial
    batch (a DataLoader without drop_last, main.py); the digits set-up keeps its validation
    split."""
    source, image_size, arch, latent_dim, batch_size = _VAE_DATA[dataset]
    config = base_config(method)
    config.data.name = source
    config.data.image_size = image_size
    config.data.normalization = "symmetric"
    config.data.batch_size = batch_size
    if dataset == "cifar":
        config.data.augment.hflip = True
        config.data.augment.crop_padding = 2
    if dataset != "digits":
        config.data.val_fraction = 0.0
        config.data.drop_last = False
    if dataset == "digits":
        # Not an official set-up: 1,293 upsampled 8×8 images overfit without it (test
        # accuracy 0.94 after 15 epochs unaugmented, 0.97–0.99 with it).
        config.data.augment.crop_padding = 2
        config.data.augment.rotation_degrees = 10.0
    config.model.arch = arch
    config.model.latent_dim = latent_dim
    config.model.prototypes_per_class = prototypes_per_class
    config.optim.lr = 1e-3
    config.train.epochs = epochs
    return config


# The backbones of the ProtoPNet paper's CUB table (Chen et al. 2019, table 1) → prototype
# depth D. The official settings.py default is VGG-19 with D = 128; the ensemble notebook
# (combine_models.ipynb) pairs ResNet-34 with D = 256 and VGG-19 and DenseNet-121 with 128;
# the others keep the settings.py default. Every one uses the regular add-on at 224 px.
PROTOPNET_BACKBONES = {
    "vgg16": 128,
    "vgg19": 128,
    "resnet34": 256,
    "resnet152": 128,
    "densenet121": 128,
    "densenet161": 128,
}


def protopnet_fine_grained_config(source: str, backbone: str = "resnet34") -> ConfigDict:
    """ProtoPNet at 224 px as the official CUB code runs it (cfchen-duke/ProtoPNet): box-cropped
    images, anisotropic resize, ImageNet normalisation, batch 80/100/75, 10 prototypes per class
    of the backbone's depth (`PROTOPNET_BACKBONES`), regular add-on layers, the official
    stages, and ×30 online passes of the official Augmentor mix (rotate, skew or shear, and a
    flip) standing in for its 30 offline copies. The weights are read from
    `weights/{backbone}_imagenet.npz`."""
    if backbone not in PROTOPNET_BACKBONES:
        raise UsageError(
            f"Unknown ProtoPNet backbone '{backbone}' in the config argument; use one of "
            f"{', '.join(PROTOPNET_BACKBONES)} (others: --config.model.backbone=NAME)."
        )
    config = base_config("protopnet")
    config.data.name = source
    config.data.crop_to_box = True
    config.data.image_size = 224
    config.data.batch_size = 80
    config.data.eval_batch_size = 100
    config.data.normalization = "imagenet"
    config.data.val_split = "test"
    config.data.augment.augmentor_mix = True
    config.data.augment.hflip = True
    config.model.backbone = backbone
    config.model.backbone_weights = f"weights/{backbone}_imagenet.npz"
    config.model.prototypes_per_class = 10
    config.model.prototype_dim = PROTOPNET_BACKBONES[backbone]
    config.model.add_on_layers = "regular"
    config.model.push_batch_size = 75
    config.model.passes_per_epoch = 30
    config.train.epochs = 31
    config.train.eval_every_epochs = 30
    return config


def infodisent_fine_grained_config(source: str) -> ConfigDict:
    """InfoDisent at 224 px on a frozen ImageNet ResNet-50 (converted into model.backbone_weights):
    whole images resized to 224×224, ImageNet normalisation, no augmentation, so that the
    backbone's training feature maps are cached once and the head trains on them."""
    config = base_config("infodisent")
    config.data.name = source
    config.data.image_size = 224
    config.data.batch_size = 64
    config.data.eval_batch_size = 128
    config.data.normalization = "imagenet"
    config.data.val_fraction = 0.0
    config.model.backbone = "resnet50"
    config.model.backbone_weights = "weights/resnet50_imagenet.npz"
    config.optim.lr = 1e-3
    config.optim.unmixing_lr = 1e-4
    config.train.epochs = 30
    return config
