"""Training augmentation on host batches, keyed by (seed, epoch, example index).

Every example draws its parameters from `np.random.default_rng([seed, epoch, index])`, so its
augmentation does not depend on the batch it lands in, on its position there, or on the thread
that assembles the batch. Each image goes through these transforms in this order:

1. random crop after zero padding by `crop_padding` pixels (a shift with zero fill);
2. horizontal flip with probability 1/2 (`hflip`);
3. rotation by an angle uniform in [-`rotation_degrees`, `rotation_degrees`] about the image
   centre, counter-clockwise for positive angles, bilinear with zero fill;
4. ProtoPNet's official Augmentor mix (`augmentor_mix`), online: a third of the examples
   (drawn per example) are rotated, a third skewed and a third sheared, as the official
   `img_aug.py` (cfchen-duke/ProtoPNet) makes its 30 offline copies with Augmentor. Combine
   it with `hflip` for the official random flip; these distributions are mirror-symmetric, so
   flipping first gives the same mix as Augmentor's flip after the operation.
   - rotate: an angle uniform in [-15°, 15°] about the centre, then the largest centred
     rectangle of the image's aspect ratio inside the rotated image is zoomed back to full size
     (Augmentor's `RotateRange`), which leaves no empty corners;
   - skew: Augmentor's `skew(magnitude=0.2)`, a perspective warp that moves one or two corners
     outwards by an integer amount in [1, ⌈0.2·max(H, W)⌉]: a tilt to one of 4 sides
     (probability 3/4) or one corner along one axis (8 ways, 1/4), with zero fill;
   - shear: an angle φ uniform in [-10°, 10°] along x or y (1/2 each); the centred
     parallelogram of the sheared image that spans its height (x) or width (y) is stretched
     back to full size, as Augmentor's `Shear` crops and resizes.
   Augmentor draws integer degrees and resamples bicubically twice; here angles are continuous
   and each image is resampled once, bilinearly.
5. colour jitter of strength j (`color_jitter`): brightness, contrast and saturation factors
   uniform in [1 - j, 1 + j] (floored at 0), applied in that order as torchvision defines
   them (contrast blends with the image's mean grey level, saturation with each pixel's grey
   level), with clipping to [0, 1] after each.

Every example draws all of its parameters whichever transforms are enabled, so turning one
transform on or off leaves the others' draws unchanged.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

_GREY_WEIGHTS = np.array([0.299, 0.587, 0.114], np.float32)
# crop y, crop x, flip, angle, brightness, contrast, saturation; then the Augmentor mix:
# operation, rotation, skew type, skew direction, skew amount, shear angle, shear axis.
_NUM_DRAWS = 14
MIX_ROTATION_DEGREES = 15.0
MIX_SKEW_MAGNITUDE = 0.2
MIX_SHEAR_DEGREES = 10.0
MIX_OPERATIONS = ("rotate", "skew", "shear")
# Skew directions as Augmentor numbers them: 4 tilts (left, right, forward, backward), then 8
# corner moves. Each moves corners (top-left, top-right, bottom-right, bottom-left) by
# (x, y) multiples of the skew amount.
_SKEW_MOVES = np.array(
    [
        [[0, -1], [0, 0], [0, 0], [0, 1]],
        [[0, 0], [0, -1], [0, 1], [0, 0]],
        [[-1, 0], [1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [1, 0], [-1, 0]],
        [[-1, 0], [0, 0], [0, 0], [0, 0]],
        [[0, -1], [0, 0], [0, 0], [0, 0]],
        [[0, 0], [1, 0], [0, 0], [0, 0]],
        [[0, 0], [0, -1], [0, 0], [0, 0]],
        [[0, 0], [0, 0], [1, 0], [0, 0]],
        [[0, 0], [0, 0], [0, 1], [0, 0]],
        [[0, 0], [0, 0], [0, 0], [-1, 0]],
        [[0, 0], [0, 0], [0, 0], [0, 1]],
    ],
    np.float64,
)


class AugmentParams(NamedTuple):
    """Per-example augmentation parameters of a batch of n examples.

    Attributes:
      offsets: `[n, 2] int` crop window origin (y, x) in the padded image, in [0, 2·padding].
      flip: `[n] bool` whether to flip horizontally.
      angles: `[n] float32` rotation in degrees, counter-clockwise.
      jitter: `[n, 3] float32` brightness, contrast and saturation factors.
      mix: `[n] int` the Augmentor-mix operation (an index of `MIX_OPERATIONS`), -1 if off.
      mix_angle: `[n] float64` its rotation or shear angle in degrees.
      skew_direction: `[n] int` one of Augmentor's 12 skew directions (`_SKEW_MOVES`).
      skew_fraction: `[n] float64` in [0, 1): draws the integer skew amount.
      shear_axis: `[n] int` 0: shear along x, 1: along y.
    """

    offsets: np.ndarray
    flip: np.ndarray
    angles: np.ndarray
    jitter: np.ndarray
    mix: np.ndarray
    mix_angle: np.ndarray
    skew_direction: np.ndarray
    skew_fraction: np.ndarray
    shear_axis: np.ndarray


def augment_params(indices: np.ndarray, *, seed: int, epoch: int, config) -> AugmentParams:
    """Draws the parameters of the examples `indices [n]` (see the module docstring).

    Disabled transforms get neutral parameters: offset `padding` (no shift), no flip, angle 0
    and factors 1.
    """
    indices = np.asarray(indices)
    if seed < 0 or epoch < 0 or (len(indices) and indices.min() < 0):
        raise ValueError(
            f"Augmentation keys must be non-negative; got seed={seed}, epoch={epoch} and "
            f"indices down to {indices.min()}."
        )
    draws = np.empty((len(indices), _NUM_DRAWS), np.float64)
    for row, index in enumerate(indices):
        draws[row] = np.random.default_rng([seed, epoch, int(index)]).random(_NUM_DRAWS)
    padding = int(config.crop_padding)
    offsets = np.floor(draws[:, :2] * (2 * padding + 1)).astype(np.int64)
    flip = (draws[:, 2] < 0.5) & bool(config.hflip)
    angles = ((2 * draws[:, 3] - 1) * float(config.rotation_degrees)).astype(np.float32)
    jitter = (1 + (2 * draws[:, 4:7] - 1) * float(config.color_jitter)).astype(np.float32)
    mix = np.floor(draws[:, 7] * 3).astype(np.int64) if config.get("augmentor_mix") else None
    mix = np.full(len(indices), -1) if mix is None else mix
    span = np.where(mix == 2, MIX_SHEAR_DEGREES, MIX_ROTATION_DEGREES)
    mix_angle = np.where(mix == 2, 2 * draws[:, 12] - 1, 2 * draws[:, 8] - 1) * span
    # Augmentor's RANDOM skew: TILT (any of 4 tilts), TILT_LEFT_RIGHT, TILT_TOP_BOTTOM or
    # CORNER (any of 8), each a quarter.
    kind, within = np.floor(draws[:, 9] * 4).astype(np.int64), draws[:, 10]
    first, count = np.array([0, 0, 2, 4])[kind], np.array([4, 2, 2, 8])[kind]
    skew_direction = first + np.floor(within * count).astype(np.int64)
    shear_axis = (draws[:, 13] < 0.5).astype(np.int64)
    return AugmentParams(
        offsets,
        flip,
        angles,
        np.maximum(jitter, 0.0),
        mix,
        mix_angle,
        skew_direction,
        draws[:, 11],
        shear_axis,
    )


def crop_and_flip(
    images: np.ndarray, offsets: np.ndarray, flip: np.ndarray, *, padding: int
) -> np.ndarray:
    """Crops `images [n, H, W, C]` from their zero-padded copies, then flips where asked.

    Example i is the window at `offsets[i]` (y, x) of the image padded by `padding` pixels on
    every side, with its columns reversed where `flip[i]`. Returns `[n, H, W, C]` float32.
    """
    return np.stack(
        [_crop_flip_one(image, o, f, padding) for image, o, f in zip(images, offsets, flip)]
    )


def rotate(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotates `images [n, H, W, C]` by `angles [n]` degrees counter-clockwise, bilinearly.

    The rotation is about the centre ((H - 1) / 2, (W - 1) / 2); pixels that come from outside
    the image are 0. Returns `[n, H, W, C]` float32.
    """
    return np.stack([_rotate_one(image, float(angle)) for image, angle in zip(images, angles)])


