"""FLINT's networks, as the official code builds them per dataset (jayneelparekh/FLINT,
`networks.py` and `resnet_torch2.py`).

Four parts: the predictor f (a classifier that also returns the hidden maps named in
`return_layers`), the attribute function Φ reading one or two of those maps, and the decoder
d reconstructing the image from Φ(x). (The interpreter h, a dropout and a linear layer, is
built with them in `FlintNet`.) `flint_architecture(name)` gives the official triple:

- `mnist` (MNIST, fMNIST): f = `SmallPredictor` (Net2_MNIST_old); Φ = `ConvAttributes`
  (attr_MNIST) on its `features` map; d = `MnistDecoder` (decode_MNIST).
- `quickdraw`: f = `ResNetPredictor` (MyResNet, version '34', no BN); Φ = `MultiAttributes`
  (attr_RN18_multi) on `layer3` and `layer4_0`; d = `DenseDecoder` (decode2_MNIST).
- `cifar10`: the same f and Φ on 3 channels; d = `DenseDecoder` (decode_CIFAR).

Layers are initialised as PyTorch's defaults (weights and biases uniform in ±1/√fan_in), so
that the official learning rates behave as they did there. Flattening follows NHWC order
where torch flattens NCHW, a permutation of learned weights that computes the same family of
functions.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from protojax.errors import UsageError

# torch.nn.init.kaiming_uniform_(a=√5), the default of Linear and Conv2d: U(±1/√fan_in).
_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# ConvTranspose2d's torch weight is [C_in, C_out, k, k], whose "fan_in" is C_out·k².
_TRANSPOSE_KERNEL = nn.initializers.variance_scaling(
    1.0 / 3.0, "fan_in", "uniform", in_axis=-1, out_axis=-2
)


def _bias(fan_in: int):
    bound = 1.0 / math.sqrt(fan_in)

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return init


def dense(features: int, fan_in: int, name: str | None = None) -> nn.Dense:
    """`torch.nn.Linear(fan_in, features)`."""
    return nn.Dense(features, kernel_init=_KERNEL, bias_init=_bias(fan_in), name=name)


def conv(
    features: int, fan_in: int, *, stride: int = 1, use_bias: bool = True, name=None
) -> nn.Conv:
    """`torch.nn.Conv2d(fan_in, features, 3, stride, padding=1)`."""
    return nn.Conv(
        features,
        (3, 3),
        strides=(stride, stride),
        padding=((1, 1), (1, 1)),
        use_bias=use_bias,
        kernel_init=_KERNEL,
        bias_init=_bias(fan_in * 9),
        name=name,
    )


def conv_transpose(features: int, name: str | None = None) -> nn.ConvTranspose:
    """`torch.nn.ConvTranspose2d(C, features, 3, stride=2, padding=1, output_padding=1)`:
    `[B, H, W, C]` → `[B, 2H, 2W, features]` (the stride-dilated input padded by k−1−p = 1
    before and k−1−p+output_padding = 2 after)."""
    return nn.ConvTranspose(
        features,
        (3, 3),
        strides=(2, 2),
        padding=((1, 2), (1, 2)),
        kernel_init=_TRANSPOSE_KERNEL,
        bias_init=_bias(features * 9),
        name=name,
    )


def adaptive_avg_pool(x: jax.Array, size: int) -> jax.Array:
    """`torch.nn.AdaptiveAvgPool2d(size)`: `[B, H, W, C]` → `[B, size, size, C]`.

    Bin i covers rows ⌊i·H/size⌋ … ⌈(i+1)·H/size⌉ − 1, so bins overlap when size does not
    divide H (14 → 3: rows 0–4, 4–9, 9–13).
    """

    def pooling_matrix(n: int) -> np.ndarray:
        m = np.zeros((size, n), np.float32)
        for i in range(size):
            start, end = (i * n) // size, -(-(i + 1) * n // size)
            m[i, start:end] = 1.0 / (end - start)
        return m

    rows, cols = pooling_matrix(x.shape[1]), pooling_matrix(x.shape[2])
    return jnp.einsum("ih,jw,bhwc->bijc", rows, cols, x, precision=jax.lax.Precision.HIGHEST)


class PredictorOutput(NamedTuple):
    """logits `[B, K]`; embedding `[B, d]`, the input of the last linear layer; layers: the
    hidden maps named by the predictor's `return_layers`."""

    logits: jax.Array
    embedding: jax.Array
    layers: dict[str, jax.Array]


