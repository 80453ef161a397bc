"""KMEx on a trained ProtoVAE (protovae_digits): 5 centroids per class in its μ space.

Command: python -m experiments.train --config=kmex_protovae_digits --workdir=workdirs/kmex_pvae
Runtime: under a minute after protovae_digits (an embedding pass and the k-means).
Expected: close to the ProtoVAE's own accuracy (blackbox_test_accuracy); not measured here.

Train the source first: python -m experiments.train --config=protovae_digits
--workdir=workdirs/protovae_digits (another ProtoVAE run: --config.model.source_workdir=DIR).
summary.json compares KMEx's centroids with ProtoVAE's own 5 prototypes per class:
diversity_entropy against source_diversity_entropy, test_accuracy against
blackbox_test_accuracy (here the ProtoVAE's accuracy).
"""

from experiments.configs.common import base_config
from experiments.configs.protovae_digits import get_config as protovae_digits


def get_config():
    config = base_config("kmex")
    config.data = protovae_digits().data
    config.model.source_workdir = "workdirs/protovae_digits"
    config.model.per_class = 5
    return config
