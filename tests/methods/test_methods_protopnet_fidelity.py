"""ProtoPNet against the official training code: the cluster and separation costs' values and
tie gradients against the official `max_dist` formula run in PyTorch, and the total loss of
`Method.loss` as Σ coefficient × term."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.config import load_config, set_value
from protojax.data.digits import load_digits
from protojax.methods import build_method
from protojax.prototypes.costs import cluster_cost, l1_wrong_class, separation_cost

torch = pytest.importorskip("torch")

MAX_DIST = 128.0  # the official D·1·1 (prototype depth 128)


def official_costs(d, labels, classes):
    """cfchen-duke/ProtoPNet train_and_test.py:39-53 on `d [B, P]`, in PyTorch, with the
    gradients of both costs with respect to `d`."""
    d = torch.tensor(d, dtype=torch.float64, requires_grad=True)
    identity = torch.nn.functional.one_hot(torch.tensor(classes).long()).double()  # [P, K]
    own = identity[:, torch.tensor(labels).long()].t()  # [B, P]
    inverted, _ = torch.max((MAX_DIST - d) * own, dim=1)
    cluster = torch.mean(MAX_DIST - inverted)
    inverted_other, _ = torch.max((MAX_DIST - d) * (1 - own), dim=1)
    separation = torch.mean(MAX_DIST - inverted_other)
    (g_cluster,) = torch.autograd.grad(cluster, d, retain_graph=True)
    (g_separation,) = torch.autograd.grad(separation, d)
    return (
        (cluster.item(), g_cluster.numpy()),
        (separation.item(), g_separation.numpy()),
    )


def test_costs_and_tie_gradients_match_the_official_formula():
    # Hand-made ties: row 0's two nearest own-class prototypes (0 and 2) are equal, as are its
    # two nearest other-class ones (4 and 5); row 1 has a three-way tie; row 2 none.
    classes = np.array([0, 0, 0, 1, 1, 1], np.int32)
    labels = np.array([0, 1, 1], np.int32)
    d = np.array(
        [
            [2.0, 3.0, 2.0, 4.0, 1.5, 1.5],
            [0.5, 0.5, 0.5, 7.0, 6.0, 8.0],
            [3.0, 1.0, 2.0, 0.25, 5.0, 4.0],
        ],
        np.float32,
    )
    (cluster, g_cluster), (separation, g_separation) = official_costs(d, labels, classes)
    for cost, value, grad in (
        (cluster_cost, cluster, g_cluster),
        (separation_cost, separation, g_separation),
    ):
        ours, our_grad = jax.value_and_grad(cost)(jnp.asarray(d), labels, classes)
        np.testing.assert_allclose(ours, value, rtol=1e-6)
        # All of a row's gradient goes to its first nearest prototype, as torch.max's does.
        np.testing.assert_array_equal(np.asarray(our_grad), grad.astype(np.float32))
    assert g_cluster[0].tolist() == [1 / 3, 0, 0, 0, 0, 0]
    assert g_separation[1].tolist() == [1 / 3, 0, 0, 0, 0, 0]
    # Random distances (no ties): the separation cost and its gradient.
    rng = np.random.default_rng(3)
    d = rng.uniform(0, 20, (16, 30)).astype(np.float32)
    labels = rng.integers(0, 3, 16).astype(np.int32)
    classes = (np.arange(30) // 10).astype(np.int32)
    _, (separation, g_separation) = official_costs(d, labels, classes)
    ours, grad = jax.value_and_grad(separation_cost)(jnp.asarray(d), labels, classes)
    np.testing.assert_allclose(ours, separation, rtol=1e-6)
    np.testing.assert_allclose(grad, g_separation, atol=1e-7)


def test_total_loss_is_the_coefficient_weighted_sum_with_separation_subtracted():
    config = load_config("protopnet_digits")
    set_value(config, "data.image_size", 8)
    set_value(config, "model.prototypes_per_class", 2)
    set_value(config, "model.prototype_dim", 8)
    dataset = load_digits(image_size=8)
    method = build_method(config, dataset)
    batch = dataset.split("train").get_batch(np.arange(12))
    batch["valid"] = np.arange(12) < 10
    variables = jax.jit(method.init)(jax.random.key(0), batch)
    params = variables["params"]
    # A last layer off its initialisation, so that the L1 term is not a constant.
    kernel = params["last_layer"]["kernel"]
    params = {
        **params,
        "last_layer": {
            "kernel": kernel + 0.3 * jnp.sin(jnp.arange(kernel.size)).reshape(kernel.shape)
        },
    }
    state = {k: v for k, v in variables.items() if k != "params"}
    joint = [p for p in method.phases(config) if p.name == "joint"][0]
    loss = jax.jit(lambda p, b: method.loss(p, state, b, jax.random.key(1), joint))
    total, (metrics, _) = loss(params, batch)
    # The official coefficients: settings.py coefs = {crs_ent 1, clst 0.8, sep -0.08, l1 1e-4}.
    expected = (
        metrics["cross_entropy"]
        + 0.8 * metrics["cluster"]
        - 0.08 * metrics["separation"]
        + 1e-4 * metrics["l1"]
    )
    np.testing.assert_allclose(total, expected, rtol=1e-6)
    assert metrics["separation"] > 0 and metrics["cluster"] > 0
    # Each term recomputed from the model's own outputs over the valid rows.
    model = {"params": params, **{k: v for k, v in state.items() if k != "prototype_state"}}
    apply = jax.jit(
        lambda v, images: method.net.apply(
            v,
            images,
            state["prototype_state"]["active"],
            train=joint.update_batch_stats,
            mutable=["batch_stats"],
        )[0]
    )
    logits, min_distances = apply(model, batch["image"])
    classes = np.asarray(state["prototype_state"]["prototype_class"])
    labels, valid = batch["label"], batch["valid"]
    logits, min_distances = np.asarray(logits, np.float64), np.asarray(min_distances)
    log_probs = logits - np.log(np.exp(logits).sum(1, keepdims=True))
    np.testing.assert_allclose(
        metrics["cross_entropy"], -log_probs[np.arange(12), labels][valid].mean(), rtol=1e-5
    )
    (cluster, _), (separation, _) = official_costs(min_distances[valid], labels[valid], classes)
    np.testing.assert_allclose(metrics["cluster"], cluster, rtol=1e-5)
    np.testing.assert_allclose(metrics["separation"], separation, rtol=1e-5)
    np.testing.assert_allclose(
        metrics["l1"], l1_wrong_class(params["last_layer"]["kernel"], classes), rtol=1e-6
    )
