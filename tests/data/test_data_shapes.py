"""The generated shapes dataset: determinism, masks and boxes, distractors, markers, kinds."""

import numpy as np
import pytest

from protojax.data import default_config, load_dataset
from protojax.data.shapes import KINDS, marker_masks, marker_strip_height, render_examples
from protojax.errors import DataError


def shapes_config(**shapes):
    config = default_config()
    config.name = "shapes"
    config.image_size = 64
    config.shapes.num_train, config.shapes.num_val, config.shapes.num_test = 300, 40, 60
    config.shapes.update(shapes)
    return config


@pytest.fixture(scope="module")
def dataset():
    return load_dataset(shapes_config(shortcut=True))


@pytest.fixture(scope="module")
def train_batch(dataset):
    return dataset.split("train").get_batch(np.arange(300))


def dilate(masks, radius):
    """Reference dilation by a (2r+1)² square: a loop over shifts with explicit bounds."""
    out = np.zeros_like(masks)
    height, width = masks.shape[1:]
    for dy in range(-radius, radius + 1):
        for dx in range(-radius, radius + 1):
            src = masks[:, max(0, -dy) : height - max(0, dy), max(0, -dx) : width - max(0, dx)]
            out[:, max(0, dy) : height - max(0, -dy), max(0, dx) : width - max(0, -dx)] |= src
    return out


def test_same_key_same_bytes_whatever_the_access_order():
    first = load_dataset(shapes_config()).split("train")
    second = load_dataset(shapes_config()).split("train")
    order = np.array([299, 3, 150, 0, 42])
    a = first.get_batch(order)
    second.get_batch(np.arange(128, 256))  # fill another block first
    b = second.get_batch(order[::-1])
    for key in ("image", "mask", "box", "label", "marker_mask"):
        np.testing.assert_array_equal(a[key], b[key][::-1])
    # Rendering an example alone gives the bytes it has inside a block of 128.
    alone = render_examples(0, 0, np.array([150]), size=64, num_classes=6, num_distractors=6)
    np.testing.assert_array_equal(alone[0][0], np.round(a["image"][2] * 255).astype(np.uint8))
    other_seed = load_dataset(shapes_config(seed=1)).split("train").get_batch(order)
    assert not np.array_equal(other_seed["image"], a["image"])
    # Splits draw different examples.
    val = load_dataset(shapes_config()).split("val").get_batch(np.array([3]))
    assert not np.array_equal(val["image"][0], a["image"][1])


def test_fields_shapes_and_dtypes(train_batch, dataset):
    assert dataset.image_shape == (64, 64, 3)
    assert train_batch["image"].shape == (300, 64, 64, 3)
    assert train_batch["image"].dtype == np.float32
    assert 0.0 <= train_batch["image"].min() and train_batch["image"].max() <= 1.0
    assert train_batch["mask"].shape == (300, 64, 64) and train_batch["mask"].dtype == bool
    assert train_batch["box"].shape == (300, 4) and train_batch["box"].dtype == np.int32
    assert train_batch["marker_mask"].shape == (300, 64, 64)
    np.testing.assert_array_equal(train_batch["index"], np.arange(300))
    assert {len(s) for s in dataset.splits.values()} == {300, 40, 60}


def test_box_is_the_tight_exclusive_box_of_the_mask(train_batch):
    for mask, box in zip(train_batch["mask"], train_batch["box"]):
        ys, xs = np.nonzero(mask)
        np.testing.assert_array_equal(box, [ys.min(), xs.min(), ys.max() + 1, xs.max() + 1])


def test_mask_is_exactly_the_object_colour(train_batch):
    top = marker_strip_height(64)
    for image, mask in zip(train_batch["image"], train_batch["mask"]):
        colours = image[mask]
        assert len(colours) >= 30  # radius ≥ 7 px at 64 px
        np.testing.assert_array_equal(colours, np.broadcast_to(colours[0], colours.shape))
        # The object is saturated and bright, and stays below the marker strip.
        assert colours[0].max() >= 0.74 and colours[0].max() - colours[0].min() >= 0.45
        assert not mask[:top].any() and not mask[:, 0].any() and not mask[-1].any()
        # No pixel of the same colour touches the object from outside (its 1-px ring).
        ring = dilate(mask[None], 1)[0] & ~mask
        assert not np.all(image[ring] == colours[0], axis=-1).any()