class SmallPredictor(nn.Module):
    """Net2_MNIST_old: conv3×3(16) ReLU conv3×3(32) max-pool 2 dropout(0.5) ReLU → the map
    `features` `[B, H/2, W/2, 32]` → FC(128) ReLU (the embedding) dropout(0.5) FC(K)."""

    num_classes: int
    return_layers: Sequence[str] = ("features",)

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> PredictorOutput:
        c = images.shape[-1]
        x = nn.relu(conv(16, c, name="conv1")(images))
        x = conv(32, 16, name="conv2")(x)
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
        features = nn.relu(nn.Dropout(0.5, deterministic=not train)(x))
        flat = features.reshape(features.shape[0], -1)
        embedding = nn.relu(dense(128, flat.shape[-1], name="fc1")(flat))
        hidden = nn.Dropout(0.5, deterministic=not train)(embedding)
        logits = dense(self.num_classes, 128, name="fc2")(hidden)
        return PredictorOutput(logits, embedding, _pick({"features": features}, self.return_layers))


class PlainBlock(nn.Module):
    """resnet_torch2's BasicBlock2/3: the ResNet basic block without BatchNorm."""

    features: int
    stride: int = 1

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        y = nn.relu(conv(self.features, c, stride=self.stride, use_bias=False, name="conv1")(x))
        y = conv(self.features, self.features, use_bias=False, name="conv2")(y)
        if self.stride != 1 or c != self.features:
            x = nn.Conv(
                self.features,
                (1, 1),
                strides=(self.stride, self.stride),
                use_bias=False,
                kernel_init=_KERNEL,
                name="shortcut",
            )(x)
        return nn.relu(y + x)


class ResNetPredictor(nn.Module):
    """MyResNet(version='34', bn=False): a ResNet-18 without BatchNorm on 28–32 px images.

    conv3×3(64) ReLU, four stages of two `PlainBlock`s (64, 128, 256, 512; strides 1, 2, 2,
    2), 4×4 average pooling, FC(512→512) ReLU (the embedding), FC(512→K).

    Hidden maps: `stem`, `layer1` … `layer4`, and `layer4_0`, the output of layer4's first
    block. The official Φ reads `layer3` and `layer4_0`: its ResNet_34 returns, as "layer4",
    the input of layer4's last block (each BasicBlock3 passes its input along beside its
    output).
    """

    num_classes: int
    return_layers: Sequence[str] = ("layer3", "layer4_0")

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool = False) -> PredictorOutput:
        del train  # no dropout nor BatchNorm
        x = nn.relu(conv(64, images.shape[-1], use_bias=False, name="conv1")(images))
        layers = {"stem": x}
        for stage, (width, stride) in enumerate(((64, 1), (128, 2), (256, 2), (512, 2)), 1):
            x = PlainBlock(width, stride, name=f"layer{stage}_0")(x)
            if stage == 4:
                layers["layer4_0"] = x
            x = PlainBlock(width, 1, name=f"layer{stage}_1")(x)
            layers[f"layer{stage}"] = x
        pooled = nn.avg_pool(x, (4, 4), strides=(4, 4))
        flat = pooled.reshape(pooled.shape[0], -1)
        embedding = nn.relu(dense(512, flat.shape[-1], name="fc")(flat))
        logits = dense(self.num_classes, 512, name="fc2")(embedding)
        return PredictorOutput(logits, embedding, _pick(layers, self.return_layers))


def _pick(layers: dict[str, jax.Array], names: Sequence[str]) -> dict[str, jax.Array]:
    unknown = [n for n in names if n not in layers]
    if unknown:
        raise UsageError(
            f"Unknown hidden layer(s) {unknown}; this predictor has {', '.join(layers)}."
        )
    return {name: layers[name] for name in names}