def rotate_zoom(images: np.ndarray, angles: np.ndarray) -> np.ndarray:
    """Rotates `images [n, H, W, C]` by `angles [n]` degrees counter-clockwise about the centre
    and zooms in on the largest centred rectangle of aspect H:W inside the rotated image, so
    that no pixel comes from outside it (Augmentor's `RotateRange`). The rectangle is taken
    between the outer pixel centres, (H - 1) × (W - 1). Returns `[n, H, W, C]` float32."""
    return np.stack([_rotate_zoom_one(image, float(a)) for image, a in zip(images, angles)])


def shear(images: np.ndarray, angles: np.ndarray, axes: np.ndarray) -> np.ndarray:
    """Shears `images [n, H, W, C]` by `angles [n]` degrees along x (`axes` 0) or y (1), then
    stretches the centred parallelogram that spans the image back to full size (Augmentor's
    `Shear`). Along x, output pixel (y, x) samples
    (y, cx + (1 - |t|·(H - 1)/(W - 1))·(x - cx) + t·(y - cy)), t = tan(angle), with the centre
    (cy, cx) = ((H - 1)/2, (W - 1)/2), so that the parallelogram runs between the outer pixel
    centres; along y symmetrically. Returns `[n, H, W, C]` float32."""
    return np.stack(
        [_shear_one(image, float(a), int(axis)) for image, a, axis in zip(images, angles, axes)]
    )


