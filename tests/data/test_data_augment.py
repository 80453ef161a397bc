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
    rotate_zoom,
    shear,
    skew,
    skew_corners,
)


def augment_config(
    crop_padding=0, hflip=False, rotation_degrees=0.0, color_jitter=0.0, augmentor_mix=False
):
    return ml_collections.ConfigDict(
        dict(
            crop_padding=crop_padding,
            hflip=hflip,
            rotation_degrees=rotation_degrees,
            color_jitter=color_jitter,
            augmentor_mix=augmentor_mix,
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


def _affine_reference(image, matrix, centre):
    """scipy's bilinear affine resampling about `centre`, zero outside, channel by channel."""
    offset = centre - matrix @ centre
    return np.stack(
        [
            ndimage.affine_transform(
                image[..., c].astype(np.float64),
                matrix,
                offset=offset,
                order=1,
                mode="grid-constant",
                cval=0.0,
            )
            for c in range(image.shape[-1])
        ],
        axis=-1,
    )


def test_augmentor_rotation_zooms_to_fill_the_frame(images):
    # A hand-made 12×10 image of ones: a plain rotation leaves empty corners, the zoomed one
    # none. The rectangle spans the outer pixel centres, 11 × 9.
    ones = np.ones((2, 12, 10, 1), np.float32)
    angles = np.array([15.0, -15.0], np.float32)
    assert rotate(ones, angles).min() == 0.0
    np.testing.assert_allclose(rotate_zoom(ones, angles), 1.0, atol=1e-5)
    centre = np.array([5.5, 4.5])
    for i, degrees in enumerate([15.0, -7.0]):
        cos, sin = np.cos(np.deg2rad(abs(degrees))), np.sin(np.deg2rad(abs(degrees)))
        zoom = min(9 / (9 * cos + 11 * sin), 11 / (9 * sin + 11 * cos))
        angle = np.deg2rad(degrees)
        matrix = zoom * np.array([[np.cos(angle), np.sin(angle)], [-np.sin(angle), np.cos(angle)]])
        np.testing.assert_allclose(
            rotate_zoom(images[i : i + 1], np.array([degrees]))[0],
            _affine_reference(images[i], matrix, centre),
            atol=2e-5,
        )
    # For a square the zoom is the classic 1 / (cos θ + sin θ): a corner pixel's source is
    # exactly the rotated image's edge.
    y, x = np.mgrid[0:9, 0:9].astype(np.float32)
    out = rotate_zoom(np.stack([y, x], axis=-1)[None], np.array([15.0]))[0]
    k = 1 / (np.cos(np.deg2rad(15.0)) + np.sin(np.deg2rad(15.0)))
    cos, sin = k * np.cos(np.deg2rad(15.0)), k * np.sin(np.deg2rad(15.0))
    # Output pixel (0, 0), offset (-4, -4) from the centre, reads the top edge (y = 0).
    np.testing.assert_allclose(out[0, 0], [0.0, 4 + 4 * (sin - cos)], atol=1e-4)


@pytest.mark.parametrize("axis", [0, 1])
def test_augmentor_shear_against_scipy_and_spans_the_image(images, axis):
    height, width = 12, 10
    centre = np.array([(height - 1) / 2, (width - 1) / 2])
    for i, degrees in enumerate([10.0, -6.0]):
        t = np.tan(np.deg2rad(degrees))
        if axis == 0:  # (y, x) -> (y, (1 - |t| H / W) x + t y) about the centre
            matrix = np.array([[1.0, 0.0], [t, 1 - abs(t) * 11 / 9]])
        else:
            matrix = np.array([[1 - abs(t) * 9 / 11, t], [0.0, 1.0]])
        out = shear(images[i : i + 1], np.array([degrees]), np.array([axis]))[0]
        np.testing.assert_allclose(out, _affine_reference(images[i], matrix, centre), atol=2e-5)
    # On a hand-made coordinate ramp (bilinear is exact on it) the sheared parallelogram runs
    # from the image's left edge at the top to its right edge at the bottom (for x, t > 0),
    # between the outer pixel centres.
    y, x = np.mgrid[0:24, 0:20].astype(np.float32)
    ramp = np.stack([y, x], axis=-1)[None]
    t = np.tan(np.deg2rad(10.0))
    out = shear(ramp, np.array([10.0]), np.array([0]))[0]
    np.testing.assert_allclose(out[..., 0], y, atol=1e-4)  # rows are kept
    slope = (out[-1, :, 1] - out[0, :, 1]) / 23
    np.testing.assert_allclose(slope, t, atol=1e-4)  # each column leans by tan(10°)
    widths = out[:, -1, 1] - out[:, 0, 1]
    np.testing.assert_allclose(widths, 19 - 23 * t, atol=1e-4)
    assert out[0, 0, 1] == pytest.approx(0.0, abs=1e-4) and out[-1, -1, 1] == pytest.approx(19.0)


def _pil_perspective(plane, corners, size):
    """PIL's bilinear PERSPECTIVE transform of a float plane with the coefficients solved as
    Augmentor solves them: the map from the moved corners back to the original ones."""
    from PIL import Image

    height, width = size
    original = [(0, 0), (width, 0), (width, height), (0, height)]
    rows = []
    for (x, y), (u, v) in zip(corners, original):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
    coefficients = np.linalg.pinv(np.asarray(rows, float)) @ np.asarray(original, float).reshape(8)
    image = Image.fromarray(plane.astype(np.float32), mode="F")
    return np.asarray(
        image.transform((width, height), Image.PERSPECTIVE, coefficients, Image.BILINEAR)
    )


@pytest.mark.parametrize("direction", [0, 3, 4, 9])
def test_augmentor_skew_matches_pil_perspective(direction):
    # A hand-made smooth image (a bilinear ramp plus a product term) away from the edges.
    y, x = np.mgrid[0:30, 0:26].astype(np.float32)
    image = np.stack([x / 26, y / 30, (x * y) / 780.0], axis=-1)
    amount = 6  # ⌈0.2 · 30⌉
    corners = skew_corners(30, 26, direction, amount)
    out = skew(image[None], np.array([direction]), np.array([amount]))[0]
    for c in range(3):
        reference = _pil_perspective(image[..., c], corners, (30, 26))
        # PIL treats the border pixels differently (no zero fill between the last pixel centre
        # and the edge); compare where the source is well inside.
        inside = (reference > 0) & (out[..., c] > 0)
        inside[[0, -1]] = inside[:, [0, -1]] = False
        assert inside.mean() > 0.6
        np.testing.assert_allclose(out[..., c][inside], reference[inside], atol=2e-3)


def test_augmentor_mix_draws_a_third_of_each_and_is_keyed(images):
    config = augment_config(hflip=True, augmentor_mix=True)
    params = augment_params(np.arange(3000), seed=0, epoch=0, config=config)
    np.testing.assert_allclose(np.bincount(params.mix, minlength=3) / 3000, 1 / 3, atol=0.03)
    rotations, shears = params.mix_angle[params.mix == 0], params.mix_angle[params.mix == 2]
    assert np.abs(rotations).max() <= 15.0 and rotations.std() > 7.0
    assert np.abs(shears).max() <= 10.0 and shears.std() > 4.5
    # Augmentor's RANDOM skew: tilts (0-3) three quarters, corners (4-11) one quarter.
    tilts = np.mean(params.skew_direction < 4)
    assert abs(tilts - 0.75) < 0.03 and params.skew_direction.max() == 11
    # Turning the mix on leaves the other transforms' draws unchanged.
    plain = augment_params(np.arange(3000), seed=0, epoch=0, config=augment_config(hflip=True))
    np.testing.assert_array_equal(plain.flip, params.flip)
    assert (plain.mix == -1).all()
    # Each example gets its operation, keyed by its index, whatever its batch.
    indices = np.arange(24)
    out = augment_batch(images, indices, seed=2, epoch=1, config=config)
    again = augment_batch(images[::-1], indices[::-1], seed=2, epoch=1, config=config)
    np.testing.assert_array_equal(out, again[::-1])
    chosen = augment_params(indices, seed=2, epoch=1, config=config)
    for i in np.flatnonzero(chosen.mix == 0)[:2]:
        flipped = images[i, :, ::-1] if chosen.flip[i] else images[i]
        np.testing.assert_array_equal(
            out[i], rotate_zoom(flipped[None], chosen.mix_angle[i : i + 1])[0]
        )
