"""ProtoVAE on scikit-learn's digits (28 px, the MNIST encoder/decoder): the quick start.

Command: python -m experiments.train --config=protovae_digits --workdir=workdirs/protovae_digits
Runtime: about 2.5 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 (0.972 measured), prototype_log_volume ≈ 6.4.

Figures in WORKDIR/figures: prototypes.png (each prototype decoded, one row per class),
reconstructions.png (test images above their reconstructions) and latent_pca.png (a 2-D PCA
of the test latents with the prototypes as stars). The 1,293 training images are upsampled
from 8×8, and a latent of 32 with 5 prototypes per class trained for 15 epochs at batch 32
suffices; the official MNIST setting (protovae_mnist) is latent 256, batch 128, 10 epochs.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("protovae")
    config.data.name = "digits"
    config.data.image_size = 28
    config.data.normalization = "symmetric"
    config.data.batch_size = 32
    config.model.arch = "mnist"
    config.model.latent_dim = 32
    config.model.prototypes_per_class = 5
    config.train.epochs = 15
    return config
