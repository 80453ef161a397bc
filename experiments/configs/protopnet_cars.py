"""ProtoPNet on Stanford Cars (224 px, ResNet-34, 1,960 prototypes of depth 256), official schedule.

Command: python -m experiments.train --config=protopnet_cars --config.data.data_dir=DIR
Runtime: not measured (no GPU here); about 280k steps of batch 80; benchmarks/protopnet_cub_cpu.md
Expected: not established for one ResNet-34 (paper: a 3-model ensemble, 91.4, unverified).

The official repository has no settings for Cars: this is its CUB recipe
(`protopnet_fine_grained_config`, experiments/configs/common.py, which also lists the other
backbones, `--config=protopnet_cars:vgg19`, …, and where the data differs from the official
data) with 1,960 prototypes of depth 256, as the ResNet-34 member of the official ensemble,
on the cars cropped to their boxes. One epoch is 30 passes over the 8,144 training images.

Before running: `python -m experiments.prepare_data --dataset=cars196 --data_dir=DIR` and
convert the ImageNet weights of the backbone (common.py names the command).
"""

from experiments.configs.common import protopnet_fine_grained_config


def get_config(backbone: str = "resnet34"):
    return protopnet_fine_grained_config("tfds:cars196", backbone)
