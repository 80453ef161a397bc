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

from experiments.configs.common import base_config


def get_config():
    config = base_config("infodisent")
    config.data.name = "shapes"
    config.data.image_size = 64
    config.data.batch_size = 64
    config.data.eval_batch_size = 250
    config.model.backbone = "small_cnn_wide"
    # The black box trained first when model.source_workdir is empty: blackbox_shapes'
    # settings, without its horizontal flips (the data section is shared, and InfoDisent's
    # feature cache needs un-augmented images).
    config.model.source_epochs = 6
    config.model.source_lr = 2e-3
    config.optim.lr = 1e-2
    config.optim.unmixing_lr = 1e-3
    config.train.epochs = 10
    return config
