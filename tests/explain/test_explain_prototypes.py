"""Prototype visualisation as functions of arrays: the 95th-percentile box and the bicubic
upsampling against direct computations, self-activations, the "this looks like that"
contributions against a loop, the source reader with a stand-in model, the push PNGs and
their index, and the figures."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from protojax.errors import UsageError
from protojax.explain import figures
from protojax.explain.prototypes import (
    PrototypeSources,
    explain_images,
    high_activation_box,
    prototype_sources,
    save_prototype_pngs,
    self_activation_maps,
    top_contributions,
    upsample_activation,
    upsampled_self_activations,
)


def test_high_activation_box_matches_a_loop():
    rng = np.random.default_rng(1)
    for _ in range(5):
        activation = rng.normal(size=(17, 23)).astype(np.float32)
        threshold = np.percentile(activation, 95)
        ys = [y for y in range(17) for x in range(23) if activation[y, x] >= threshold]
        xs = [x for y in range(17) for x in range(23) if activation[y, x] >= threshold]
        expected = [min(ys), min(xs), max(ys) + 1, max(xs) + 1]
        np.testing.assert_array_equal(high_activation_box(activation), expected)
    # One bright 2×3 block in a 10×10 map: exactly its box (6 of 100 pixels ≥ the 95th pct).
    block = np.zeros((10, 10))
    block[4:6, 2:5] = 1.0
    np.testing.assert_array_equal(high_activation_box(block), [4, 2, 6, 5])


def test_upsample_activation_keeps_constants_and_peaks():
    np.testing.assert_allclose(upsample_activation(np.full((3, 3), 2.5), (12, 12)), 2.5, rtol=1e-6)
    peak = np.zeros((7, 7), np.float32)
    peak[2, 5] = 1.0
    up = np.asarray(upsample_activation(peak, (28, 28)))
    assert up.shape == (28, 28)
    y, x = np.unravel_index(np.argmax(up), up.shape)
    # Latent cell (2, 5) covers pixels [8, 12) × [20, 24) with half-pixel centres.
    assert 8 <= y < 12 and 20 <= x < 24


def test_self_activation_maps_pick_each_images_prototype():
    rng = np.random.default_rng(2)
    maps = rng.normal(size=(3, 4, 4, 5)).astype(np.float32)
    ids = np.array([4, 0, 2])
    got = np.asarray(self_activation_maps(jnp.asarray(maps), ids, (12, 12)))
    for n, j in enumerate(ids):
        np.testing.assert_allclose(got[n], upsample_activation(maps[n, :, :, j], (12, 12)))


def _maps_of(scale, images):
    return scale * images[:, :4, :4, :1] * jnp.arange(1, 6)  # [n, 4, 4, 5]


def test_upsampled_self_activations_take_the_models_maps():
    images = np.random.default_rng(3).normal(size=(3, 8, 8, 1)).astype(np.float32)
    maps = jax.tree_util.Partial(_maps_of, jnp.float32(2.0))
    ids = np.array([4, 0, 2])
    got = upsampled_self_activations(maps, jnp.asarray(images), ids)
    want = self_activation_maps(_maps_of(2.0, jnp.asarray(images)), ids, (8, 8))
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_explain_images_refuses_a_run_that_has_not_pushed(tmp_path):
    empty = np.zeros((0,), np.int64)
    none = PrototypeSources(empty, empty, empty, empty, np.zeros((0, 4), np.int32))
    state = {"active": np.ones(2, bool), "prototype_class": np.array([0, 1])}
    with pytest.raises(UsageError, match="has not pushed"):
        explain_images(
            tmp_path, None, np.zeros((1, 4, 4, 1)), [0], [0], np.ones((2, 2)), state, none,
            class_names=["a", "b"], prototypes_per_class=1, batch_size=1,
        )  # fmt: skip


def test_top_contributions_match_a_loop():
    rng = np.random.default_rng(3)
    sims, weights = rng.uniform(0, 3, 8), rng.normal(size=8)
    weights[5] = weights[2] * sims[2] / sims[5]  # a tie with prototype 2
    active = np.array([1, 1, 1, 1, 0, 1, 1, 1], bool)
    top = top_contributions(sims, weights, active, k=4)
    products = [(-(sims[j] * weights[j]), j) for j in range(8) if active[j]]
    expected = [j for _, j in sorted(products)][:4]
    np.testing.assert_array_equal(top.prototypes, expected)
    np.testing.assert_allclose(top.contributions, sims[expected] * weights[expected])
    np.testing.assert_allclose(top.weights, weights[expected])
    assert 4 not in top.prototypes


def sources_of(num_prototypes=4):
    """Sources from a stand-in model whose self-activation is bright at (row j, column j)."""
    rng = np.random.default_rng(4)
    images = rng.uniform(0, 1, (10, 8, 8, 1)).astype(np.float32)
    labels = np.arange(10) % 3
    calls = []

    def self_activations(inputs, ids):
        calls.append((inputs.copy(), ids.copy()))
        maps = np.zeros((len(ids), 8, 8), np.float32)
        for n, j in enumerate(ids):
            maps[n, j, j] = 1.0
        return maps

    source_index = np.array([7, -1, 2, 5][:num_prototypes])
    sources = prototype_sources(
        self_activations,
        lambda idx: {"image": images[idx], "label": labels[idx]},
        lambda x: 2 * x - 1,
        source_index,
        batch_size=2,
    )
    return sources, images, labels, source_index, calls


def test_prototype_sources_reads_pushed_prototypes_in_batches():
    sources, images, labels, _, calls = sources_of()
    np.testing.assert_array_equal(sources.prototypes, [0, 2, 3])
    np.testing.assert_array_equal(sources.images, images[[7, 2, 5]])
    np.testing.assert_array_equal(sources.labels, labels[[7, 2, 5]])
    assert [len(ids) for _, ids in calls] == [2, 1]
    np.testing.assert_allclose(calls[0][0], 2 * images[[7, 2]] - 1)  # normalised inputs
    for row, j in enumerate(sources.prototypes):
        y0, x0, y1, x1 = sources.boxes[row]
        assert y0 <= j < y1 and x0 <= j < x1
    assert sources.patch(3).shape[-1] == 3  # RGB crop of the box


def test_save_prototype_pngs_writes_the_files_and_the_index(tmp_path):
    sources, _, _, source_index, _ = sources_of()
    state = {
        "prototype_class": np.array([0, 0, 1, 1]),
        "active": np.array([True, True, False, True]),
        "source_index": source_index,
        "source_location": np.array([[0, 1], [0, 0], [1, 0], [1, 1]]),
        "push_distance": np.array([0.5, -1.0, 0.25, 0.0], np.float32),
    }
    rf = np.array([[[0, 0, 4, 4], [0, 4, 4, 8]], [[4, 0, 8, 4], [4, 4, 8, 8]]])
    index = save_prototype_pngs(
        tmp_path / "push", sources, state, rf, class_names=["a", "b"], step=7
    )
    document = json.loads(index.read_text())
    assert document["step"] == 7 and document["class_names"] == ["a", "b"]
    entries = document["prototypes"]
    assert [e["prototype"] for e in entries] == [0, 2, 3]
    assert [e["receptive_field_box"] for e in entries] == [[0, 4, 4, 8], [4, 0, 8, 4], [4, 4, 8, 8]]
    assert [e["active"] for e in entries] == [True, False, True]
    assert entries[1]["distance"] == 0.25 and entries[1]["class_name"] == "b"
    for entry in entries:
        for kind, name in entry["files"].items():
            with Image.open(tmp_path / "push" / name) as image:
                assert image.mode == "RGB"
                if kind in ("source", "overlay"):
                    assert image.size == (96, 96)  # 8 px images enlarged 12×


def test_figures_draw_what_they_are_given():
    rng = np.random.default_rng(5)
    plt = figures.pyplot()
    images = rng.uniform(0, 1, (6, 8, 8, 1))
    evidence = [
        figures.Evidence(
            rng.uniform(size=(8, 8)),
            [1, 1, 4, 4],
            images[0, :3, :3],
            images[1],
            [0, 0, 3, 3],
            "prototype 1",
        )
    ] * 2
    built = [
        figures.this_looks_like_that(images[2], evidence, title="t"),
        figures.class_gallery(
            images[:3, :2, :2], images[:3], [[0, 0, 2, 2]] * 3, list("abc"), title="g"
        ),
        figures.decoded_prototypes(
            images,
            np.array([1, 1, 0, 1, 1, 1], bool),
            prototypes_per_class=3,
            class_names=["x", "y"],
            title="d",
        ),
        figures.reconstructions(images[:3], images[3:], title="r"),
    ]
    assert [len(f.axes) for f in built] == [10, 6, 6, 6]
    latents = rng.normal(size=(40, 5)) * [5, 3, 1, 0.1, 0.1]
    mean, components = figures.pca_2d(latents)
    _, _, vt = np.linalg.svd(latents - latents.mean(0))
    np.testing.assert_allclose(np.abs(components.T @ vt[:2].T), np.eye(2), atol=1e-8)
    fig = figures.latent_pca(
        latents,
        np.arange(40) % 2,
        latents[:4],
        np.array([0, 0, 1, 1]),
        np.array([1, 0, 1, 1], bool),
        class_names=["x", "y"],
        title="p",
    )
    np.testing.assert_allclose(mean, latents.mean(0))
    built.append(fig)
    for f in built:
        plt.close(f)
