"""RISE and RELAX mask generators: shape, range, keep probability and the upsampling rule."""

import jax
import numpy as np
import pytest
import scipy.ndimage

from protojax.explain import relax_masks, rise_masks
from protojax.explain.relax import relax_masks_from_grid as _relax_from_grid
from protojax.explain.rise import rise_masks_from_grid as _rise_from_grid

# The deterministic halves of the generators (grids and shifts in, masks out), compiled once.
rise_masks_from_grid = jax.jit(_rise_from_grid, static_argnums=3)
relax_masks_from_grid = jax.jit(_relax_from_grid, static_argnums=3)


@pytest.mark.parametrize(
    "generator,p_keep", [(rise_masks, 0.3), (relax_masks, 0.7)], ids=["rise", "relax"]
)
def test_masks_shape_range_and_keep_probability(generator, p_keep):
    masks = np.asarray(generator(jax.random.key(0), 2000, (12, 10), grid=4, p_keep=p_keep))
    assert masks.shape == (2000, 12, 10) and masks.dtype == np.float32
    assert masks.min() >= 0.0 and masks.max() <= 1.0
    # Interpolation weights sum to one, so E[M] = p_keep at every pixel.
    assert abs(masks.mean() - p_keep) < 0.01
    assert np.abs(masks.mean(axis=0) - p_keep).max() < 0.05
    again = np.asarray(generator(jax.random.key(0), 2000, (12, 10), grid=4, p_keep=p_keep))
    np.testing.assert_array_equal(masks, again)


def _random_grids(rng, n, grid, max_shift):
    cells = (rng.random((n, grid, grid)) < 0.5).astype(np.float32)
    return cells, rng.integers(0, max_shift[0], n), rng.integers(0, max_shift[1], n)


def test_rise_upsampling_rule_matches_scikit_image_resize():
    """RISE: ⌈s/g⌉-pixel cells, (g+1)-cell bilinear map with mirrored edges, shifted crop.

    scikit-image's resize(order=1, mode='reflect') is scipy's zoom(order=1, mode='mirror',
    grid_mode=True), used here as the reference.
    """
    grid, (h, w) = 4, (12, 10)
    cell = (3, 3)  # ⌈12/4⌉, ⌈10/4⌉
    cells, shift_y, shift_x = _random_grids(np.random.default_rng(0), 6, grid, cell)
    got = np.asarray(rise_masks_from_grid(cells, shift_y, shift_x, (h, w)))
    up = ((grid + 1) * cell[0], (grid + 1) * cell[1])
    for n in range(6):
        big = scipy.ndimage.zoom(
            cells[n].astype(np.float64),
            (up[0] / grid, up[1] / grid),
            order=1,
            mode="mirror",
            grid_mode=True,
        )
        assert big.shape == up
        expected = big[shift_y[n] : shift_y[n] + h, shift_x[n] : shift_x[n] + w]
        np.testing.assert_allclose(got[n], expected, atol=1e-6)


def _torch_bilinear_1d(n_in, n_out):
    """PyTorch's interpolate(mode='bilinear', align_corners=False) along one axis, as a matrix."""
    matrix = np.zeros((n_out, n_in))
    for i in range(n_out):
        src = max((i + 0.5) * n_in / n_out - 0.5, 0.0)
        low = int(np.floor(src))
        high = min(low + 1, n_in - 1)
        frac = src - low
        matrix[i, low] += 1.0 - frac
        matrix[i, high] += frac
    return matrix


def test_relax_upsampling_rule_matches_the_official_pipeline():
    """RELAX: bilinear to H×W (align_corners=False), reflect-pad by g//2, crop at 0…g−1."""
    grid, (h, w) = 5, (11, 9)
    pad = grid // 2
    cells, shift_y, shift_x = _random_grids(np.random.default_rng(1), 6, grid, (grid, grid))
    got = np.asarray(relax_masks_from_grid(cells, shift_y, shift_x, (h, w)))
    rows, cols = _torch_bilinear_1d(grid, h), _torch_bilinear_1d(grid, w)
    for n in range(6):
        upsampled = rows @ cells[n] @ cols.T
        padded = np.pad(upsampled, pad, mode="reflect")
        expected = padded[shift_y[n] : shift_y[n] + h, shift_x[n] : shift_x[n] + w]
        np.testing.assert_allclose(got[n], expected, atol=1e-6)


def test_relax_bilinear_hand_case():
    # A 2×2 grid with one kept cell, upsampled to 4×4 and padded by 1 then cropped at shift 1
    # (the unshifted image): rows and columns follow [1, ¾, ¼, 0].
    cells = np.array([[[1.0, 0.0], [0.0, 0.0]]], np.float32)
    got = np.asarray(relax_masks_from_grid(cells, np.array([1]), np.array([1]), (4, 4)))
    profile = np.array([1.0, 0.75, 0.25, 0.0])
    np.testing.assert_allclose(got[0], np.outer(profile, profile), atol=1e-7)
