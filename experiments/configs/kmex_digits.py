"""KMEx on scikit-learn's digits (28 px): the black box of blackbox_digits, trained first into
WORKDIR/blackbox, then 5 centroids per class by k-means on its pooled training embeddings.

Command: python -m experiments.train --config=kmex_digits --workdir=workdirs/kmex_digits
Runtime: MEASURED
Expected: MEASURED

To explain a black box already trained, skip its training:
--config.model.source_workdir=workdirs/blackbox_digits (the data settings must match it).
"""

from experiments.configs.blackbox_digits import get_config as blackbox_digits
from experiments.configs.common import base_config


def get_config():
    config = base_config("kmex")
    bb = blackbox_digits()
    config.data = bb.data
    config.optim = bb.optim
    config.train = bb.train
    config.model.backbone = bb.model.backbone
    config.model.per_class = 5
    return config
