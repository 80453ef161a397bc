"""PyTorch references for `benchmarks/compare.py`, written for it from the official code.

- ProtoVAE (SrishtiGautam/ProtoVAE, `model.py`, `train_and_test.py`): the CIFAR-10 encoder
  and decoder, z = μ as the official code runs, Euclidean distances (`torch.cdist`), log
  similarity, a bias-free last layer, and the four losses (CE, MSE reconstruction, the
  similarity-weighted KL to the class's prototypes, the orthonormality of each class's
  centred prototypes), with one Adam (lr 1e-3) over every parameter.
- ProtoPNet (cfchen-duke/ProtoPNet, `model.py`, `train_and_test.py`, `main.py`, `push.py`):
  torchvision's ResNet-34 up to layer4, regular add-on layers, 2,000 prototypes of depth 256,
  the `_l2_convolution` distances, min pooling, log similarity, the joint loss
  CE + 0.8·cluster − 0.08·separation + 1e-4·L1 with the official Adam groups; push is the
  official class-specific running minimum per batch (on device, vectorised).
- The black box: torchvision's ResNet-18 with the CIFAR stem (3×3/1 conv1, no max-pool),
  SGD (lr 0.1, momentum 0.9, weight decay 5e-4).
- RELAX (Wickstrom/RELAX, `src/relax_xai/relax.py`, `masking_functions.py`): masks drawn
  per batch of 100 (7×7 Bernoulli grid, bilinear upsampling, reflect padding, random
  shift), the encoder on the masked images, cosine similarity, and the official per-mask
  running update of importance and uncertainty, under `torch.no_grad()`.
- Integrated gradients and SmoothGrad: Captum (`IntegratedGradients`, `NoiseTunnel`).

Nothing in `protojax` imports this file; it needs torch and torchvision (and captum for the
gradient explainers).
"""

from __future__ import annotations

import functools
import math

import torch
import torch.nn.functional as F
from torch import nn


@functools.cache
def torchvision():
    """Imports torchvision; where its compiled operators (nms, roi_align …) are absent from
    this torch build, their registrations are skipped instead of failing the import. The
    model classes do not use them."""
    original = torch.library.Library.impl

    def tolerant_impl(self, *args, **kwargs):
        try:
            return original(self, *args, **kwargs)
        except RuntimeError as error:
            if "does not exist" not in str(error):
                raise
            return lambda fn: fn

    torch.library.Library.impl = tolerant_impl
    try:
        import torchvision as tv
    finally:
        torch.library.Library.impl = original
    return tv


def set_precision(*, tf32: bool) -> None:
    """Pins TF32 for matmuls and cuDNN convolutions (ignored on CPU)."""
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32
    torch.set_float32_matmul_precision("high" if tf32 else "highest")


def _log_similarity(distances):
    return torch.log((distances + 1) / (distances + 1e-4))


def _class_identity(num_prototypes: int, num_classes: int) -> torch.Tensor:
    identity = torch.zeros(num_prototypes, num_classes)
    per_class = num_prototypes // num_classes
    identity[torch.arange(num_prototypes), torch.arange(num_prototypes) // per_class] = 1
    return identity


def _last_layer(identity: torch.Tensor) -> nn.Linear:
    layer = nn.Linear(*identity.shape, bias=False)
    with torch.no_grad():
        layer.weight.copy_(identity.t() - 0.5 * (1 - identity.t()))
    return layer


# --- ProtoVAE ---------------------------------------------------------------------------------


def _encoder_block(cin, cout):
    return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(), nn.BatchNorm2d(cout), nn.AvgPool2d(2)]


def _decoder_block(cin, cout):
    return [
        nn.Conv2d(cin, cout, 3, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(cout),
        nn.ConvTranspose2d(cout, cout, 4, stride=2, padding=1),
        nn.ReLU(),
        nn.BatchNorm2d(cout),
    ]


class ProtoVAECifar(nn.Module):
    """The official CIFAR-10 ProtoVAE: 32×32×3 → latent d = 512, 100 prototypes, 10 classes."""

    def __init__(self, latent=512, num_prototypes=100, num_classes=10):
        super().__init__()
        self.latent = latent
        self.encoder = nn.Sequential(
            *_encoder_block(3, 32),
            *_encoder_block(32, 64),
            *_encoder_block(64, 128),
            *_encoder_block(128, 256),
            nn.Flatten(),
            nn.Linear(256 * 2 * 2, 2 * latent),
            nn.ReLU(),
            nn.Linear(2 * latent, 2 * latent),
        )
        self.decoder_fc = nn.Sequential(
            nn.Linear(latent, 256 * 2 * 2), nn.ReLU(), nn.BatchNorm1d(256 * 2 * 2)
        )
        self.decoder = nn.Sequential(
            *_decoder_block(256, 128),
            *_decoder_block(128, 64),
            *_decoder_block(64, 32),
            *_decoder_block(32, 32),
            nn.Conv2d(32, 3, 3, padding=1),
            nn.Tanh(),
        )
        # The official init: U(−0.08, 0.08) for the encoder, the linear layers and the
        # transposed convs; Kaiming-normal (fan-out) for the decoder's convs; zero biases.
        for module in [*self.encoder, *self.decoder_fc, *self.decoder]:
            if isinstance(module, nn.Conv2d) and module not in list(self.encoder):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear | nn.Conv2d | nn.ConvTranspose2d):
                nn.init.uniform_(module.weight, -0.08, 0.08)
                nn.init.zeros_(module.bias)
        self.prototypes = nn.Parameter(torch.randn(num_prototypes, latent))
        self.register_buffer("identity", _class_identity(num_prototypes, num_classes))
        self.last_layer = _last_layer(self.identity)

    def forward(self, x):
        stats = self.encoder(x)
        mu = stats[:, : self.latent]
        logvar = stats[:, self.latent :].clamp(math.log(1e-8), -math.log(1e-8))
        z = mu  # the official `if (~is_train): z = mu` always takes this branch
        similarity = _log_similarity(torch.cdist(z, self.prototypes, p=2))
        reconstruction = self.decoder(self.decoder_fc(z).view(-1, 256, 2, 2))
        return self.last_layer(similarity), reconstruction, mu, logvar, similarity


