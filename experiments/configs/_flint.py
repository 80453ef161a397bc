"""The official FLINT set-ups (jayneelparekh/FLINT `flint.py`): data source, batch,
normalisation, augmentation, networks, attributes, reconstruction loss, coefficient gating,
epochs and the training seed."""

from experiments.configs.common import base_config
from protojax.methods.flint import official_schedule

# source, image size, batch, normalisation, arch, J, reconstruction, epochs
_SETUPS = {
    "mnist": ("tfds:mnist", 28, 16, "none", "mnist", 25, "mse", 12),
    "fmnist": ("tfds:fashion_mnist", 28, 16, "none", "mnist", 25, "mse", 12),
    "quickdraw": ("quickdraw:quickdraw", 28, 64, "none", "quickdraw", 24, "mse", 12),
    "cifar10": ("tfds:cifar10", 32, 64, "cifar10", "cifar10", 36, "l1", 25),
}


def flint_config(dataset: str):
    source, size, batch, normalization, arch, attributes, reconstruction, epochs = _SETUPS[dataset]
    config = base_config("flint")
    config.seed = 121
    config.data.name = source
    config.data.image_size = size
    config.data.batch_size = batch
    config.data.normalization = normalization
    if source.startswith("tfds:"):
        # The official code trains on the whole training split and reports on the test split
        # after every epoch; nothing is selected on it.
        config.data.val_split = "test"
    model = config.model
    model.arch = arch
    model.num_attributes = attributes
    model.reconstruction = reconstruction
    model.schedule = official_schedule(dataset)
    if dataset in ("quickdraw", "cifar10"):
        model.visualise.relevance_threshold = 0.2
    if dataset == "cifar10":
        config.data.augment.crop_padding = 2
        # save_expl_images_class_cifar: 0.4 × the image, in normalised space [−2.5, 2.5].
        model.visualise.init_scale = 0.4
        model.visualise.lambda_tv = 20.0
        model.visualise.lambda_bound = 20.0
        model.visualise.bounds = (-2.5, 2.5)
    config.train.epochs = epochs
    return config