class ConvAttributes(nn.Module):
    """attr_MNIST: conv3×3(64) LeakyReLU → adaptive average pool 3×3 → FC(J) LeakyReLU.
    Reads one map `[B, h, w, c]`; returns Φ(x) `[B, J]`."""

    num_attributes: int

    @nn.compact
    def __call__(self, layers: Sequence[jax.Array]) -> jax.Array:
        (x,) = layers
        x = nn.leaky_relu(conv(64, x.shape[-1], name="conv1")(x))
        x = adaptive_avg_pool(x, 3).reshape(x.shape[0], -1)
        return nn.leaky_relu(dense(self.num_attributes, x.shape[-1], name="fc1")(x))


class MultiAttributes(nn.Module):
    """attr_RN18_multi: conv3×3 stride 2 (64) ReLU on the first map, conv3×3 (64) ReLU on
    the second, concatenated → conv3×3 (64) ReLU → adaptive average pool 3×3 → FC(J) ReLU.
    Reads two maps whose grids match after the first's stride 2; returns Φ(x) `[B, J]`."""

    num_attributes: int
    mid_maps: int = 64

    @nn.compact
    def __call__(self, layers: Sequence[jax.Array]) -> jax.Array:
        first, second = layers
        a = nn.relu(conv(self.mid_maps, first.shape[-1], stride=2, name="conv1")(first))
        b = nn.relu(conv(self.mid_maps, second.shape[-1], name="conv2")(second))
        x = nn.relu(
            conv(self.mid_maps, 2 * self.mid_maps, name="conv3")(jnp.concatenate([a, b], -1))
        )
        x = adaptive_avg_pool(x, 3).reshape(x.shape[0], -1)
        return nn.relu(dense(self.num_attributes, x.shape[-1], name="fc1")(x))


class MnistDecoder(nn.Module):
    """decode_MNIST: FC(J → 2·(H/4)·(W/4)) → `[H/4, W/4, 2]` → ConvT(8) ReLU → ConvT(C) ReLU.
    Φ(x) `[B, J]` → `[B, H, W, C]`."""

    image_shape: tuple[int, int, int]

    @nn.compact
    def __call__(self, attributes: jax.Array) -> jax.Array:
        h, w, c = _quarter(self.image_shape)
        x = dense(h * w * 2, attributes.shape[-1], name="fc1")(attributes)
        x = nn.relu(conv_transpose(8, name="trconv1")(x.reshape(-1, h, w, 2)))
        return nn.relu(conv_transpose(c, name="trconv2")(x))


class DenseDecoder(nn.Module):
    """decode2_MNIST and decode_CIFAR: FC(J → m·(H/4)·(W/4)) → ConvT(c1) ReLU → ConvT(c2) ReLU
    → FC(H·W·C), then ReLU for decode2_MNIST (`final_relu`). The official settings are
    (m, c1, c2) = (2, 4, 8) on 28 px QuickDraw and (10, 24, 8) on 32 px CIFAR-10."""

    image_shape: tuple[int, int, int]
    maps: tuple[int, int, int] = (2, 4, 8)
    final_relu: bool = True

    @nn.compact
    def __call__(self, attributes: jax.Array) -> jax.Array:
        h, w, _ = _quarter(self.image_shape)
        m, c1, c2 = self.maps
        x = dense(h * w * m, attributes.shape[-1], name="fc1")(attributes)
        x = nn.relu(conv_transpose(c1, name="trconv1")(x.reshape(-1, h, w, m)))
        x = nn.relu(conv_transpose(c2, name="trconv2")(x))
        x = x.reshape(x.shape[0], -1)
        x = dense(math.prod(self.image_shape), x.shape[-1], name="fc2")(x)
        x = nn.relu(x) if self.final_relu else x
        return x.reshape(-1, *self.image_shape)


def _quarter(image_shape) -> tuple[int, int, int]:
    h, w, c = image_shape
    if h % 4 or w % 4:
        raise UsageError(
            f"FLINT's decoders upsample ×4; the image size {h}×{w} must divide by 4 "
            "(set data.image_size to 28 or 32)."
        )
    return h // 4, w // 4, c