def test_distractors_only_add_pixels_and_keep_clear_of_the_object():
    indices = np.arange(40)
    clean, masks, _ = render_examples(3, 0, indices, size=64, num_classes=6, num_distractors=0)
    busy, busy_masks, _ = render_examples(3, 0, indices, size=64, num_classes=6, num_distractors=8)
    np.testing.assert_array_equal(masks, busy_masks)
    changed = np.any(clean != busy, axis=-1)
    assert changed.sum(axis=(1, 2)).min() > 0  # every image has distractors
    assert not (changed & dilate(masks, 2)).any()


def test_markers_only_on_train_and_test_marked(dataset, train_batch):
    markers = marker_masks(64, 6)
    assert len({tuple(np.argwhere(m)[0]) for m in markers}) == 6  # one place per class
    np.testing.assert_array_equal(train_batch["marker_mask"], markers[train_batch["label"]])
    assert np.all(train_batch["image"][train_batch["marker_mask"]] == 1.0)
    assert not (train_batch["marker_mask"] & train_batch["mask"]).any()
    for name in ("val", "test"):
        split = dataset.split(name)
        assert not split.get_batch(np.arange(len(split)))["marker_mask"].any()
    test = dataset.split("test").get_batch(np.arange(60))
    marked = dataset.split("test_marked").get_batch(np.arange(60))
    np.testing.assert_array_equal(marked["marker_mask"], markers[marked["label"]])
    outside = ~marked["marker_mask"]
    np.testing.assert_array_equal(marked["image"][outside], test["image"][outside])
    np.testing.assert_array_equal(marked["mask"], test["mask"])
    plain = load_dataset(shapes_config())
    assert "test_marked" not in plain.splits
    assert not plain.split("train").get_batch(np.arange(12))["marker_mask"].any()


def test_every_kind_present_and_distinct(dataset, train_batch):
    assert dataset.class_names == KINDS and dataset.num_classes == 6
    labels = train_batch["label"]
    np.testing.assert_array_equal(np.bincount(labels), [50] * 6)
    np.testing.assert_array_equal(labels, dataset.split("train").labels)
    masks, boxes = train_batch["mask"], train_batch["box"]
    fill = masks.sum(axis=(1, 2)) / np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    centre_filled = np.array(
        [m[(b[0] + b[2]) // 2, (b[1] + b[3]) // 2] for m, b in zip(masks, boxes)]
    )
    ring, disc = KINDS.index("ring"), KINDS.index("disc")
    # A ring has a hole at its centre; every other kind covers its centre.
    assert not centre_filled[labels == ring].any()
    assert centre_filled[labels != ring].all()
    # A digitised disc fills about π/4 of its box.
    assert np.all(np.abs(fill[labels == disc] - np.pi / 4) < 0.08)
    # A triangle fills at most half of its box, whatever its rotation (plus pixel edges).
    assert np.all(fill[labels == KINDS.index("triangle")] < 0.62)


def test_fewer_classes_and_bad_options():
    three = load_dataset(shapes_config(num_classes=3))
    assert three.class_names == KINDS[:3]
    assert set(three.split("val").labels) == {0, 1, 2}
    with pytest.raises(DataError, match="num_classes"):
        load_dataset(shapes_config(num_classes=7))
    config = shapes_config()
    config.image_size = 16
    with pytest.raises(DataError, match="image_size"):
        load_dataset(config)


def test_hsv_colours_match_colorsys():
    import colorsys

    from protojax.data.shapes import _hsv_to_rgb

    hsv = np.random.default_rng(0).random((50, 3)).astype(np.float32)
    ours = _hsv_to_rgb(hsv[:, 0], hsv[:, 1], hsv[:, 2])
    reference = [colorsys.hsv_to_rgb(*map(float, c)) for c in hsv]
    np.testing.assert_allclose(ours, reference, atol=1e-5)


def test_default_image_size_is_each_sources_own():
    """The issue's defaults: shapes 64×64, digits 28×28, when data.image_size is not set."""
    from protojax.data.specs import describe

    config = default_config()
    assert config.image_size == 0
    config.name = "shapes"
    config.shapes.num_train, config.shapes.num_val, config.shapes.num_test = 4, 2, 2
    shapes = load_dataset(config)
    assert shapes.image_shape == describe(config).image_shape == (64, 64, 3)
    assert shapes.split("train").get_batch(np.arange(2))["image"].shape == (2, 64, 64, 3)
    config.name = "digits"
    digits = load_dataset(config)
    assert digits.image_shape == describe(config).image_shape == (28, 28, 1)
    assert digits.split("val").get_batch(np.arange(2))["image"].shape == (2, 28, 28, 1)
