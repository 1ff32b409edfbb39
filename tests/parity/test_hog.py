"""HOG against the PyTorch re-creation of SlowFast's HOGLayerC (benchmarks/torch_reference.py):
raw and normalized photos, the normalized input's gradients, flat cells and residues."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import hog_gradients
from maskfeat_jax.hog import hog, hog_targets
from tests.support.hog_reference import (
    MEAN,
    STD,
    assert_equal_up_to_ties,
    cells_all,
    integer_sobel_zero,
    ours_per_pixel,
    ref_bins,
)

# ----------------------------------------------------------------------------
# Independent float64 reference (NHWC in, [B, h, w, C, nbins] out)


# ----------------------------------------------------------------------------
# Fixtures


# ----------------------------------------------------------------------------
# Published test vector


# ----------------------------------------------------------------------------
# Float64 reference on real photos


# ----------------------------------------------------------------------------
# Exact zeros and binning on 8-bit data


# ----------------------------------------------------------------------------
# Sign-test binning is identical to the atan2 formula


# ----------------------------------------------------------------------------
# PyTorch re-creation


def _torch_side(x_nhwc, **kw):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import TorchHOG

    module = TorchHOG(channels=x_nhwc.shape[-1], **kw)
    xt = torch.from_numpy(
        np.ascontiguousarray(np.asarray(x_nhwc, np.float32).transpose(0, 3, 1, 2))
    )
    out = module(xt).numpy().transpose(0, 3, 4, 1, 2)  # -> [B, h, w, C, nbins]
    gx, gy = (g.numpy().transpose(0, 2, 3, 1) for g in module.gradients(xt))
    return out, gx, gy


def test_matches_torch_on_raw_photos(photos_u8):
    torch = pytest.importorskip("torch")
    from benchmarks.torch_reference import torch_hog_targets

    x = photos_u8.astype(np.float32)
    for window in (0, 16):
        expected, _, _ = _torch_side(x, gaussian_window=window)
        np.testing.assert_allclose(
            hog(jnp.asarray(x), gaussian_window=window),
            expected,
            atol=1e-6,
            err_msg=f"window={window}",
        )
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    np.testing.assert_allclose(
        hog_targets(jnp.asarray(x)), torch_hog_targets(xt).numpy(), atol=1e-6
    )


def test_matches_torch_on_normalized_photos(photos_norm):
    """As against float64: only rounding-decided pixels may differ."""
    expected, tgx, tgy = _torch_side(photos_norm)
    ours = ours_per_pixel(photos_norm)
    other = {"gx": tgx, "gy": tgy, "bins": ref_bins(tgx, tgy)}
    ties = assert_equal_up_to_ties(ours, other, max_tie_fraction=0.04)
    # Direct comparison away from ties: both sides are float32 with different
    # summation orders, each within 1e-6 of float64 there.
    tie_cells = ties.reshape(4, 32, 8, 32, 8, 3).any((2, 4))
    assert np.abs(ours["hist"] - expected).max(-1)[~tie_cells].max() <= 2e-6


# ----------------------------------------------------------------------------
# Normalization invariance


# ----------------------------------------------------------------------------
# Orientation convention


# ----------------------------------------------------------------------------
# Token layout


# ----------------------------------------------------------------------------
# Errors


# ----------------------------------------------------------------------------
# Transformations


# ----------------------------------------------------------------------------
# input_kind="normalized": the reference's numbers on the normalized input


def _cancelling_pattern_u8(size=32):
    """Non-constant 8-bit image whose exact Sobel is 0 everywhere.

    x = 128 + (-1)**row * (col // 2): the differences across two columns are
    -1, +1, -1 down the rows (1 - 2 + 1 = 0) and the rows two apart are equal.
    After mean/std normalization the three differences no longer cancel
    exactly, so a 3x3 correlation leaves a rounding residue of either sign.
    """
    r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    x = 128 + np.where(r % 2, -1, 1) * (c // 2)
    return np.repeat(x[None, :, :, None], 3, axis=-1).astype(np.uint8)


def _normalize(x_u8):
    return ((x_u8 - MEAN) / STD).astype(np.float32)


def test_normalized_mode_gradients_are_the_reference_3x3_correlation(photos_norm):
    """Bit for bit equal to PyTorch's conv2d on the same float32 input (CPU)."""
    _, tgx, tgy = _torch_side(photos_norm[:2, :64, :64])
    x = jnp.asarray(photos_norm[:2, :64, :64])
    gradients = jax.jit(hog_gradients.gradients, static_argnums=1)
    gx, gy = (np.asarray(a) for a in gradients(x, "normalized"))
    np.testing.assert_array_equal(gx, tgx)
    np.testing.assert_array_equal(gy, tgy)


def test_normalized_mode_matches_torch_on_non_flat_cells(photos_u8, photos_norm):
    """Every non-flat cell equals the reference to 1e-6 (measured: 1.8e-7).

    Flat cells (here 48 of 98,304, 0.05 %) are exactly those where the 8-bit
    image has no gradient at any pixel; the reference gives them a unit
    vector of rounding noise, this module zeros.
    """
    expected, _, _ = _torch_side(photos_norm)
    ours = np.asarray(hog(jnp.asarray(photos_norm), input_kind="normalized"))
    flat = np.all(ours == 0, axis=-1)
    np.testing.assert_array_equal(flat, cells_all(integer_sobel_zero(photos_u8), 8))
    assert 0 < flat.mean() < 0.01
    assert np.abs(ours - expected).max(-1)[~flat].max() <= 1e-6
    np.testing.assert_allclose(np.linalg.norm(expected, axis=-1)[flat], 1.0, atol=1e-6)


def test_normalized_mode_zeros_cells_of_pure_rounding_residue():
    """Integer Sobel 0 everywhere: the reference returns noise, we return zeros."""
    x = _normalize(_cancelling_pattern_u8())
    gx, _ = (np.asarray(a) for a in hog_gradients.gradients(jnp.asarray(x), "normalized"))
    residue = np.abs(gx[:, 1:-1, 1:-1])
    assert residue.max() > 0 and residue.max() < 1e-5  # the test has teeth
    expected, _, _ = _torch_side(x)
    assert np.all(np.linalg.norm(expected, axis=-1) > 0.99)  # unit-norm noise
    assert np.all(np.asarray(hog(jnp.asarray(x), input_kind="normalized")) == 0.0)


def test_normalized_mode_keeps_the_smallest_real_gradient():
    """A one-level step of an 8-bit or a 16-bit image is real, not residue.

    Its cells are not flat and equal the reference; the residue pixels around
    the step still vote, as in the reference (~1e-6 of the cell's histogram
    for 8 bits, ~3e-3 for 16 bits), so the step's bin 4 holds >= 0.99.
    """
    for levels in (255.0, 65535.0):
        x = np.full((1, 16, 32, 3), 100.0)
        x[:, :, 12:] = 101.0  # the step is inside the cells of columns 8-15
        normalized = ((x / levels - MEAN / 255) / (STD / 255)).astype(np.float32)
        out = np.asarray(hog(jnp.asarray(normalized), input_kind="normalized"))
        expected, _, _ = _torch_side(normalized)
        np.testing.assert_allclose(out[:, :, 1], expected[:, :, 1], atol=1e-6)
        assert np.all(out[:, :, 1, :, 4] > 0.99)
        assert np.all(out[:, :, [0, 2, 3]] == 0.0)


def test_normalized_mode_flat_cells_on_digits():
    """Digits: large black backgrounds; flat cells are zeros, like the pixels mode."""
    from maskfeat_jax.data import digits

    u8 = np.stack([r["image"] for r in digits.load_split("train", image_size=24)[:64]])
    x = ((u8 / 255.0 - 0.31) / 0.35).astype(np.float32)
    ours = np.asarray(hog(jnp.asarray(x), cell_size=4, input_kind="normalized"))
    pixels = np.asarray(hog(jnp.asarray(u8), cell_size=4))
    flat = np.all(ours == 0, axis=-1)
    np.testing.assert_array_equal(flat, cells_all(integer_sobel_zero(u8), 4))
    np.testing.assert_array_equal(flat, np.all(pixels == 0, axis=-1))
    assert flat.mean() > 0.1
    expected, _, _ = _torch_side(x, pool=4)
    assert np.abs(ours - expected).max(-1)[~flat].max() <= 1e-6