def skew_corners(height: int, width: int, direction: int, amount: float) -> np.ndarray:
    """Where Augmentor's skew `direction` (0-11) by `amount` pixels puts the image's corners:
    `[4, 2]` (x, y) for top-left, top-right, bottom-right, bottom-left, in continuous pixel
    coordinates (the image spans [0, W] × [0, H])."""
    corners = np.array([[0, 0], [width, 0], [width, height], [0, height]], np.float64)
    return corners + amount * _SKEW_MOVES[direction]


def skew(images: np.ndarray, directions: np.ndarray, amounts: np.ndarray) -> np.ndarray:
    """Warps `images [n, H, W, C]` by the perspective map that moves their corners to
    `skew_corners(H, W, direction, amount)`, bilinearly with zero fill. Returns
    `[n, H, W, C]` float32."""
    return np.stack(
        [_skew_one(image, int(d), float(a)) for image, d, a in zip(images, directions, amounts)]
    )


def color_jitter(images: np.ndarray, factors: np.ndarray) -> np.ndarray:
    """Brightness, contrast and saturation of `images [n, H, W, C]` by `factors [n, 3]`.

    Brightness scales the image; contrast blends it with its mean grey level; saturation
    blends each pixel with its grey level (a no-op for C = 1). Each step clips to [0, 1].
    Returns `[n, H, W, C]` float32.
    """
    return np.stack([_jitter_one(image, f) for image, f in zip(images, factors)])


# The kernels below work on one image `[H, W, C]`: its arrays stay in cache across the
# transforms, which makes a loop over the batch 1.5–2× faster than batch-wide arrays.


def _crop_flip_one(image: np.ndarray, offset: np.ndarray, flip: bool, padding: int) -> np.ndarray:
    # The padded image's window at `offset` is the image shifted by (padding - offset) with
    # zero fill.
    (dst_y, src_y), (dst_x, src_x) = (
        _shift_slices(padding - int(o), size) for o, size in zip(offset, image.shape)
    )
    out = np.zeros(image.shape, np.float32)
    out[dst_y, dst_x] = image[src_y, src_x]
    return out[:, ::-1] if flip else out


