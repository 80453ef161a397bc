"""FLINT's attribute explanations against the official `flint.py` written out: local
relevance (`collect_g_data`), top-activating examples (`extract_attr_class_max`) and
activation maximisation with partial initialisation (`optimize_inp`, run in PyTorch)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from protojax.explain import attributes as explain


def test_local_relevance_is_phi_times_the_predicted_class_weights_over_the_max():
    rng = np.random.default_rng(0)
    phi = rng.uniform(0, 2, (6, 5)).astype(np.float32)
    kernel = rng.normal(size=(5, 3)).astype(np.float32)  # Flax Dense kernel [J, K]
    pred = np.array([0, 2, 1, 1, 0, 2])
    weights = kernel.T  # torch's h.fc1.weight [K, J]
    result = explain.local_relevance(phi, kernel, pred)
    for i in range(6):
        expl = phi[i] * weights[pred[i]]
        np.testing.assert_allclose(result.raw[i], expl, rtol=1e-6)
        np.testing.assert_allclose(result.normalized[i], expl / expl.max(), rtol=1e-5)
    zero = explain.local_relevance(np.zeros((1, 5), np.float32), kernel, [0])
    np.testing.assert_array_equal(zero.normalized, 0.0)


def test_top_activating_matches_extract_attr_class_max():
    rng = np.random.default_rng(1)
    gdata = rng.normal(size=(40, 6))
    all_y = rng.integers(0, 4, 40)
    n_idx = 3
    expected = np.zeros([4, n_idx, 6])
    for i in range(4):
        pos_arr = np.where(all_y == i)[0]
        local_idx = np.argsort(-gdata[pos_arr], axis=0)[:n_idx]
        expected[i] = pos_arr[local_idx]
    got = explain.top_activating(gdata, all_y, num_classes=4, per_class=n_idx)
    np.testing.assert_array_equal(got, expected.astype(int))
    assert (explain.top_activating(gdata, all_y, num_classes=5)[4] == -1).all()


def _official_optimize_inp(
    weight,
    init,
    embed_idx,
    *,
    c,
    lmbd_tv,
    lmbd_bound,
    lmbd_l1,
    n_iter,
    rounds,
    max_val=1.0,
    min_val=0.0,
):
    """`optimize_inp` for the 'old' datasets, with g∘f(x) = tanh(W·vec(x)) `[1, J]`."""
    import torch

    g = lambda x: torch.tanh(x.reshape(1, -1) @ torch.tensor(weight).T)  # noqa: E731
    inp = torch.tensor(init).clone().requires_grad_(True)  # [1, 1, H, W]
    shape = inp.shape
    new_lr = 0.05
    for _ in range(rounds):
        optimizer = torch.optim.Adam([inp], lr=new_lr)
        new_lr = new_lr / 2
        for _ in range(n_iter):
            optimizer.zero_grad()
            embed = g(inp)
            loss_l1 = inp.abs().mean()
            loss_bound = (((inp > max_val).float() + (inp < min_val).float()) * inp.abs()).mean()
            loss_tv = (inp[:, :, : shape[2] - 1, :] - inp[:, :, 1:, :]).abs().mean() + (
                inp[:, :, :, : shape[3] - 1] - inp[:, :, :, 1:]
            ).abs().mean()
            loss = c * embed[:, embed_idx].sum() - lmbd_l1 * loss_l1 - lmbd_bound * loss_bound
            loss = loss - lmbd_tv * loss_tv
            loss.backward()
            inp.grad = -1 * inp.grad
            optimizer.step()
    return inp.detach().numpy()


def test_maximize_attribute_matches_the_official_optimize_inp():
    pytest.importorskip("torch", reason="the official optimize_inp reference runs in PyTorch")
    rng = np.random.default_rng(2)
    weight = rng.normal(size=(4, 64)).astype(np.float32) * 0.3  # J = 4 attributes of 8×8
    images = rng.uniform(0, 1, (2, 8, 8, 1)).astype(np.float32)
    init = 0.3 * images
    settings = dict(c=2.0, lmbd_tv=6.0, lmbd_bound=10.0, lmbd_l1=0.5, n_iter=8, rounds=3)
    attribute_fn = jax.tree_util.Partial(
        lambda w, x: jnp.tanh(x.reshape(x.shape[0], -1) @ w.T), jnp.asarray(weight)
    )
    got = explain.maximize_attribute(
        attribute_fn,
        init,
        jnp.array([1, 3]),
        c=2.0,
        lambda_tv=6.0,
        lambda_bound=10.0,
        lambda_l1=0.5,
        rounds=3,
        steps=8,
    )
    for b, j in enumerate((1, 3)):  # each image optimised alone, as the official code does
        ref = _official_optimize_inp(weight, init[b : b + 1, :, :, 0][:, None], j, **settings)
        np.testing.assert_allclose(np.asarray(got[b, :, :, 0]), ref[0, 0], atol=2e-5)
    assert np.abs(np.asarray(got) - init).max() > 0.05  # it moved
    before = attribute_fn(jnp.asarray(init))[jnp.arange(2), jnp.array([1, 3])]
    after = attribute_fn(got)[jnp.arange(2), jnp.array([1, 3])]
    assert (after > before).all()


def test_the_figures_show_every_class_and_attribute():
    relevance = np.array([[0.9, 0.05, 0.3], [np.nan, np.nan, np.nan]], np.float32)
    fig = explain.relevance_figure(relevance, class_names=["a", "b"], threshold=0.1)
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert texts == ["0.9", "0.3"]
    images = np.random.default_rng(3).uniform(0, 1, (2, 2, 8, 8, 1))
    ids = np.array([[0, 2], [1, -1]])
    fig = explain.attribute_figure(
        images, images, ids, np.array([[0.9, 0.3], [0.5, 0.0]]), class_names=["a", "b"]
    )
    shown = [ax for ax in fig.axes if ax.images]
    assert len(shown) == 6  # three (image, visualisation) pairs; the empty slot is blank
    assert [ax.get_title(loc="left") for ax in shown[::2]] == [
        "φ0  r=0.90",
        "φ2  r=0.30",
        "φ1  r=0.50",
    ]
    fig = explain.local_explanation_figure(
        images[0], np.array([[1.0, 0.2, 0.5], [0.1, 1.0, 0.0]]), [0, 1], class_names=["a", "b"]
    )
    fig.canvas.draw()
    bars = fig.axes[2]  # row 2, column 1 of the 2 × 2 grid
    assert [t.get_text() for t in bars.get_xticklabels()] == ["φ0", "φ2", "φ1"]
    assert [round(p.get_height(), 2) for p in bars.patches] == [1.0, 0.5, 0.2]
