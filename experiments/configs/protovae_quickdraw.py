"""ProtoVAE on the official 10-class QuickDraw set (quickdraw:PATH).

Command: python -m experiments.train --config=protovae_quickdraw --config.data.data_dir=DIR
Runtime: about 4.5 hours on 2 CPU cores (from the benchmarked step rate); GPU not measured.
Expected: test_accuracy ≈ 0.875 (paper 87.5).

Latent size, prototypes, batch, epochs and Adam 1e-3 follow the official settings.py
(SrishtiGautam/ProtoVAE); inputs are in [-1, 1].

data.name = quickdraw:quickdraw is relative, so the files are read from
DIR/quickdraw/<category>_small.npy (rows 0-7,999 train, 8,000-9,999 test per class).
As the official code, all 80,000 training rows train (data.val_fraction=0) and each
epoch's last partial batch is kept (data.drop_last=False).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("protovae", "quickdraw", prototypes_per_class=10, epochs=10)