def protovae_loss(model: ProtoVAECifar, images, labels):
    logits, reconstruction, mu, logvar, similarity = model(images)
    cross_entropy = F.cross_entropy(logits, labels)
    reconstruction_error = F.mse_loss(reconstruction, images)
    # KL(N(μ, σ²) ‖ N(p_j, I)), a mean over dimensions, for every (sample, prototype).
    var = logvar.exp()[:, None, :]
    kl = 0.5 * (var + (mu[:, None, :] - model.prototypes[None]) ** 2 - 1 - logvar[:, None, :])
    kl = kl.mean(-1)  # [B, P]
    own = model.identity[:, labels].t()  # [B, P]
    weighted = own * similarity
    kl_term = ((kl * weighted).sum(1) / weighted.sum(1)).mean()
    num_classes = model.identity.shape[1]
    grouped = model.prototypes.view(num_classes, -1, model.latent)
    centred = grouped - grouped.mean(1, keepdim=True)
    eye = torch.eye(grouped.shape[1], device=grouped.device)
    gram = centred @ centred.transpose(1, 2) - eye
    orthonormality = torch.linalg.matrix_norm(gram, "fro").mean()
    return cross_entropy + reconstruction_error + kl_term + orthonormality


# --- ProtoPNet --------------------------------------------------------------------------------


class ProtoPNet(nn.Module):
    """ProtoPNet on torchvision's ResNet-34 trunk (up to layer4), regular add-on layers."""

    def __init__(self, num_classes=200, per_class=10, dim=256, arch="resnet34"):
        super().__init__()
        resnet = getattr(torchvision().models, arch)()
        self.features = nn.Sequential(*list(resnet.children())[:-2])
        channels = resnet.fc.in_features
        self.add_on_layers = nn.Sequential(
            nn.Conv2d(channels, dim, 1), nn.ReLU(), nn.Conv2d(dim, dim, 1), nn.Sigmoid()
        )
        for module in self.add_on_layers:
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
                nn.init.zeros_(module.bias)
        p = num_classes * per_class
        self.dim = dim
        self.prototype_vectors = nn.Parameter(torch.rand(p, dim, 1, 1))
        self.register_buffer("ones", torch.ones(p, dim, 1, 1))
        self.register_buffer("identity", _class_identity(p, num_classes))
        self.last_layer = _last_layer(self.identity)

    def distances(self, x):
        """(latent [B, D, h, w], squared distances [B, P, h, w]), as `_l2_convolution`."""
        z = self.add_on_layers(self.features(x))
        x2 = F.conv2d(z**2, self.ones)
        p2 = (self.prototype_vectors**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)
        xp = F.conv2d(z, self.prototype_vectors)
        return z, F.relu(x2 - 2 * xp + p2)

    def forward(self, x):
        _, d = self.distances(x)
        min_d = -F.max_pool2d(-d, kernel_size=d.shape[2:]).flatten(1)
        return self.last_layer(_log_similarity(min_d)), min_d


def protopnet_joint_optimizer(model: ProtoPNet):
    return torch.optim.Adam(
        [
            {"params": model.features.parameters(), "lr": 1e-4, "weight_decay": 1e-3},
            {"params": model.add_on_layers.parameters(), "lr": 3e-3, "weight_decay": 1e-3},
            {"params": [model.prototype_vectors], "lr": 3e-3},
        ]
    )


