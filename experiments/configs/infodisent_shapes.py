"""InfoDisent on the shapes set (64 px, 6 classes), explaining a blackbox_shapes black box.

Command: python -m experiments.train --config=infodisent_shapes --workdir=workdirs/infodisent_shapes
Runtime: about 38 minutes on 2 shared CPU cores, 36 of them training its black box first.
Expected: test_accuracy within 3 pp of the black box (0.997 measured, its black box 0.997).

With model.source_workdir empty the run first trains the black box of this config (the wide
small CNN, Adam 2e-3, cosine, 6 epochs, as blackbox_shapes but without its flips) into
WORKDIR/blackbox; --config.model.source_workdir=workdirs/blackbox_shapes explains an existing
one (then about 1.5 minutes). The head trains 10 epochs on the cached 8×8×128 feature maps.
Measured (seed 0, 2026-12-06): test accuracy 0.997 beside the black box's 0.997; feature pass
19 s, 780 head steps 37 s; 86% of W's entries non-zero.
"""

from experiments.configs.blackbox_shapes import get_config as blackbox_shapes
from experiments.configs.common import infodisent_config


def get_config():
    config = infodisent_config(blackbox_shapes(), epochs=10)
    # Without blackbox_shapes' horizontal flips: the data section is shared with the black
    # box trained first, and InfoDisent's feature cache needs un-augmented images.
    config.data.augment.hflip = False
    config.data.eval_batch_size = 250
    return config