def _shift_slices(shift: int, size: int) -> tuple[slice, slice]:
    """Destination and source slices that shift an axis of `size` by `shift`."""
    length = max(size - abs(shift), 0)
    dst, src = max(shift, 0), max(-shift, 0)
    return slice(dst, dst + length), slice(src, src + length)


def _rotate_one(image: np.ndarray, angle: float, zoom: float = 1.0) -> np.ndarray:
    height, width, _ = image.shape
    theta = np.deg2rad(angle)
    cos, sin = np.float32(np.cos(theta) * zoom), np.float32(np.sin(theta) * zoom)
    cy, cx = (height - 1) / 2, (width - 1) / 2
    dy = (np.arange(height, dtype=np.float32) - cy)[:, None]
    dx = (np.arange(width, dtype=np.float32) - cx)[None, :]
    # Inverse map: the source of each output pixel is the output offset rotated by -angle.
    return _sample(image, cy + sin * dx + cos * dy, cx + cos * dx - sin * dy)


def _rotate_zoom_one(image: np.ndarray, angle: float) -> np.ndarray:
    height, width = image.shape[0] - 1, image.shape[1] - 1  # between the outer pixel centres
    theta = np.deg2rad(abs(angle))
    cos, sin = np.cos(theta), np.sin(theta)
    # The centred rectangle k·(W, H) fits the rotated image while its corners' rotated
    # offsets stay within the image's half-extents: no sample blends in the zero fill.
    zoom = min(width / (width * cos + height * sin), height / (width * sin + height * cos))
    return _rotate_one(image, angle, zoom)


def _shear_one(image: np.ndarray, angle: float, axis: int) -> np.ndarray:
    height, width, _ = image.shape
    t = np.tan(np.deg2rad(angle))
    cy, cx = (height - 1) / 2, (width - 1) / 2
    dy = (np.arange(height, dtype=np.float64) - cy)[:, None]
    dx = (np.arange(width, dtype=np.float64) - cx)[None, :]
    if axis == 0:
        src_y, src_x = cy + dy + 0 * dx, cx + (1 - abs(t) * cy / cx) * dx + t * dy
    else:
        src_y, src_x = cy + (1 - abs(t) * cx / cy) * dy + t * dx, cx + dx + 0 * dy
    return _sample(image, src_y.astype(np.float32), src_x.astype(np.float32))


def _homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 3×3 projective map (x, y) ↦ target from four `source [4, 2]` corners."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs += [u, v]
    h = np.linalg.solve(np.asarray(rows), np.asarray(rhs))
    return np.append(h, 1.0).reshape(3, 3)


def _skew_one(image: np.ndarray, direction: int, amount: float) -> np.ndarray:
    height, width, _ = image.shape
    corners = skew_corners(height, width, direction, 0.0)
    # Inverse map: from the moved corners back to the image's own.
    h = _homography(skew_corners(height, width, direction, amount), corners)
    y, x = np.mgrid[0:height, 0:width].astype(np.float64) + 0.5  # pixel centres
    u, v, w = (h[i, 0] * x + h[i, 1] * y + h[i, 2] for i in range(3))
    return _sample(image, (v / w - 0.5).astype(np.float32), (u / w - 0.5).astype(np.float32))


