"""Pantypes on scikit-learn's digits (28 px, the MNIST encoder/decoder).

Command: python -m experiments.train --config=pantypes_digits --workdir=workdirs/pantypes_digits
Runtime: about 3 minutes on 2 CPU cores.
Expected: test_accuracy ≥ 0.95 (0.972, 0.978 for seeds 0, 1), log volume ≈ 6.4 (> protovae's 5.8).

The settings of protovae_digits (latent 32, 5 prototypes per class, 20 epochs at batch 32,
small random crops and rotations) with the volume term in place of orthonormality. After every
epoch metrics.jsonl gets an event with the out-of-distribution prototypes per class,
Davies–Bouldin, coverage and prototype_log_volume; --config.model.eliminate_at_epoch=E
eliminates the out-of-distribution prototypes after epoch E. Figures as protovae_digits,
eliminated prototypes crossed out.
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("pantypes", "digits", prototypes_per_class=5, epochs=20)
