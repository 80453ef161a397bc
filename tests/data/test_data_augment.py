"""Augmentation: per-example keys, and each transform against a reference or a property."""

import ml_collections
import numpy as np
import pytest
from scipy import ndimage

from protojax.data.augment import (
    augment_batch,
    augment_params,
    color_jitter,
    crop_and_flip,
    rotate,
)


def augment_config(crop_padding=0, hflip=False, rotation_degrees=0.0, color_jitter=0.0):
    return ml_collections.ConfigDict(
        dict(
            crop_padding=crop_padding,
            hflip=hflip,
            rotation_degrees=rotation_degrees,
            color_jitter=color_jitter,
        )
    )


ALL_ON = augment_config(crop_padding=3, hflip=True, rotation_degrees=20.0, color_jitter=0.4)


@pytest.fixture(scope="module")
def images():
    return np.random.default_rng(0).random((24, 12, 10, 3), dtype=np.float32)


def test_keyed_by_seed_epoch_index_not_by_batch(images):
    indices = np.arange(100, 124)
    full = augment_batch(images, indices, seed=5, epoch=2, config=ALL_ON)
    order = np.random.default_rng(1).permutation(24)
    shuffled = augment_batch(images[order], indices[order], seed=5, epoch=2, config=ALL_ON)
    np.testing.assert_array_equal(shuffled, full[order])
    halves = [
        augment_batch(images[s], indices[s], seed=5, epoch=2, config=ALL_ON)
        for s in (slice(0, 7), slice(7, 24))
    ]
    np.testing.assert_array_equal(np.concatenate(halves), full)
    for other in (dict(seed=6, epoch=2), dict(seed=5, epoch=3)):
        assert not np.array_equal(augment_batch(images, indices, config=ALL_ON, **other), full)
    # The draws of one transform do not depend on which others are enabled.
    crop_only = augment_params(indices, seed=5, epoch=2, config=augment_config(crop_padding=3))
    np.testing.assert_array_equal(
        crop_only.offsets, augment_params(indices, seed=5, epoch=2, config=ALL_ON).offsets
    )


@pytest.mark.parametrize("padding", [3, 15])
def test_crop_is_a_window_of_the_zero_padded_image(images, padding):
    config = augment_config(crop_padding=padding)
    indices = np.arange(24)
    out = augment_batch(images, indices, seed=0, epoch=0, config=config)
    offsets = augment_params(indices, seed=0, epoch=0, config=config).offsets
    assert offsets.min() >= 0 and offsets.max() <= 2 * padding
    assert len({tuple(o) for o in offsets}) > 10
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    for i, (y, x) in enumerate(offsets):
        np.testing.assert_array_equal(out[i], padded[i, y : y + 12, x : x + 10])


def test_flip_reverses_columns_of_about_half(images):
    config = augment_config(hflip=True)
    out = augment_batch(images, np.arange(24), seed=0, epoch=0, config=config)
    flipped = [np.array_equal(o, im[:, ::-1]) for o, im in zip(out, images)]
    kept = [np.array_equal(o, im) for o, im in zip(out, images)]
    assert all(f != k for f, k in zip(flipped, kept))
    assert 4 <= sum(flipped) <= 20
    # Crop then flip: the flipped window of the padded image.
    params = augment_params(np.arange(24), seed=0, epoch=0, config=augment_config(2, True))
    both = crop_and_flip(images, params.offsets, params.flip, padding=2)
    padded = np.pad(images, ((0, 0), (2, 2), (2, 2), (0, 0)))
    for i, ((y, x), flip) in enumerate(zip(params.offsets, params.flip)):
        window = padded[i, y : y + 12, x : x + 10]
        np.testing.assert_array_equal(both[i], window[:, ::-1] if flip else window)


def test_rotation_by_zero_is_the_identity_and_by_90_is_rot90():
    square = np.random.default_rng(2).random((3, 9, 9, 2), dtype=np.float32)
    np.testing.assert_array_equal(rotate(square, np.zeros(3, np.float32)), square)
    np.testing.assert_allclose(
        rotate(square, np.full(3, 90.0, np.float32)),
        np.rot90(square, k=1, axes=(1, 2)),
        atol=1e-5,
    )