def _sample(image: np.ndarray, src_y: np.ndarray, src_x: np.ndarray) -> np.ndarray:
    """Bilinear samples `[H, W, C]` of `image` at pixel coordinates `src_y`, `src_x` `[H, W]`
    (pixel centres at integers), 0 outside the image."""
    height, width, channels = image.shape
    # Sources are clamped to [-1, H] × [-1, W]: beyond that every neighbour is 0 anyway.
    src_y = np.clip(src_y, -1, height)
    src_x = np.clip(src_x, -1, width)
    y0, x0 = np.floor(src_y), np.floor(src_x)
    wy, wx = src_y - y0, src_x - x0
    # Channel planes with zero borders (1 before, 2 after) that hold every neighbour of a
    # clamped source; 1-D takes from a plane are the fastest gather NumPy offers.
    row = width + 3
    planes = np.pad(np.moveaxis(image, -1, 0), ((0, 0), (1, 2), (1, 2))).reshape(channels, -1)
    top_left = (y0.astype(np.intp) + 1) * row + x0.astype(np.intp) + 1
    out = np.empty((height, width, channels), np.float32)
    for channel, plane in enumerate(planes):
        left, right = plane.take(top_left), plane.take(top_left + 1)
        top = left + wx * (right - left)
        left, right = plane.take(top_left + row), plane.take(top_left + row + 1)
        bottom = left + wx * (right - left)
        out[..., channel] = top + wy * (bottom - top)
    return out


def _mix_one(image: np.ndarray, params: AugmentParams, i: int) -> np.ndarray:
    operation = MIX_OPERATIONS[params.mix[i]]
    if operation == "rotate":
        return _rotate_zoom_one(image, float(params.mix_angle[i]))
    if operation == "shear":
        return _shear_one(image, float(params.mix_angle[i]), int(params.shear_axis[i]))
    return _skew_one(image, int(params.skew_direction[i]), skew_amount(image.shape, params, i))


def skew_amount(shape: tuple[int, ...], params: AugmentParams, i: int) -> int:
    """Example i's skew amount in pixels: an integer in [1, ⌈0.2·max(H, W)⌉]."""
    top = int(np.ceil(max(shape[0], shape[1]) * MIX_SKEW_MAGNITUDE))
    return 1 + int(params.skew_fraction[i] * top)


def _jitter_one(image: np.ndarray, factors: np.ndarray) -> np.ndarray:
    brightness, contrast, saturation = (np.float32(f) for f in factors)
    out = image * brightness
    np.clip(out, 0.0, 1.0, out=out)
    mean = _grey(out).mean()
    out *= contrast
    out += (1 - contrast) * mean
    np.clip(out, 0.0, 1.0, out=out)
    grey = _grey(out)
    out *= saturation
    out += (1 - saturation) * grey
    np.clip(out, 0.0, 1.0, out=out)
    return out


def _grey(image: np.ndarray) -> np.ndarray:
    """Grey levels `[..., 1]` of an image `[..., C]` (C = 1 or 3)."""
    if image.shape[-1] == 1:
        return image.copy()  # a copy: the caller scales `image` in place afterwards
    return (image @ _GREY_WEIGHTS)[..., None]


def augment_batch(
    images: np.ndarray, indices: np.ndarray, *, seed: int, epoch: int, config
) -> np.ndarray:
    """Augments a training batch.

    Args:
      images: `[n, H, W, C]` float32 in [0, 1].
      indices: `[n]` the examples' indices in their split: the key of their randomness.
      seed: the run's data seed.
      epoch: the epoch being served.
      config: the `data.augment` section: `crop_padding`, `hflip`, `rotation_degrees`,
        `augmentor_mix` and `color_jitter`.

    Returns:
      `[n, H, W, C]` float32 in [0, 1].
    """
    if images.ndim != 4:
        raise ValueError(f"augment_batch expects images [n, H, W, C]; got shape {images.shape}.")
    if len(indices) != len(images):
        raise ValueError(f"augment_batch got {len(images)} images but {len(indices)} indices.")
    params = augment_params(indices, seed=seed, epoch=epoch, config=config)
    out = np.empty(images.shape, np.float32)
    for i, image in enumerate(np.asarray(images, np.float32)):
        if config.crop_padding or config.hflip:
            image = _crop_flip_one(image, params.offsets[i], params.flip[i], config.crop_padding)
        if config.rotation_degrees:
            image = _rotate_one(image, float(params.angles[i]))
        if params.mix[i] >= 0:
            image = _mix_one(image, params, i)
        if config.color_jitter:
            image = _jitter_one(image, params.jitter[i])
        out[i] = image
    return out
