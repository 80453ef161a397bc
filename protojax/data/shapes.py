"""A generated shapes dataset with ground-truth masks and an optional shortcut marker.

Each image shows one class object (its kind is the label) at a random position, scale,
rotation and colour, on a cluttered background: a smooth random colour field, pixel noise and
distractors (lines, dots and elongated blobs). Distractor kinds are disjoint from the class
kinds and never touch the object (they keep a 2-pixel gap), so labels are never ambiguous.

Every example is a pure function of (seed, split, index): its random numbers come from
`np.random.default_rng([seed, split_id, index])`, whatever the order or batch in which it is
asked for. Examples are rendered lazily, a block of 128 at a time (vectorised with NumPy), and
cached in memory as uint8; labels cycle through the classes (`label = index % num_classes`).

Fields besides `image`, `label` and `index`:
- `mask [H, W] bool`: the pixels of the class object, exactly those painted in its colour;
- `box [4] int32`: the tight box of `mask` as (y0, x0, y1, x1), with y1 and x1 exclusive
  (`mask[y0:y1, x0:x1]` holds the whole object);
- `marker_mask [H, W] bool`: the pixels of the shortcut marker (all false where none).

With `shortcut=True`, every training image carries a small white square whose position along
the top edge depends on the class only. Objects never enter that top strip. `val` and `test`
stay clean; the `test_marked` split is `test` with the markers stamped, for shortcut studies.
"""

from __future__ import annotations

import threading

import numpy as np

from protojax.config import ConfigDict
from protojax.data.base import Dataset, Split
from protojax.errors import DataError

KINDS = ("disc", "square", "triangle", "cross", "star", "ring")
DISTRACTOR_KINDS = ("line", "dot", "blob")
DEFAULT_SIZE = 64
_SPLIT_IDS = {"train": 0, "val": 1, "test": 2}
_BLOCK = 128
# centre y, centre x, radius, angle, hue, saturation, value, background grey, distractor count
_OBJECT_PARAMS = 9
_DISTRACTOR_PARAMS = 9  # kind, centre y, centre x, size, aspect, angle, hue, saturation, value
_BACKGROUND_GRID = 5  # the smooth background field is a 5×5 grid upsampled bilinearly
_EXTENT = 1.1  # every kind fits in a disc of radius _EXTENT × r around its centre


def _hsv_to_rgb(hue: np.ndarray, sat: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Colours `[...]` in HSV (each in [0, 1]) → `[..., 3]` RGB in [0, 1]."""
    sector = hue * 6.0
    channel_offsets = np.array([5.0, 3.0, 1.0], np.float32)
    k = np.mod(channel_offsets + sector[..., None], 6.0)
    weight = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return val[..., None] * (1.0 - sat[..., None] * weight)


def _kind_masks(kind: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Membership of object coordinates `u, v` (rotated, in units of the radius) in `kind`."""
    if kind == "disc":
        return u * u + v * v <= 1.0
    if kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.77
    if kind == "triangle":
        # Equilateral, circumradius _EXTENT: inside the three edges at the inradius.
        inside = np.ones(u.shape, bool)
        for angle in (np.pi / 2, np.pi / 2 + 2 * np.pi / 3, np.pi / 2 + 4 * np.pi / 3):
            inside &= u * np.cos(angle) + v * np.sin(angle) <= _EXTENT / 2
        return inside
    if kind == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 0.28) & (av <= 1.0)) | ((av <= 0.28) & (au <= 1.0))
    if kind == "star":
        # Five points at radius _EXTENT, inner corners at 0.45; fold every point onto the
        # sector between an outer point (angle 0) and an inner corner (angle π/5).
        rho = np.sqrt(u * u + v * v)
        sector = 2 * np.pi / 5
        folded = np.abs(np.mod(np.arctan2(v, u) + sector / 2, sector) - sector / 2)
        inner = 0.45
        normal = (inner * np.sin(sector / 2), _EXTENT - inner * np.cos(sector / 2))
        offset = normal[0] * _EXTENT
        return rho * (normal[0] * np.cos(folded) + normal[1] * np.sin(folded)) <= offset
    if kind == "ring":
        rho2 = u * u + v * v
        return (rho2 >= 0.6**2) & (rho2 <= 1.05**2)
    raise ValueError(f"Unknown kind {kind}.")


