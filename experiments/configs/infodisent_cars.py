"""InfoDisent on Stanford Cars (224 px) over a frozen ImageNet ResNet-50 (196 classes).

Command: python -m experiments.train --config=infodisent_cars --config.data.data_dir=DIR
Runtime: not measured (no GPU here); one ResNet-50 pass over 8,144 images, then 30 head epochs.
Expected: test_accuracy near a fine-tuned ResNet-50 (paper's claim; not verified, not run here).

The backbone is ImageNet's ResNet-50, frozen: convert it first (`python -m
experiments.convert_weights --arch=resnet50 --torch_checkpoint=PTH
--out=weights/resnet50_imagenet.npz`) and prepare the data (`python -m experiments.prepare_data
--dataset=cars196 --data_dir=DIR`). Without the weights file the run stops and names the
conversion command; --config.model.allow_random_init=true runs from a random backbone (the
tests do, under TFDS mock data). There is no black box of this data to compare with, so
blackbox_test_accuracy is null; point model.source_workdir at a trained black box of the same
data and backbone (and clear model.backbone_weights) to explain it instead. The optimiser
settings are ours (Adam, 1e-3 for W, 1e-4 for A, cosine, 30 epochs): the paper's were not
checked.
"""

from experiments.configs.common import infodisent_fine_grained_config


def get_config():
    return infodisent_fine_grained_config("tfds:cars196")
