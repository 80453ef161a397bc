"""ProtoPNet on CUB-200-2011 (224 px, ResNet-34, 2,000 prototypes of depth 256), official schedule.

Command: python -m experiments.train --config=protopnet_cub --config.data.data_dir=DIR
Runtime: not measured (no GPU here); about 200k steps of batch 80 (benchmarks/protopnet_cub_cpu.md)
Expected: test_accuracy ≈ 0.79 (paper, ResNet-34 on box-cropped CUB: 79.2); not run here.

The official settings (cfchen-duke/ProtoPNet) with 2,000 prototypes of depth 256, the
ResNet-34 member of the official ensemble, on the birds cropped to their boxes: the recipe,
where its data differs from the official data, and the other backbones
(`--config=protopnet_cub:vgg19`, …) are those of `protopnet_fine_grained_config`
(experiments/configs/common.py). One epoch is 30 passes over the 5,994 training images.

Before running: `python -m experiments.prepare_data --dataset=caltech_birds2011 --data_dir=DIR`
and convert the ImageNet weights of the backbone (common.py names the command).
"""

from experiments.configs.common import protopnet_fine_grained_config


def get_config(backbone: str = "resnet34"):
    return protopnet_fine_grained_config("tfds:caltech_birds2011", backbone)