def _distractor_masks(
    kind: np.ndarray,
    dy: np.ndarray,
    dx: np.ndarray,
    length: np.ndarray,
    aspect: np.ndarray,
    angle: np.ndarray,
) -> np.ndarray:
    """Masks `[m, h, w]` of m distractors, given pixel offsets from their centres `dy [m, h, 1]`
    and `dx [m, 1, w]`, and parameters `[m]` in pixels and radians."""
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    along = dx * cos + dy * sin
    across = dy * cos - dx * sin
    # Lines: segments of half-length `length` and half-width 0.6 px.
    line = (np.abs(along) <= length[:, None, None]) & (np.abs(across) <= 0.6)
    # Dots: discs of radius `length` / 4; blobs: ellipses with semi-axes `length` / 2 and
    # `length` · aspect / 2 (aspect below 1/2, so they are elongated, unlike any class kind).
    semi_major = np.where(kind == 1, length / 4, length / 2)[:, None, None]
    semi_minor = np.where(kind == 1, length / 4, length * aspect / 2)[:, None, None]
    ellipse = (along / semi_major) ** 2 + (across / semi_minor) ** 2 <= 1.0
    return np.where(kind[:, None, None] == 0, line, ellipse)


def _dilate(masks: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation of `masks [n, H, W]` by a (2r+1)×(2r+1) square (separable)."""
    height, width = masks.shape[1:]
    padded = np.pad(masks, ((0, 0), (radius, radius), (radius, radius)))
    rows = np.zeros((len(masks), height, width + 2 * radius), bool)
    for shift in range(2 * radius + 1):
        rows |= padded[:, shift : shift + height]
    out = np.zeros(masks.shape, bool)
    for shift in range(2 * radius + 1):
        out |= rows[:, :, shift : shift + width]
    return out


def _interpolation_matrix(source: int, size: int) -> np.ndarray:
    """Bilinear weights `[size, source]` (half-pixel centres, edges clamped)."""
    coords = np.clip((np.arange(size) + 0.5) * source / size - 0.5, 0, source - 1)
    low = np.floor(coords).astype(int)
    high = np.minimum(low + 1, source - 1)
    frac = coords - low
    weights = np.zeros((size, source), np.float32)
    np.add.at(weights, (np.arange(size), low), 1 - frac)
    np.add.at(weights, (np.arange(size), high), frac)
    return weights


def render_examples(
    seed: int,
    split_id: int,
    indices: np.ndarray,
    *,
    size: int,
    num_classes: int,
    num_distractors: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Renders the examples `indices [n]` of one split.

    Returns:
      images `[n, S, S, 3] uint8`, masks `[n, S, S] bool` and boxes `[n, 4] int32`
      (y0, x0, y1, x1 with exclusive ends).
    """
    n = len(indices)
    obj = np.empty((n, _OBJECT_PARAMS), np.float32)
    grids = np.empty((n, _BACKGROUND_GRID, _BACKGROUND_GRID, 3), np.float32)
    noise = np.empty((n, size, size, 1), np.float32)
    dist = np.empty((n, num_distractors, _DISTRACTOR_PARAMS), np.float32)
    for row, index in enumerate(indices):
        # Distractors are drawn last, so their number leaves the object and background as
        # they are.
        rng = np.random.default_rng([seed, split_id, int(index)])
        obj[row] = rng.random(_OBJECT_PARAMS, dtype=np.float32)
        grids[row] = rng.random(grids.shape[1:], dtype=np.float32)
        noise[row] = rng.random(noise.shape[1:], dtype=np.float32)
        dist[row] = rng.random(dist.shape[1:], dtype=np.float32)
    labels = np.asarray(indices) % num_classes

    # The background: a muted grey, a smooth colour field and pixel noise.
    grey = 0.25 + 0.3 * obj[:, 7]
    interp = _interpolation_matrix(_BACKGROUND_GRID, size)
    field = np.matmul(interp, (grids - 0.5).reshape(n, _BACKGROUND_GRID, -1))  # [n, S, G·3]
    field = np.matmul(interp, field.reshape(n, size, _BACKGROUND_GRID, 3))  # [n, S, S, 3]
    images = 0.25 * field  # [n, S, S, 3], computed in place
    images += 0.08 * (noise - 0.5)
    images += grey[:, None, None, None]

    # The class object, kept out of the marker strip at the top.
    radius = size * (0.11 + 0.06 * obj[:, 2])
    margin = _EXTENT * radius + 1.0
    top = marker_strip_height(size)
    cy = top + margin + obj[:, 0] * (size - 1 - top - 2 * margin)
    cx = margin + obj[:, 1] * (size - 1 - 2 * margin)
    angle = 2 * np.pi * obj[:, 3]
    grid = np.arange(size, dtype=np.float32)
    dy = grid[None, :, None] - cy[:, None, None]
    dx = grid[None, None, :] - cx[:, None, None]
    cos, sin = np.cos(angle)[:, None, None], np.sin(angle)[:, None, None]
    u = (dx * cos + dy * sin) / radius[:, None, None]
    v = (-dx * sin + dy * cos) / radius[:, None, None]
    masks = np.zeros((n, size, size), bool)
    for label in range(num_classes):
        rows = labels == label
        if rows.any():
            masks[rows] = _kind_masks(KINDS[label], u[rows], v[rows])

    # Distractors, cut away from the object and a 2-pixel gap around it; a later slot is
    # painted over an earlier one. Each is drawn in a window around its centre, on a canvas
    # padded by the window's reach.
    least = num_distractors // 2
    count = least + np.floor(obj[:, 8] * (num_distractors - least + 1)).astype(int)
    example, slot = np.nonzero(np.arange(num_distractors)[None, :] < count[:, None])
    drawn = dist[example, slot]  # [m, _DISTRACTOR_PARAMS], the drawn distractors
    length = size * (0.06 + 0.09 * drawn[:, 3])
    reach = int(np.ceil(0.15 * size)) + 2
    window = np.arange(-reach, reach + 1, dtype=np.float32)
    centre_y = np.floor(drawn[:, 1] * (size - 1)).astype(int)
    centre_x = np.floor(drawn[:, 2] * (size - 1)).astype(int)
    shapes = _distractor_masks(
        kind=np.floor(drawn[:, 0] * len(DISTRACTOR_KINDS)).astype(int),
        dy=(window[None, :, None] - np.mod(drawn[:, 1] * (size - 1), 1)[:, None, None]),
        dx=(window[None, None, :] - np.mod(drawn[:, 2] * (size - 1), 1)[:, None, None]),
        length=length,
        aspect=0.25 + 0.2 * drawn[:, 4],
        angle=np.pi * drawn[:, 5],
    )
    hit, wy, wx = np.nonzero(shapes)
    canvas = size + 2 * reach
    flat = (example[hit] * canvas + centre_y[hit] + wy) * canvas + centre_x[hit] + wx
    slot_map = np.zeros(n * canvas * canvas, np.int16)  # 0: background, s + 1: slot s
    np.maximum.at(slot_map, flat, (slot[hit] + 1).astype(np.int16))
    slot_map = slot_map.reshape(n, canvas, canvas)[:, reach:-reach, reach:-reach]
    slot_map = np.where(_dilate(masks, 2), 0, slot_map)
    # The object is the last slot; paint every coloured pixel with its slot's colour.
    slot_map[masks] = num_distractors + 1
    palette = np.zeros((n, num_distractors + 2, 3), np.float32)
    palette[:, 1:-1] = _hsv_to_rgb(
        dist[..., 6], 0.3 + 0.7 * dist[..., 7], 0.35 + 0.65 * dist[..., 8]
    )
    palette[:, -1] = _hsv_to_rgb(obj[:, 4], 0.65 + 0.35 * obj[:, 5], 0.75 + 0.25 * obj[:, 6])
    painted = np.nonzero(slot_map)
    images[painted] = palette[painted[0], slot_map[painted]]
    np.clip(images, 0.0, 1.0, out=images)
    images *= 255.0
    images = np.round(images, out=images).astype(np.uint8)
    return images, masks, mask_boxes(masks)


def mask_boxes(masks: np.ndarray) -> np.ndarray:
    """Tight boxes `[n, 4] int32` (y0, x0, y1, x1; ends exclusive) of masks `[n, H, W]`."""
    rows, cols = masks.any(axis=2), masks.any(axis=1)
    height, width = masks.shape[1:]
    y0 = rows.argmax(axis=1)
    y1 = height - rows[:, ::-1].argmax(axis=1)
    x0 = cols.argmax(axis=1)
    x1 = width - cols[:, ::-1].argmax(axis=1)
    return np.stack([y0, x0, y1, x1], axis=1).astype(np.int32)


def marker_strip_height(size: int) -> int:
    """Rows at the top reserved for the markers: the marker side plus one row either side."""
    return marker_side(size) + 2


def marker_side(size: int) -> int:
    return max(2, round(size / 16))


def marker_masks(size: int, num_classes: int) -> np.ndarray:
    """The marker of each class, `[K, S, S] bool`: a square on the top strip, spread by class."""
    side = marker_side(size)
    masks = np.zeros((num_classes, size, size), bool)
    for label in range(num_classes):
        x0 = 1 + round(label * (size - 2 - side) / max(num_classes - 1, 1))
        masks[label, 1 : 1 + side, x0 : x0 + side] = True
    return masks


class ShapesRenderer:
    """Renders the examples of one split on first access and caches them as uint8.

    Args:
      seed: the dataset seed.
      split: `train`, `val` or `test`: which examples are drawn.
      length: number of examples.
      size: image side S.
      num_classes: number of class kinds K.
      num_distractors: most distractors per image (at least half as many are drawn).
    """

    def __init__(
        self,
        *,
        seed: int,
        split: str,
        length: int,
        size: int,
        num_classes: int,
        num_distractors: int,
    ):
        self.seed = seed
        self.split_id = _SPLIT_IDS[split]
        self.size = size
        self.num_classes = num_classes
        self.num_distractors = num_distractors
        self.labels = (np.arange(length) % num_classes).astype(np.int32)
        self.images = np.zeros((length, size, size, 3), np.uint8)
        self.masks = np.zeros((length, size, size), bool)
        self.boxes = np.zeros((length, 4), np.int32)
        self._rendered = np.zeros(-(-length // _BLOCK), bool)
        self._lock = threading.Lock()

    def ensure(self, indices: np.ndarray) -> None:
        """Renders the blocks holding `indices [n]` that are not cached yet."""
        blocks = np.unique(indices // _BLOCK)
        if self._rendered[blocks].all():
            return
        with self._lock:
            for block in blocks[~self._rendered[blocks]]:
                rows = np.arange(block * _BLOCK, min((block + 1) * _BLOCK, len(self.labels)))
                images, masks, boxes = render_examples(
                    self.seed,
                    self.split_id,
                    rows,
                    size=self.size,
                    num_classes=self.num_classes,
                    num_distractors=self.num_distractors,
                )
                self.images[rows], self.masks[rows], self.boxes[rows] = images, masks, boxes
                self._rendered[block] = True


class ShapesSplit(Split):
    """A split of the shapes dataset: the renderer's examples, stamped with markers if `marked`."""

    def __init__(self, renderer: ShapesRenderer, *, marked: bool):
        self.renderer = renderer
        self.marked = marked
        self._markers = marker_masks(renderer.size, renderer.num_classes)

    def __len__(self) -> int:
        return len(self.renderer.labels)

    @property
    def labels(self) -> np.ndarray:
        return self.renderer.labels

    def get_batch(self, indices: np.ndarray) -> dict[str, np.ndarray]:
        indices = np.asarray(indices, np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise DataError(f"Shapes indices must lie in [0, {len(self)}); got {indices}.")
        source = self.renderer
        source.ensure(indices)
        labels = source.labels[indices]
        images = source.images[indices].astype(np.float32) / 255.0
        if self.marked:
            marker = self._markers[labels]
            images[marker] = 1.0
        else:
            marker = np.zeros((len(indices), source.size, source.size), bool)
        return {
            "image": images,
            "label": labels,
            "index": indices.astype(np.int32),
            "mask": source.masks[indices],
            "box": source.boxes[indices],
            "marker_mask": marker,
        }


def load_shapes(config: ConfigDict) -> Dataset:
    """The shapes dataset with `train`, `val`, `test` (and `test_marked` with a shortcut).

    Args:
      config: the `data` section; reads `image_size` (0 means 64) and `shapes.{num_train,
        num_val, num_test, shortcut, seed, num_classes, num_distractors}`.

    Returns:
      A `Dataset` of `[S, S, 3]` images with the fields `mask`, `box` and `marker_mask`.
    """
    options = config.shapes
    size = config.image_size or DEFAULT_SIZE
    if size < 24:
        raise DataError(f"Shapes images need data.image_size >= 24 (or 0 for 64); got {size}.")
    if not 2 <= options.num_classes <= len(KINDS):
        raise DataError(
            f"data.shapes.num_classes must lie in [2, {len(KINDS)}]; got {options.num_classes}."
        )
    if options.num_distractors < 0:
        raise DataError(f"data.shapes.num_distractors must be >= 0; got {options.num_distractors}.")
    renderers = {
        split: ShapesRenderer(
            seed=options.seed,
            split=split,
            length=length,
            size=size,
            num_classes=options.num_classes,
            num_distractors=options.num_distractors,
        )
        for split, length in (
            ("train", options.num_train),
            ("val", options.num_val),
            ("test", options.num_test),
        )
    }
    splits = {
        "train": ShapesSplit(renderers["train"], marked=options.shortcut),
        "val": ShapesSplit(renderers["val"], marked=False),
        "test": ShapesSplit(renderers["test"], marked=False),
    }
    if options.shortcut:
        # The same test examples, rendered once, with the markers stamped.
        splits["test_marked"] = ShapesSplit(renderers["test"], marked=True)
    return Dataset(
        name="shapes",
        num_classes=options.num_classes,
        class_names=KINDS[: options.num_classes],
        image_shape=(size, size, 3),
        splits=splits,
    )
