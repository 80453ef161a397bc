"""ProtoPNet on CUB-200-2011 (224 px, ResNet-34, 2,000 prototypes of depth 256), official schedule.

Command: python -m experiments.train --config=protopnet_cub --config.data.data_dir=DIR
Runtime: not measured (no GPU here); about 200k steps of batch 80 (benchmarks/protopnet_cub_cpu.md)
Expected: test_accuracy ≈ 0.79 (paper, ResNet-34 on box-cropped CUB: 79.2); not run here.

Official settings (cfchen-duke/ProtoPNet): batch 80 (train), 100 (test), 75 (push); 2,000
prototypes of depth 256 (the ResNet-34 member of the official ensemble); regular add-on layers;
warm 5, push from epoch 10 every 10 epochs, 20 last-layer epochs after each push; Adam lrs and
StepLR(5, 0.1) from settings.py; ImageNet normalisation and an anisotropic resize to 224×224.

Differences from the official data, to know when comparing: the TFDS images are cropped to the
bird's box (data.crop_to_box), as the official preprocessing does, but the official ×30 offline
Augmentor copies (img_aug.py: a third rotated ±15°, a third skewed, a third sheared ±10°, each
flipped at random) are drawn online instead (data.augment.augmentor_mix and hflip), with one
ProtoPNet epoch = 30 passes (model.passes_per_epoch) so that every stage keeps its official
number of steps; the originals are trained on only through these copies, as officially. The
test split is evaluated once per ProtoPNet epoch as the official code does (it is
data.val_split; nothing is selected on it).

Backbones: the config argument picks one of the backbones of the paper's CUB table, each with
the official regular add-on, 224-px input and its prototype depth D
(experiments/configs/common.py): `--config=protopnet_cub:vgg19` (the official code's default,
D = 128), `:resnet34` (the default here, D = 256, as in the official ensemble), `:densenet121`
(D = 128), and `:vgg16`, `:resnet152`, `:densenet161` (D = 128). Each reads its weights from
`weights/ARCH_imagenet.npz`, converted as below with `--arch=ARCH`; the default workdir is
`workdirs/protopnet_cub_ARCH`.

Without the converted weights file the run stops and names the conversion command; pass
--config.model.allow_random_init=true to train from scratch.

Before running: `python -m experiments.prepare_data --dataset=caltech_birds2011 --data_dir=DIR`
and convert ImageNet weights into model.backbone_weights (`python -m
experiments.convert_weights --arch=resnet34 --torch_checkpoint=PTH
--out=weights/resnet34_imagenet.npz`). The run is 31 ProtoPNet epochs plus 3 × 20
last-layer epochs, each of 30 passes over 5,994 images at batch 80.
"""

from experiments.configs.common import protopnet_fine_grained_config


def get_config(backbone: str = "resnet34"):
    return protopnet_fine_grained_config("tfds:caltech_birds2011", backbone)
