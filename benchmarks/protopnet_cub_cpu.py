"""Push throughput of protojax's ProtoPNet at the protopnet_cub shapes, and a PyTorch
reference (the official model's structure, written here) for the joint step and for push.

    python benchmarks/protopnet_cub_cpu.py [--batch_size=16] [--steps=5] [--torch]

Prints one JSON line per measurement: images/s as batch / median seconds per batch over
`steps` timed batches after a warm-up, on synthetic images. The joint train step of protojax
is measured by `python -m experiments.benchmark --config=protopnet_cub --phase=joint ...`.

The PyTorch model: torchvision-named ResNet-34 (`protojax/nn/torch_reference.py`), regular
add-on layers (1×1 conv → ReLU → 1×1 conv → sigmoid), 2,000 prototypes of depth 256, the
official `_l2_convolution` distances, min pooling, log similarity and a bias-free last layer;
its joint step is the official loss (CE + 0.8·cluster − 0.08·separation + 1e-4·L1) with
`torch.optim.Adam` and the official parameter groups, in train mode. Its push is the official
class-specific reduction, vectorised (no host copies of the latent maps).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

NUM_CLASSES, PER_CLASS, DIM, SIZE = 200, 10, 256, 224


def _median(fn, steps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _batch(batch_size: int, seed: int = 0):
    rng = np.random.default_rng(seed)
    return {
        "image": rng.normal(size=(batch_size, SIZE, SIZE, 3)).astype(np.float32),
        "label": rng.integers(0, NUM_CLASSES, batch_size).astype(np.int32),
        "index": np.arange(batch_size, dtype=np.int32),
        "valid": np.ones(batch_size, bool),
    }


def jax_push(batch_size: int, steps: int) -> dict:
    import jax

    from protojax.config import load_config, set_value
    from protojax.data.specs import describe
    from protojax.methods import build_method
    from protojax.prototypes.projection import projection_init

    config = load_config("protopnet_cub")
    set_value(config, "data.batch_size", batch_size)
    method = build_method(config, describe(config.data))
    batch = {k: jax.device_put(v) for k, v in _batch(batch_size).items()}
    variables = jax.jit(method.init)(jax.random.key(0), batch)
    state = projection_init(method.num_prototypes, DIM)

    def one_batch():
        latent = method._latent_map(variables, batch["image"])
        return jax.block_until_ready(method._projection_step(variables, state, latent, batch))

    seconds = _median(one_batch, steps)
    device = jax.devices()[0]
    return {
        "framework": "jax",
        "jax_version": jax.__version__,
        "device_kind": device.device_kind,
        "what": "push (latent map + class-specific running minimum), per batch",
        "batch_size": batch_size,
        "images_per_sec": round(batch_size / seconds, 2),
        "ms_per_batch_median": round(1000 * seconds, 1),
        "timed_batches": steps,
    }


def _torch_model():
    import torch
    from torch import nn

    from protojax.nn.torch_reference import torch_resnet

    class TorchProtoPNet(nn.Module):
        def __init__(self):
            super().__init__()
            p = NUM_CLASSES * PER_CLASS
            self.features = torch_resnet("resnet34")
            self.add_on_layers = nn.Sequential(
                nn.Conv2d(512, DIM, 1), nn.ReLU(), nn.Conv2d(DIM, DIM, 1), nn.Sigmoid()
            )
            for m in self.add_on_layers:
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
                    nn.init.zeros_(m.bias)
            self.prototype_vectors = nn.Parameter(torch.rand(p, DIM, 1, 1))
            self.register_buffer("ones", torch.ones(p, DIM, 1, 1))
            identity = torch.zeros(p, NUM_CLASSES)
            identity[torch.arange(p), torch.arange(p) // PER_CLASS] = 1
            self.register_buffer("identity", identity)
            self.last_layer = nn.Linear(p, NUM_CLASSES, bias=False)
            with torch.no_grad():
                self.last_layer.weight.copy_(identity.t() - 0.5 * (1 - identity.t()))

        def distances(self, x):
            z = self.add_on_layers(self.features.features(x))
            x2 = nn.functional.conv2d(z**2, self.ones)
            p2 = (self.prototype_vectors**2).sum(dim=(1, 2, 3)).view(-1, 1, 1)
            xp = nn.functional.conv2d(z, self.prototype_vectors)
            return z, nn.functional.relu(x2 - 2 * xp + p2)

        def forward(self, x):
            _, d = self.distances(x)
            min_d = -nn.functional.max_pool2d(-d, kernel_size=d.shape[2:]).flatten(1)
            similarity = torch.log((min_d + 1) / (min_d + 1e-4))
            return self.last_layer(similarity), min_d

    return TorchProtoPNet()


def torch_joint_step(batch_size: int, steps: int) -> dict:
    import torch

    model = _torch_model().train()
    optimizer = torch.optim.Adam(
        [
            {"params": model.features.parameters(), "lr": 1e-4, "weight_decay": 1e-3},
            {"params": model.add_on_layers.parameters(), "lr": 3e-3, "weight_decay": 1e-3},
            {"params": [model.prototype_vectors], "lr": 3e-3},
        ]
    )
    data = _batch(batch_size)
    images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data["label"]).long()
    max_dist = float(DIM)

    def step():
        logits, min_d = model(images)
        own = model.identity[:, labels].t()  # [B, P]
        cluster = (max_dist - ((max_dist - min_d) * own).max(dim=1).values).mean()
        separation = (max_dist - ((max_dist - min_d) * (1 - own)).max(dim=1).values).mean()
        l1 = (model.last_layer.weight * (1 - model.identity.t())).norm(p=1)
        loss = (
            torch.nn.functional.cross_entropy(logits, labels)
            + 0.8 * cluster
            - 0.08 * separation
            + 1e-4 * l1
        )
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()

    seconds = _median(step, steps)
    return {
        "framework": "torch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "what": "joint train step (official loss and Adam groups), train mode",
        "batch_size": batch_size,
        "images_per_sec": round(batch_size / seconds, 2),
        "ms_per_batch_median": round(1000 * seconds, 1),
        "timed_batches": steps,
    }


def torch_push(batch_size: int, steps: int) -> dict:
    import torch

    model = _torch_model().eval()
    data = _batch(batch_size)
    images = torch.from_numpy(data["image"]).permute(0, 3, 1, 2).contiguous()
    labels = torch.from_numpy(data["label"]).long()
    p = NUM_CLASSES * PER_CLASS
    best = torch.full((p,), float("inf"))
    patches = torch.zeros(p, DIM)
    prototype_class = torch.arange(p) // PER_CLASS

    @torch.no_grad()
    def one_batch():
        z, d = model.distances(images)  # [B, D, h, w], [B, P, h, w]
        b, _, h, w = d.shape
        eligible = labels[:, None] == prototype_class[None, :]  # [B, P]
        d = torch.where(eligible[:, :, None, None], d, torch.inf)
        flat = d.permute(1, 0, 2, 3).reshape(p, -1)  # [P, B·h·w]
        batch_best, arg = flat.min(dim=1)
        better = batch_best < best
        rows, cells = arg // (h * w), arg % (h * w)
        found = z.permute(0, 2, 3, 1).reshape(b * h * w, DIM)[rows * h * w + cells]
        best.copy_(torch.where(better, batch_best, best))
        patches.copy_(torch.where(better[:, None], found, patches))

    seconds = _median(one_batch, steps)
    return {
        "framework": "torch",
        "torch_version": torch.__version__,
        "threads": torch.get_num_threads(),
        "what": "push (latent map + class-specific running minimum), per batch",
        "batch_size": batch_size,
        "images_per_sec": round(batch_size / seconds, 2),
        "ms_per_batch_median": round(1000 * seconds, 1),
        "timed_batches": steps,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--torch", action="store_true", help="also time the PyTorch reference")
    args = parser.parse_args()
    print(json.dumps(jax_push(args.batch_size, args.steps)), flush=True)
    if args.torch:
        print(json.dumps(torch_joint_step(args.batch_size, args.steps)), flush=True)
        print(json.dumps(torch_push(args.batch_size, args.steps)), flush=True)


if __name__ == "__main__":
    main()
