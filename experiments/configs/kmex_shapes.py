"""KMEx on the generated shapes set (64 px, 6 classes), on the black box of blackbox_shapes.

Command: python -m experiments.train --config=kmex_shapes --workdir=workdirs/kmex_shapes
Runtime: that of blackbox_shapes (about 15–20 minutes on 2 idle CPU cores) plus a minute.
Expected: within 1 pp of blackbox_test_accuracy (0.994 vs 0.995 measured, seed 0).

Without model.source_workdir the black box (blackbox_shapes' settings) trains first into
WORKDIR/blackbox, then 5 centroids per class are fitted on its pooled training embeddings.
With --config.model.source_workdir=workdirs/blackbox_shapes only the fit runs: measured on a
blackbox_shapes run (seed 0, test_accuracy 0.995), 125 s wall on 2 CPU cores (jit included):
test_accuracy 0.994 (nearest centroid and soft alike), agreement with the black box 0.999.
"""

from experiments.configs.blackbox_shapes import get_config as blackbox_shapes
from experiments.configs.common import kmex_config


def get_config():
    return kmex_config(blackbox_shapes())
