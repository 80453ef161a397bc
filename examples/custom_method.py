"""Your own self-explainable model in protojax: a small prototype classifier on digits.

    python examples/custom_method.py --workdir=workdirs/custom_method

A CNN embeds each image; the class is read from its similarity to learned, class-owned
prototypes. The module follows `protojax.methods.MethodModule` (`build`,
`default_model_config`, `default_optim_config`), so `config.method = "custom_method"` finds it
wherever it is importable, and `protojax.load_workdir` reloads its runs. Two minutes at most
on 2 CPU cores; test accuracy about 0.95.
"""

from __future__ import annotations

import argparse
import json

import flax.linen as nn
import jax
import jax.numpy as jnp

import protojax
from protojax.config import ConfigDict
from protojax.methods.common import cross_entropy
from protojax.prototypes import log_similarity, squared_l2_distances
from protojax.train import Method, Phase, adam


class Net(nn.Module):
    num_classes: int
    per_class: int
    latent: int

    @nn.compact
    def __call__(self, images):  # [B, H, W, C] -> (logits [B, K], similarities [B, P], z [B, d])
        x = nn.relu(nn.Conv(16, (3, 3))(images))
        x = nn.max_pool(x, (2, 2), (2, 2))
        x = nn.relu(nn.Conv(32, (3, 3))(x))
        z = nn.Dense(self.latent)(jnp.mean(x, axis=(1, 2)))
        count = self.num_classes * self.per_class
        prototypes = self.param("prototypes", nn.initializers.normal(1.0), (count, self.latent))
        similarities = log_similarity(squared_l2_distances(z, prototypes))
        # Prototype j belongs to class j // per_class: +1 to its class, -0.5 to the others.
        owner = jnp.repeat(jnp.eye(self.num_classes), self.per_class, axis=0)  # [P, K]
        head = nn.Dense(
            self.num_classes, use_bias=False, kernel_init=lambda *_: owner - 0.5 * (1 - owner)
        )
        return head(similarities), similarities, z


class PrototypeClassifier(Method):
    name = "custom_method"

    def __init__(self, config: ConfigDict, dataset):
        m = config.model
        self.net = Net(dataset.num_classes, m.per_class, m.latent)
        self.lr, self.epochs, self.cluster = config.optim.lr, config.train.epochs, m.cluster

    def init(self, rng, batch):
        return dict(self.net.init(rng, batch["image"]))

    def loss(self, params, state, batch, rng, phase):
        logits, similarities, _ = self.net.apply({"params": params}, batch["image"])
        ce = cross_entropy(logits, batch["label"], batch["valid"])
        # Pull each image towards its nearest prototype of its own class.
        own = jnp.repeat(jnp.arange(logits.shape[1]), self.net.per_class) == batch["label"][:, None]
        nearest_own = jnp.max(jnp.where(own, similarities, -jnp.inf), axis=1)
        cluster = -jnp.sum(nearest_own * batch["valid"]) / jnp.maximum(jnp.sum(batch["valid"]), 1)
        loss = ce + self.cluster * cluster
        return loss, ({"loss": loss, "cross_entropy": ce, "cluster": cluster}, state)

    def predict(self, variables, images):
        return self.net.apply(variables, images)[0]

    def embed(self, variables, images):
        return self.net.apply(variables, images)[2]

    def phases(self, config):
        return [Phase("train", self.epochs, "adam", ((".*", adam(self.lr)),))]

    def class_logit(self, variables, images, classes):
        return jnp.take_along_axis(self.predict(variables, images), classes[:, None], 1)[:, 0]

    def targets(self, variables):
        return {"class_logit": jax.tree_util.Partial(self.class_logit, variables)}


def build(config, dataset):
    return PrototypeClassifier(config, dataset)


def default_model_config():
    return ConfigDict({"per_class": 2, "latent": 16, "cluster": 0.05})


def default_optim_config():
    return ConfigDict({"lr": 1e-2})


def main(workdir: str) -> None:
    config = protojax.runs.default_config("custom_method")
    config.data.image_size = 16
    config.train.epochs = 30
    config.train.progress = False
    summary = protojax.runs.train(config, workdir)
    print(json.dumps({"test_accuracy": summary["test_accuracy"]}))

    # Reload the run and explain its test images with a post-hoc explainer.
    method, variables, config = protojax.load_workdir(workdir)
    batch = protojax.data.load_dataset(config.data).split("test").get_batch(range(8))
    logits = method.predict(variables, batch["image"])
    maps = protojax.explain.saliency(
        method.targets(variables)["class_logit"], batch["image"], targets=jnp.argmax(logits, -1)
    )
    print(f"saliency maps {maps.shape}, predictions {jnp.argmax(logits, -1).tolist()}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default="workdirs/custom_method")
    main(parser.parse_args().workdir)
