"""ProtoVAE on scikit-learn's digits (28 px, the MNIST encoder/decoder): the quick start.

Command: python -m experiments.train --config=protovae_digits --workdir=workdirs/protovae_digits
Runtime: about 2.5 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 (0.972, 0.986 for seeds 0, 1), prototype_log_volume ≈ 5.8.

Figures in WORKDIR/figures: prototypes.png (each prototype decoded, one row per class),
reconstructions.png (test images above their reconstructions) and latent_pca.png (a 2-D PCA
of the test latents with the prototypes as stars). The 1,293 training images are upsampled
from 8×8; a latent of 32 with 5 prototypes per class, 20 epochs at batch 32 with small random
crops and rotations (benchmarks/training_runs_cpu.md). The official MNIST setting
(protovae_mnist) is latent 256, batch 128, 10 epochs, no augmentation.
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("protovae", "digits", prototypes_per_class=5, epochs=20)