class Architecture(NamedTuple):
    """The official modules for one dataset."""

    predictor: nn.Module
    attributes: nn.Module
    decoder: nn.Module


ARCHITECTURES = ("mnist", "quickdraw", "cifar10")


def flint_architecture(
    name: str, *, num_classes: int, num_attributes: int, image_shape: tuple[int, int, int]
) -> Architecture:
    """FLINT's f, Φ and d for `name` in `ARCHITECTURES` (fmnist uses `mnist`).

    Args:
      name: `mnist` (J = 25 officially), `quickdraw` (J = 24) or `cifar10` (J = 36).
      num_classes: K.
      num_attributes: J.
      image_shape: `(H, W, C)` of the inputs, which the decoder reconstructs.
    """
    image_shape = tuple(int(v) for v in image_shape)
    if name == "mnist":
        return Architecture(
            SmallPredictor(num_classes),
            ConvAttributes(num_attributes),
            MnistDecoder(image_shape),
        )
    if name in ("quickdraw", "cifar10"):
        decoder = (
            DenseDecoder(image_shape, (2, 4, 8), final_relu=True)
            if name == "quickdraw"
            else DenseDecoder(image_shape, (10, 24, 8), final_relu=False)
        )
        return Architecture(ResNetPredictor(num_classes), MultiAttributes(num_attributes), decoder)
    raise UsageError(f"Unknown FLINT architecture '{name}'; use one of {', '.join(ARCHITECTURES)}.")


class FlintOutput(NamedTuple):
    logits: jax.Array  # f(x) [B, K]
    embedding: jax.Array  # f's penultimate features [B, d]
    attributes: jax.Array  # Φ(x) [B, J]
    interpreter_logits: jax.Array  # h(Φ(x)) [B, K]
    reconstruction: jax.Array  # d(Φ(x)) [B, H, W, C]


class Interpreter(nn.Module):
    """h: dropout 0.01, then Linear(J → K) with a bias (the official `explainer`)."""

    num_classes: int

    @nn.compact
    def __call__(self, attributes: jax.Array, *, train: bool = False) -> jax.Array:
        x = nn.Dropout(0.01, deterministic=not train)(attributes)
        return dense(self.num_classes, attributes.shape[-1], name="fc1")(x)


class FlintNet(nn.Module):
    """FLINT's four parts, f, Φ, h and d, on images `[B, H, W, C]`."""

    arch: str
    num_classes: int
    num_attributes: int
    image_shape: tuple[int, int, int]

    def setup(self):
        parts = flint_architecture(
            self.arch,
            num_classes=self.num_classes,
            num_attributes=self.num_attributes,
            image_shape=self.image_shape,
        )
        self.predictor, self.attributes, self.decoder = parts
        self.interpreter = Interpreter(self.num_classes)

    def __call__(self, images: jax.Array, *, train: bool = False) -> FlintOutput:
        f = self.predictor(images, train=train)
        phi = self.attributes(list(f.layers.values()))
        return FlintOutput(
            f.logits,
            f.embedding,
            phi,
            self.interpreter(phi, train=train),
            self.decoder(phi),
        )

    def predict(self, images: jax.Array) -> jax.Array:
        return self.predictor(images).logits

    def embed(self, images: jax.Array) -> jax.Array:
        return self.predictor(images).embedding

    def attribute_values(self, images: jax.Array) -> jax.Array:
        return self.attributes(list(self.predictor(images).layers.values()))

    def analyse(self, images: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        """(f logits, h logits, Φ) in inference mode."""
        f = self.predictor(images)
        phi = self.attributes(list(f.layers.values()))
        return f.logits, self.interpreter(phi), phi


__all__ = [
    "ARCHITECTURES",
    "Architecture",
    "ConvAttributes",
    "DenseDecoder",
    "FlintNet",
    "FlintOutput",
    "Interpreter",
    "MnistDecoder",
    "MultiAttributes",
    "PlainBlock",
    "PredictorOutput",
    "ResNetPredictor",
    "SmallPredictor",
    "adaptive_avg_pool",
    "flint_architecture",
]
