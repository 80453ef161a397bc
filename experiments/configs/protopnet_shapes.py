"""ProtoPNet on the shapes set (64 px, 6 classes), its backbone seeded from blackbox_shapes.

Command: python -m experiments.train --config=protopnet_shapes (after blackbox_shapes, below)
Runtime: about 14 minutes on 2 shared CPU cores (measured), after blackbox_shapes.
Expected: test_accuracy ≥ 0.9 after push and the last-layer epochs (0.928 measured, seed 0).

Run `python -m experiments.train --config=blackbox_shapes --workdir=workdirs/blackbox_shapes`
first, from the same directory. ProtoPNet starts from a pretrained backbone (the official code
from ImageNet weights); here from the backbone of the black box trained in
workdirs/blackbox_shapes (model.backbone_weights names that workdir). Without it the run stops
and says so. From a random backbone the prototypes of every class settled on the cluttered
background that every image shares (0.33 validation accuracy after 3 joint epochs).

The official stage structure, shortened: warm-up 1 epoch (add-ons and prototypes), joint
epochs 1–2 at the official fine-tuning rates, a push after epoch 2, then 3 last-layer epochs.
Measured (seed 0): test accuracy 0.785 before push, 0.716 right after it, 0.928 after the
last-layer epochs (benchmarks/training_runs_cpu.md). At 64 px the wide small CNN's three
stages give an 8×8 latent grid, so prototypes are parts of shapes (corners, arcs, stroke ends)
whose localisation the masks make measurable.
"""

from experiments.configs.common import base_config


def get_config():
    config = base_config("protopnet")
    config.data.name = "shapes"
    config.data.image_size = 64
    config.data.batch_size = 64
    config.data.eval_batch_size = 250
    config.data.augment.hflip = True
    config.model.backbone = "small_cnn_wide"
    config.model.backbone_weights = "workdirs/blackbox_shapes"
    config.model.prototypes_per_class = 10
    config.model.prototype_dim = 64
    config.model.push_batch_size = 250
    config.model.warm_epochs = 1
    config.model.push_start = 2
    config.model.push_every = 2
    config.model.last_layer_epochs = 3
    config.train.epochs = 3
    config.optim.last_layer_lr = 3e-3
    return config
