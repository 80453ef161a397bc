"""KMEx on scikit-learn's digits (28 px), on the black box of blackbox_digits, 5 per class.

Command: python -m experiments.train --config=kmex_digits --workdir=workdirs/kmex_digits
Runtime: 10 minutes measured on 2 CPU cores at load ≈ 18; idle, about blackbox_digits' minute.
Expected: within 1 pp of blackbox_test_accuracy (0.992 vs 0.983 measured, seed 0).

Without model.source_workdir the black box (blackbox_digits' settings) trains first into
WORKDIR/blackbox; the k-means on its pooled training embeddings then takes seconds. Measured
(seed 0, /usr/bin/time 10:06 wall on 2 cores shared with other jobs): test_accuracy 0.9917
(nearest centroid), test_accuracy_soft 0.9889, blackbox_test_accuracy 0.9833, agreement with
the black box 0.9917, diversity_entropy 0.0150. To explain a black box already trained:
--config.model.source_workdir=workdirs/blackbox_digits (the data settings must match it).
"""

from experiments.configs.blackbox_digits import get_config as blackbox_digits
from experiments.configs.common import kmex_config


def get_config():
    return kmex_config(blackbox_digits())