def test_rotation_matches_scipy_affine_transform(images):
    angles = np.linspace(-25, 25, 24).astype(np.float32)
    out = rotate(images, angles)
    centre = np.array([(12 - 1) / 2, (10 - 1) / 2])
    for i, angle in enumerate(np.deg2rad(angles.astype(np.float64))):
        # Output pixel o reads input matrix @ o + offset: the output offset rotated by -angle.
        matrix = np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        offset = centre - matrix @ centre
        for c in range(3):
            reference = ndimage.affine_transform(
                images[i, :, :, c].astype(np.float64),
                matrix,
                offset=offset,
                order=1,
                mode="grid-constant",
                cval=0.0,
            )
            np.testing.assert_allclose(out[i, :, :, c], reference, atol=2e-5)


def test_rotation_angles_are_bounded_and_spread():
    params = augment_params(
        np.arange(200), seed=1, epoch=0, config=augment_config(rotation_degrees=15.0)
    )
    assert np.abs(params.angles).max() <= 15.0 and params.angles.std() > 6.0


def jitter_reference(image, brightness, contrast, saturation):
    """torchvision's adjust_brightness/contrast/saturation on one float64 image."""
    weights = np.array([0.299, 0.587, 0.114])
    x = np.clip(image.astype(np.float64) * brightness, 0, 1)
    mean = (x @ weights).mean()
    x = np.clip(contrast * x + (1 - contrast) * mean, 0, 1)
    grey = (x @ weights)[..., None]
    return np.clip(saturation * x + (1 - saturation) * grey, 0, 1)


def test_color_jitter_matches_reference_and_stays_in_range(images):
    config = augment_config(color_jitter=0.8)
    out = augment_batch(images, np.arange(24), seed=3, epoch=1, config=config)
    factors = augment_params(np.arange(24), seed=3, epoch=1, config=config).jitter
    assert factors.min() >= 0.2 - 1e-6 and factors.max() <= 1.8 + 1e-6
    assert 0.0 <= out.min() and out.max() <= 1.0 and out.dtype == np.float32
    for i in range(24):
        np.testing.assert_allclose(out[i], jitter_reference(images[i], *factors[i]), atol=1e-5)
    np.testing.assert_allclose(color_jitter(images, np.ones((24, 3))), images, atol=1e-6)
    grey = images[..., :1]
    np.testing.assert_allclose(
        color_jitter(grey, np.array([[1.0, 1.0, 0.0]] * 24)), grey, atol=1e-6
    )


def test_disabled_is_identity_and_bad_input_is_refused(images):
    out = augment_batch(images, np.arange(24), seed=0, epoch=0, config=augment_config())
    np.testing.assert_array_equal(out, images)
    with pytest.raises(ValueError, match="images"):
        augment_batch(images[0], np.arange(1), seed=0, epoch=0, config=ALL_ON)
    with pytest.raises(ValueError, match="indices"):
        augment_batch(images, np.arange(3), seed=0, epoch=0, config=ALL_ON)
    with pytest.raises(ValueError, match="non-negative"):
        augment_batch(images, np.arange(24), seed=-1, epoch=0, config=ALL_ON)


def test_pipeline_stream_applies_the_keyed_augmentation():
    from protojax.data import default_config, load_dataset, pipeline

    config = default_config()
    config.name, config.image_size = "shapes", 32
    config.shapes.num_train, config.shapes.num_val, config.shapes.num_test = 40, 8, 8
    split = load_dataset(config).split("train")
    args = dict(seed=4, batch_size=8, start_step=3, end_step=7, augment=ALL_ON, num_workers=2)
    first = list(pipeline.train_batches(split, **args))
    again = list(pipeline.train_batches(split, **args))
    for step, (a, b) in enumerate(zip(first, again, strict=True), start=3):
        np.testing.assert_array_equal(a["image"], b["image"])
        epoch = step // 5  # 40 // 8 = 5 steps per epoch
        expected = augment_batch(
            split.get_batch(a["index"])["image"], a["index"], seed=4, epoch=epoch, config=ALL_ON
        )
        np.testing.assert_array_equal(a["image"], expected)
