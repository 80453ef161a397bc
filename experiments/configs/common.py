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
    """ProtoPNet at 224 px as the official CUB code runs it (cfchen-duke/ProtoPNet), on the
    TFDS set `source` with the backbone `backbone` (a key of `PROTOPNET_BACKBONES`).

    Official settings: batch 80 (train), 100 (test), 75 (push); 10 prototypes per class of the
    backbone's depth D; regular add-on layers; warm 5, push from epoch 10 every 10 epochs, 20
    last-layer epochs after each push; Adam lrs and StepLR(5, 0.1) from settings.py; ImageNet
    normalisation and an anisotropic resize to 224×224.

    Differences from the official data, to know when comparing: the TFDS images are cropped to
    the object's box (data.crop_to_box), as the official preprocessing does, but the official
    ×30 offline Augmentor copies (img_aug.py: a third rotated ±15°, a third skewed, a third
    sheared ±10°, each flipped at random) are drawn online instead (data.augment.augmentor_mix
    and hflip), with one ProtoPNet epoch = 30 passes (model.passes_per_epoch) so that every
    stage keeps its official number of steps; the originals are trained on only through these
    copies, as officially. The test split is evaluated once per ProtoPNet epoch as the
    official code does (it is data.val_split; nothing is selected on it). The run is 31
    ProtoPNet epochs plus 3 × 20 last-layer epochs, each of 30 passes over the training split.

    Backbones (a config's argument, `--config=NAME:ARCH`): those of the paper's CUB table, each
    with the official regular add-on, 224-px input and its prototype depth D: `vgg19` (the
    official code's default, D = 128), `resnet34` (the default here, D = 256, as in the
    official ensemble), `densenet121` (D = 128), and `vgg16`, `resnet152`, `densenet161`
    (D = 128). Each reads its weights from `weights/ARCH_imagenet.npz`, converted with
    `python -m experiments.convert_weights --arch=ARCH --torch_checkpoint=PTH
    --out=weights/ARCH_imagenet.npz`; the default workdir is `workdirs/NAME_ARCH`. Without
    the converted weights file the run stops and names the conversion command; pass
    --config.model.allow_random_init=true to train from scratch."""
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
    """InfoDisent at 224 px on a frozen ImageNet ResNet-50, on the TFDS set `source`: whole
    images resized to 224×224, ImageNet normalisation, no augmentation, so that the
    backbone's training feature maps are cached once and the head trains on them.

    Convert the backbone first (`python -m experiments.convert_weights --arch=resnet50
    --torch_checkpoint=PTH --out=weights/resnet50_imagenet.npz`) and prepare the data (`python
    -m experiments.prepare_data --dataset=NAME --data_dir=DIR`). Without the weights file the
    run stops and names the conversion command; --config.model.allow_random_init=true runs
    from a random backbone (the tests do, under TFDS mock data). There is no black box of
    these data to compare with, so blackbox_test_accuracy is null; point model.source_workdir
    at a trained black box of the same data and backbone (and clear model.backbone_weights) to
    explain it instead. The optimiser settings are ours (Adam, 1e-3 for W, 1e-4 for A, cosine,
    30 epochs): the paper's were not checked."""
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


def kmex_config(blackbox: ConfigDict, *, per_class: int = 5) -> ConfigDict:
    """KMEx on the black box that the black-box config `blackbox` trains: its data, backbone,
    optimiser and epochs (the black box trains first when model.source_workdir is empty), and
    `per_class` centroids per class."""
    config = base_config("kmex")
    config.data = blackbox.data
    config.optim = blackbox.optim
    config.train = blackbox.train
    config.model.backbone = blackbox.model.backbone
    config.model.per_class = per_class
    return config


def infodisent_config(blackbox: ConfigDict, *, epochs: int) -> ConfigDict:
    """InfoDisent on the black box that the black-box config `blackbox` trains: its data and
    backbone, and its learning rate and epochs as model.source_lr and model.source_epochs (the
    black box trains first when model.source_workdir is empty). The head trains `epochs`
    epochs at Adam 1e-2 for W and 1e-3 for A."""
    config = base_config("infodisent")
    config.data = blackbox.data
    config.model.backbone = blackbox.model.backbone
    config.model.source_epochs = blackbox.train.epochs
    config.model.source_lr = blackbox.optim.lr
    config.optim.lr = 1e-2
    config.optim.unmixing_lr = 1e-3
    config.train.epochs = epochs
    return config
