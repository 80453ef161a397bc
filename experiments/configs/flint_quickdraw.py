"""FLINT on the official 10-class QuickDraw set (quickdraw:PATH) with the official settings.

Command: python -m experiments.train --config=flint_quickdraw --config.data.data_dir=DIR
Runtime: not measured (12 epochs of 1,125 steps at batch 64 with a BN-free ResNet-18).
Expected: f accuracy near the black box, fidelity ≥ ~0.9 (paper Table 1; not verified here).

The official set-up: MyResNet (version '34', no BatchNorm), attr_RN18_multi (J = 24) and
decode2_MNIST; [0, 1] inputs, batch 64, 12 epochs, seed 121; rec 5, expl 0.1·[e > 2],
spa 0.02·[e > 1] + 0.28·[e > 2], ent 0.1·[e > 3]; Adam 1e-4.

data.name = quickdraw:quickdraw is relative: the files are read from
DIR/quickdraw/<category>_small.npy (rows 0-7,999 train, 8,000-9,999 test per class). The
data layer holds out a stratified 10% of the training rows as validation (the official code
trains on all 8,000).
"""

from experiments.configs._flint import flint_config


def get_config():
    return flint_config("quickdraw")
