"""Pantypes on the 10-class QuickDraw set (quickdraw:PATH): 10 per class, 100 epochs.

Command: python -m experiments.train --config=pantypes_quickdraw --config.data.data_dir=DIR
Runtime: about 45 hours on 2 CPU cores (from the benchmarked step rate); GPU not measured.
Expected: test_accuracy close to ProtoVAE's 0.875.

Latent size, prototypes, batch and epochs follow the paper's appendix (Tables 2 and 3;
RuneDK93/pantypes); loss weights 1, 1, 1 and 1 for the volume term (orthonormality 0);
inputs are in [-1, 1].

data.name = quickdraw:quickdraw is relative, so the files are read from
DIR/quickdraw/<category>_small.npy (rows 0-7,999 train, 8,000-9,999 test per class).
As the official code, all 80,000 training rows train (data.val_fraction=0) and each
epoch's last partial batch is kept (data.drop_last=False).
"""

from experiments.configs.common import vae_config


def get_config():
    return vae_config("pantypes", "quickdraw", prototypes_per_class=10, epochs=100)