def protopnet_loss(model: ProtoPNet, images, labels):
    logits, min_d = model(images)
    max_dist = float(model.dim)
    own = model.identity[:, labels].t()  # [B, P]
    cluster = (max_dist - ((max_dist - min_d) * own).max(dim=1).values).mean()
    separation = (max_dist - ((max_dist - min_d) * (1 - own)).max(dim=1).values).mean()
    l1 = (model.last_layer.weight * (1 - model.identity.t())).norm(p=1)
    return F.cross_entropy(logits, labels) + 0.8 * cluster - 0.08 * separation + 1e-4 * l1


class PushState:
    """The running class-specific minimum of push: distance and latent patch per prototype."""

    def __init__(self, model: ProtoPNet, device):
        p = model.prototype_vectors.shape[0]
        self.best = torch.full((p,), float("inf"), device=device)
        self.patches = torch.zeros(p, model.dim, device=device)
        self.prototype_class = model.identity.argmax(1)


@torch.no_grad()
def push_batch(model: ProtoPNet, state: PushState, images, labels) -> None:
    z, d = model.distances(images)  # [B, D, h, w], [B, P, h, w]
    b, p, h, w = d.shape
    eligible = labels[:, None] == state.prototype_class[None, :]  # [B, P]
    d = torch.where(eligible[:, :, None, None], d, torch.inf)
    batch_best, arg = d.permute(1, 0, 2, 3).reshape(p, -1).min(dim=1)
    better = batch_best < state.best
    found = z.permute(0, 2, 3, 1).reshape(b * h * w, model.dim)[arg]
    state.best = torch.where(better, batch_best, state.best)
    state.patches = torch.where(better[:, None], found, state.patches)


# --- Black box --------------------------------------------------------------------------------


def resnet_cifar(arch="resnet18", num_classes=10):
    model = getattr(torchvision().models, arch)(num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()
    return model


def sgd(model):
    return torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)


def classification_loss(model, images, labels):
    return F.cross_entropy(model(images), labels)


def train_step(model, optimizer, loss_fn, images, labels, autocast_dtype=None):
    """One step: forward and loss (under autocast when a dtype is given), backward, update."""
    with torch.autocast(images.device.type, dtype=autocast_dtype, enabled=bool(autocast_dtype)):
        loss = loss_fn(model, images, labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss


# --- Explainers -------------------------------------------------------------------------------


def resnet50_embedding():
    """torchvision's ResNet-50 with the classifier removed: images → pooled [B, 2048]."""
    model = torchvision().models.resnet50()
    model.fc = nn.Identity()
    return model.eval()


def resnet50_classifier():
    return torchvision().models.resnet50().eval()


def relax_masks(batch_size, size, device, num_cells=7, p_keep=0.5):
    """`mask_generator` of relax-xai: `[batch, 1, size, size]` smooth masks."""
    pad = num_cells // 2
    grid = (torch.rand(batch_size, 1, num_cells, num_cells, device=device) < p_keep).float()
    up = F.interpolate(grid, size=(size, size), mode="bilinear", align_corners=False)
    up = F.pad(up, (pad,) * 4, mode="reflect")
    shift_x = torch.randint(0, num_cells, (batch_size,)).tolist()
    shift_y = torch.randint(0, num_cells, (batch_size,)).tolist()
    masks = torch.empty(batch_size, 1, size, size, device=device)
    for i in range(batch_size):
        masks[i] = up[i, :, shift_x[i] : shift_x[i] + size, shift_y[i] : shift_y[i] + size]
    return masks


@torch.no_grad()
def relax(encoder, image, *, num_masks=3000, batch_size=100):
    """RELAX importance and uncertainty `[H, W]` of one normalised image `[1, 3, H, W]`."""
    size = image.shape[-1]
    unmasked = encoder(image).expand(batch_size, -1)
    importance = torch.zeros(size, size, device=image.device)
    uncertainty = torch.zeros(size, size, device=image.device)
    weights = torch.full((size, size), 1e-10, device=image.device)
    for _ in range(num_masks // batch_size):
        masks = relax_masks(batch_size, size, image.device)
        similarity = F.cosine_similarity(unmasked, encoder(image * masks), dim=1)
        for s, mask in zip(similarity, masks[:, 0]):
            weights += mask
            previous = importance.clone()
            importance += mask * (s - importance) / weights
            uncertainty += (s - importance) * (s - previous) * mask
    return importance, uncertainty


def integrated_gradients(model, images, targets, *, steps=50, batch_size=None):
    from captum.attr import IntegratedGradients

    return IntegratedGradients(model).attribute(
        images,
        target=targets,
        n_steps=steps,
        method="riemann_trapezoid",
        internal_batch_size=batch_size,
    )


def smoothgrad(model, images, targets, *, samples=50, sigma=0.15, batch_size=None):
    from captum.attr import NoiseTunnel, Saliency

    value_range = (images.amax() - images.amin()).item()
    return NoiseTunnel(Saliency(model)).attribute(
        images,
        nt_type="smoothgrad",
        nt_samples=samples,
        nt_samples_batch_size=batch_size,
        stdevs=sigma * value_range,
        target=targets,
        abs=False,
    )
