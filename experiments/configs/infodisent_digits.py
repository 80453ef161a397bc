"""InfoDisent on scikit-learn's digits (28 px), explaining a blackbox_digits black box.

Command: python -m experiments.train --config=infodisent_digits --workdir=workdirs/infodisent_digits
Runtime: about 5 minutes on 2 shared CPU cores (black box 3.7 min, then the head 1.5 min).
Expected: test_accuracy within 3 pp of the black box (0.992 measured beside its 0.983, seed 0).

With model.source_workdir empty the run first trains the black box of this config, with
blackbox_digits' settings (small CNN, Adam 2e-3, cosine, 12 epochs), into WORKDIR/blackbox
and freezes its backbone; --config.model.source_workdir=workdirs/blackbox_digits explains an
existing one instead. The head (A and W) trains 20 epochs on the cached feature maps.
Measured (seed 0, 2026-12-06): InfoDisent test accuracy 0.9917, its black box 0.9833
(summary.json's blackbox_test_accuracy); U orthogonal to 5e-7; 70% of W's entries non-zero.
The uncached run (model.cache_features=off) reaches the same accuracy in 1.85× the time
(benchmarks/infodisent_cache.md).
"""

from experiments.configs.blackbox_digits import get_config as blackbox_digits
from experiments.configs.common import infodisent_config


def get_config():
    return infodisent_config(blackbox_digits(), epochs=20)
