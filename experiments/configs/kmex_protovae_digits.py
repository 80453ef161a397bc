"""KMEx on a trained ProtoVAE (protovae_digits): 5 centroids per class in its μ space, beside
ProtoVAE's own 5 prototypes per class (compare `diversity_entropy` with
`source_diversity_entropy`, and `test_accuracy` with `blackbox_test_accuracy`, here the
ProtoVAE's own accuracy).

Command: python -m experiments.train --config=kmex_protovae_digits --workdir=workdirs/kmex_pvae
after python -m experiments.train --config=protovae_digits --workdir=workdirs/protovae_digits
(another ProtoVAE run: --config.model.source_workdir=DIR).
Runtime: under a minute after the ProtoVAE run (an embedding pass and the k-means).
Expected: not measured here.
"""

from experiments.configs.common import base_config
from experiments.configs.protovae_digits import get_config as protovae_digits


def get_config():
    config = base_config("kmex")
    config.data = protovae_digits().data
    config.model.source_workdir = "workdirs/protovae_digits"
    config.model.per_class = 5
    return config
