"""InfoDisent on Stanford Dogs (224 px) over a frozen ImageNet ResNet-50 (120 classes).

Command: python -m experiments.train --config=infodisent_dogs --config.data.data_dir=DIR
Runtime: not measured (no GPU here); one ResNet-50 pass over 12,000 images, then 30 head epochs.
Expected: test_accuracy near a fine-tuned ResNet-50 (paper's claim; not verified, not run here).

The recipe, the weights to convert and how to explain a trained black box instead are
`infodisent_fine_grained_config`'s (experiments/configs/common.py); prepare the data with
`python -m experiments.prepare_data --dataset=stanford_dogs --data_dir=DIR`. Stanford Dogs'
images come from ImageNet, so an ImageNet backbone may have seen its test images: read its
accuracy with that in mind.
"""

from experiments.configs.common import infodisent_fine_grained_config


def get_config():
    return infodisent_fine_grained_config("tfds:stanford_dogs")
