"""A minimal PyTorch ResNet mirroring torchvision's, for conversion tests and benchmarks.

Its `state_dict` keys, shapes and initialisation equal torchvision's `resnet18` …
`resnet152` (v1.5 bottleneck, Kaiming-normal fan-out convs, BN weight 1 and bias 0, no
zero-initialised residual BN), so a parity check against it stands in for torchvision where
torchvision is not installed. PyTorch is imported only when a model is built; install it with
`pip install -e '.[torch]'`.
"""

from __future__ import annotations

import functools
from typing import Any

from protojax.errors import ProtojaxError
from protojax.nn.resnet import RESNET_ARCHS, STEMS, BasicBlock


def import_torch() -> Any:
    """Returns the `torch` module, or stops with the command that installs it."""
    try:
        import torch
    except ImportError as err:
        raise ProtojaxError(
            "PyTorch is not installed; install it with `pip install -e '.[torch]'` "
            "(a pinned CPU build)."
        ) from err
    return torch


@functools.cache
def _classes() -> tuple[type, type, type]:
    """Defines the torch modules on first use, so that importing this file needs no torch."""
    torch = import_torch()
    tnn = torch.nn

    def conv(cin: int, cout: int, kernel: int, stride: int = 1) -> Any:
        return tnn.Conv2d(cin, cout, kernel, stride=stride, padding=kernel // 2, bias=False)

    def downsample(cin: int, cout: int, stride: int) -> Any:
        if stride == 1 and cin == cout:
            return None
        return tnn.Sequential(conv(cin, cout, 1, stride), tnn.BatchNorm2d(cout))

    class TorchBasicBlock(tnn.Module):
        expansion = 1

        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            self.conv1 = conv(cin, width, 3, stride)
            self.bn1 = tnn.BatchNorm2d(width)
            self.relu = tnn.ReLU(inplace=True)
            self.conv2 = conv(width, width, 3)
            self.bn2 = tnn.BatchNorm2d(width)
            self.downsample = downsample(cin, width, stride)

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            return self.relu(self.bn2(self.conv2(y)) + shortcut)

    class TorchBottleneck(tnn.Module):
        expansion = 4

        def __init__(self, cin: int, width: int, stride: int):
            super().__init__()
            self.conv1 = conv(cin, width, 1)
            self.bn1 = tnn.BatchNorm2d(width)
            self.conv2 = conv(width, width, 3, stride)
            self.bn2 = tnn.BatchNorm2d(width)
            self.conv3 = conv(width, width * 4, 1)
            self.bn3 = tnn.BatchNorm2d(width * 4)
            self.relu = tnn.ReLU(inplace=True)
            self.downsample = downsample(cin, width * 4, stride)

        def forward(self, x):
            shortcut = x if self.downsample is None else self.downsample(x)
            y = self.relu(self.bn1(self.conv1(x)))
            y = self.relu(self.bn2(self.conv2(y)))
            return self.relu(self.bn3(self.conv3(y)) + shortcut)

    class TorchResNet(tnn.Module):
        def __init__(self, block: type, stage_sizes: tuple[int, ...], stem: str, classes: int):
            super().__init__()
            if stem == "imagenet":
                self.conv1 = tnn.Conv2d(3, 64, 7, stride=2, padding=3, bias=False)
                self.maxpool = tnn.MaxPool2d(3, stride=2, padding=1)
            else:
                self.conv1 = tnn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
                self.maxpool = tnn.Identity()
            self.bn1 = tnn.BatchNorm2d(64)
            self.relu = tnn.ReLU(inplace=True)
            cin = 64
            for stage, num_blocks in enumerate(stage_sizes, start=1):
                width = 64 * 2 ** (stage - 1)
                blocks = []
                for index in range(num_blocks):
                    blocks.append(block(cin, width, 2 if stage > 1 and index == 0 else 1))
                    cin = width * block.expansion
                setattr(self, f"layer{stage}", tnn.Sequential(*blocks))
            self.avgpool = tnn.AdaptiveAvgPool2d((1, 1))
            self.fc = tnn.Linear(cin, classes)
            for module in self.modules():
                if isinstance(module, tnn.Conv2d):
                    tnn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                elif isinstance(module, tnn.BatchNorm2d):
                    tnn.init.ones_(module.weight)
                    tnn.init.zeros_(module.bias)

        def features(self, x):
            """`[B, 3, H, W]` → the layer4 map `[B, C, h, w]` (NCHW)."""
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

        def forward(self, x):
            """`[B, 3, H, W]` → logits `[B, classes]`, as torchvision's ResNet."""
            return self.fc(torch.flatten(self.avgpool(self.features(x)), 1))

    return TorchBasicBlock, TorchBottleneck, TorchResNet


def torch_resnet(
    name: str,
    *,
    stem: str = "imagenet",
    num_classes: int = 1000,
    seed: int = 0,
    randomize_batch_norm: bool = False,
) -> Any:
    """Builds a torch ResNet in eval mode, initialised as torchvision's from `seed`.

    Args:
      name: `resnet18` … `resnet152`.
      stem: `imagenet` (torchvision's) or `cifar` (conv3×3/1, no max-pool).
      num_classes: outputs of the `fc` classifier.
      seed: the torch seed of the initialisation; the global torch RNG is left untouched.
      randomize_batch_norm: draw every BN's weight ~ U[0.5, 1.5), bias ~ N(0, 0.1²), running
        mean ~ N(0, 0.1²) and running var ~ U[0.5, 2), so that a parity check exercises every
        BN tensor rather than the identity statistics of a fresh model.

    Returns:
      A `torch.nn.Module` with torchvision's `state_dict` keys, `forward(x) -> logits` and
      `features(x) -> layer4 map`, both NCHW.
    """
    if name not in RESNET_ARCHS:
        raise ProtojaxError(f"Unknown ResNet '{name}'; use one of {', '.join(RESNET_ARCHS)}.")
    if stem not in STEMS:
        raise ProtojaxError(f"Unknown stem '{stem}'; use one of {', '.join(STEMS)}.")
    torch = import_torch()
    basic, bottleneck, resnet_class = _classes()
    block, stage_sizes = RESNET_ARCHS[name]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = resnet_class(
            basic if block is BasicBlock else bottleneck, stage_sizes, stem, num_classes
        )
        if randomize_batch_norm:
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.normal_(0.0, 0.1)
                        module.running_mean.normal_(0.0, 0.1)
                        module.running_var.uniform_(0.5, 2.0)
    return model.eval()
