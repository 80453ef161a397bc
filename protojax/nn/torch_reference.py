"""The real torchvision and timm models behind protojax's backbones, for the parity fixtures,
conversion from a random initialisation, and the CPU benchmarks.

PyTorch, torchvision and timm are imported only when a model is built:
- `pip install -e '.[torch]'` (a pinned CPU torch);
- `pip install --no-deps torchvision==0.28.0 timm==1.0.31 pyyaml huggingface_hub` (without
  `--no-deps`, pip would replace the pinned torch).

torchvision's compiled operators are built for another torch release, so `import torchvision`
fails while registering their meta kernels ("operator torchvision::nms does not exist").
`import_torchvision` first makes `torch.library.Library.impl` skip operators that do not exist;
none of the backbones uses them (they are detection ops such as nms and roi_align).
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

import numpy as np

from protojax.errors import ProtojaxError
from protojax.nn.resnet import RESNET_ARCHS, STEMS
from protojax.nn.vgg import POOL, VGG_CONFIGS


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
def _tolerate_missing_operators() -> None:
    torch = import_torch()
    register = torch.library.Library.impl

    def impl(self, *args, **kwargs):
        try:
            return register(self, *args, **kwargs)
        except RuntimeError as err:
            if "does not exist" not in str(err):
                raise
            return None  # a compiled operator of another torch build: unused here

    torch.library.Library.impl = impl


def import_torchvision() -> Any:
    """Returns `torchvision`, importable beside a torch it was not built for (module doc)."""
    _tolerate_missing_operators()
    try:
        import torchvision
    except ImportError as err:
        raise ProtojaxError(
            "torchvision is not installed; install it with `pip install --no-deps "
            "torchvision==0.28.0`."
        ) from err
    return torchvision


def import_timm() -> Any:
    """Returns `timm` (which imports torchvision when present)."""
    _tolerate_missing_operators()
    try:
        import timm
    except ImportError as err:
        raise ProtojaxError(
            "timm is not installed; install it with `pip install --no-deps timm==1.0.31 "
            "pyyaml huggingface_hub`."
        ) from err
    return timm


def torch_backbone(arch: str, config: Mapping[str, Any] | None = None) -> Any:
    """The real torchvision or timm model of `arch`, randomly initialised, in eval mode.

    Args:
      arch: a backbone name (`protojax.nn.backbone_names()`, except the small CNNs).
      config: None for the published architecture, or the reduced architecture in the terms
        of protojax's modules (their dataclass fields): VGG `layers` (0 = max-pool) and
        `batch_norm`; DenseNet `growth_rate`, `block_config`, `stem_width` and `bn_size`;
        ConvNeXt `depths` and `widths`; ViT `patch_size`, `width`, `depth`, `num_heads`,
        `mlp_dim` and `image_size`. ResNets take none (torchvision fixes their widths).
    """
    tv = import_torchvision()
    models = tv.models
    c = dict(config or {})
    if arch in RESNET_ARCHS:
        model = getattr(models, arch)()
    elif arch.startswith("vgg"):
        layers = c.get("layers", VGG_CONFIGS[arch.removesuffix("_bn")])
        cfg = ["M" if width == POOL else width for width in layers]
        batch_norm = c.get("batch_norm", arch.endswith("_bn"))
        model = models.vgg.VGG(models.vgg.make_layers(cfg, batch_norm=batch_norm))
    elif arch.startswith("densenet"):
        model = getattr(models, arch)() if not c else models.DenseNet(
            growth_rate=c["growth_rate"], block_config=tuple(c["block_config"]),
            num_init_features=c["stem_width"], bn_size=c.get("bn_size", 4),
        )  # fmt: skip
    elif arch.startswith("convnext"):
        if c:
            from torchvision.models.convnext import CNBlockConfig, ConvNeXt

            widths, depths = list(c["widths"]), list(c["depths"])
            nexts = [*widths[1:], None]
            setting = [CNBlockConfig(w, n, d) for w, n, d in zip(widths, nexts, depths)]
            model = ConvNeXt(setting, stochastic_depth_prob=0.0)
        else:
            model = getattr(models, arch)()
    elif arch == "vit_b_16":
        model = models.vit_b_16() if not c else models.VisionTransformer(
            image_size=c["image_size"], patch_size=c["patch_size"], num_layers=c["depth"],
            num_heads=c["num_heads"], hidden_dim=c["width"], mlp_dim=c["mlp_dim"],
        )  # fmt: skip
    elif arch.startswith("vit_"):
        timm = import_timm()
        if c:
            from timm.models.vision_transformer import VisionTransformer

            model = VisionTransformer(
                img_size=c["image_size"], patch_size=c["patch_size"], embed_dim=c["width"],
                depth=c["depth"], num_heads=c["num_heads"], mlp_ratio=c["mlp_dim"] / c["width"],
                dynamic_img_size=True,
            )  # fmt: skip
        else:
            model = timm.create_model(arch, pretrained=False, dynamic_img_size=True)
    else:
        raise ProtojaxError(f"No torchvision or timm reference for '{arch}'.")
    return model.eval()


def torch_features(model: Any, arch: str, images: np.ndarray) -> np.ndarray:
    """The map protojax's backbone `arch` returns, computed by the torch model.

    Args:
      model: from `torch_backbone(arch, ...)`.
      arch: its name.
      images: `[B, H, W, C]` float32.

    Returns:
      `[B, h, w, c]` float32: the map before global pooling (the patch tokens after the final
      norm for ViTs).
    """
    torch = import_torch()
    x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
    with torch.no_grad():
        if arch in RESNET_ARCHS:
            m = model
            y = m.layer4(m.layer3(m.layer2(m.layer1(m.maxpool(m.relu(m.bn1(m.conv1(x))))))))
        elif arch.startswith("densenet"):
            y = torch.nn.functional.relu(model.features(x))
        elif arch.startswith(("vgg", "convnext")):
            y = model.features(x)
        elif arch == "vit_b_16":
            tokens = model._process_input(x)
            cls = model.class_token.expand(tokens.shape[0], -1, -1)
            tokens = model.encoder(torch.cat([cls, tokens], dim=1))
            y = _token_map(tokens, images, model.patch_size)
        else:
            y = _token_map(model.forward_features(x), images, model.patch_embed.patch_size[0])
        if y.ndim == 4 and not arch.startswith("vit_"):
            y = y.permute(0, 2, 3, 1)
    return np.ascontiguousarray(y.numpy().astype(np.float32))


def _token_map(tokens: Any, images: np.ndarray, patch: int) -> Any:
    """`[B, 1 + h·w, D]` tokens → the patch tokens as `[B, h, w, D]`."""
    batch, height, width, _ = images.shape
    return tokens[:, 1:].reshape(batch, height // patch, width // patch, -1)


def torch_resnet(
    name: str,
    *,
    stem: str = "imagenet",
    num_classes: int = 1000,
    seed: int = 0,
    randomize_batch_norm: bool = False,
) -> Any:
    """torchvision's ResNet in eval mode, initialised from `seed`, with a `features` method.

    Args:
      name: `resnet18` … `resnet152`.
      stem: `imagenet` (torchvision's) or `cifar` (conv1 replaced by a 3×3/1 conv, no max-pool).
      num_classes: outputs of the `fc` classifier.
      seed: the torch seed of the initialisation; the global torch RNG is left untouched.
      randomize_batch_norm: draw every BN's weight ~ U[0.5, 1.5), bias ~ N(0, 0.1²), running
        mean ~ N(0, 0.1²) and running var ~ U[0.5, 2), so that a parity check exercises every
        BN tensor rather than the identity statistics of a fresh model.

    Returns:
      torchvision's `ResNet` (a subclass adding `features(x) -> layer4 map`, both NCHW).
    """
    if name not in RESNET_ARCHS:
        raise ProtojaxError(f"Unknown ResNet '{name}'; use one of {', '.join(RESNET_ARCHS)}.")
    if stem not in STEMS:
        raise ProtojaxError(f"Unknown stem '{stem}'; use one of {', '.join(STEMS)}.")
    torch = import_torch()
    resnet = import_torchvision().models.resnet

    class FeatureResNet(resnet.ResNet):
        def features(self, x):
            """`[B, 3, H, W]` → the layer4 map `[B, C, h, w]` (NCHW)."""
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            return self.layer4(self.layer3(self.layer2(self.layer1(x))))

    block, stage_sizes = RESNET_ARCHS[name]
    torch_block = resnet.BasicBlock if block.expansion == 1 else resnet.Bottleneck
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = FeatureResNet(torch_block, list(stage_sizes), num_classes=num_classes)
        if stem == "cifar":
            model.conv1 = torch.nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
            torch.nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
            model.maxpool = torch.nn.Identity()
        if randomize_batch_norm:
            with torch.no_grad():
                for module in model.modules():
                    if isinstance(module, torch.nn.BatchNorm2d):
                        module.weight.uniform_(0.5, 1.5)
                        module.bias.normal_(0.0, 0.1)
                        module.running_mean.normal_(0.0, 0.1)
                        module.running_var.uniform_(0.5, 2.0)
    return model.eval()
