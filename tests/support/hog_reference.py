"""An independent float64 HOG (per-pixel gradients, atan2 bins, bincount voting, L2 cells) and
the photos the HOG tests compare on."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import hog_gradients
from maskfeat_jax.hog import hog

MEAN = np.array([0.485, 0.456, 0.406]) * 255.0


STD = np.array([0.229, 0.224, 0.225]) * 255.0


KX = np.array([[1.0, 0.0, -1.0], [2.0, 0.0, -2.0], [1.0, 0.0, -1.0]])


KY = KX.T


def ref_gradients(x):
    """Reflect pad 1 + explicit 3x3 cross-correlation per channel."""
    x = np.asarray(x)
    dtype = np.int64 if np.issubdtype(x.dtype, np.integer) else np.float64
    x = x.astype(dtype)
    xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)), mode="reflect")
    h, w = x.shape[1:3]
    gx = np.zeros(x.shape, dtype)
    gy = np.zeros(x.shape, dtype)
    for a in range(3):
        for b in range(3):
            window = xp[:, a : a + h, b : b + w]
            gx += KX[a, b].astype(dtype) * window
            gy += KY[a, b].astype(dtype) * window
    return gx, gy


def ref_bins(gx, gy, nbins=9):
    phase = np.arctan2(np.asarray(gx, np.float64), np.asarray(gy, np.float64))
    return np.mod(np.floor(phase / np.pi * nbins), nbins).astype(np.int64)


def ref_votes(bins, mag, nbins=9, cell=8):
    """Magnitude-weighted hard votes summed over cells: [B, h, w, C, nbins]."""
    b, h, w, c = bins.shape
    ib, iy, ix, ic = np.meshgrid(
        np.arange(b), np.arange(h) // cell, np.arange(w) // cell, np.arange(c), indexing="ij"
    )
    hc, wc = h // cell, w // cell
    slot = (((ib * hc + iy) * wc + ix) * c + ic) * nbins + bins
    return np.bincount(
        slot.ravel(), weights=np.asarray(mag, np.float64).ravel(), minlength=b * hc * wc * c * nbins
    ).reshape(b, hc, wc, c, nbins)


def ref_cells(bins, mag, nbins=9, cell=8):
    """Cell votes, then per (cell, channel) L2 normalization with eps 1e-12."""
    hist = ref_votes(bins, mag, nbins, cell)
    norm = np.sqrt((hist**2).sum(-1, keepdims=True))
    return hist / np.maximum(norm, 1e-12)


def near_edge(gx, gy, nbins=9, margin=1e-5):
    """Directions within `margin` rad of a bin edge (the 0/pi edge included)."""
    psi = np.mod(np.arctan2(gx, gy), np.pi) / (np.pi / nbins)
    return np.abs(psi - np.round(psi)) * (np.pi / nbins) <= margin


def assert_equal_up_to_ties(ours, other, max_tie_fraction, nbins=9):
    """Compare per-pixel results of two float implementations of the formula.

    ours / other: dicts with gx, gy, bins (and for ours: mag, hist). A tie is
    a pixel whose direction, per either side, is within 1e-5 rad of a bin edge
    with a nonzero gx, or whose magnitude is < 1e-5 of the image's largest:
    there the bin is decided by rounding residue (the 0/180 degree edge: a
    residue gx of either sign sends the vote to bin 0 or bin nbins-1).
    Outside ties the bins must be identical; ties must be rare; and the
    histograms rebuilt from our magnitudes with the other side's bins, ours at
    ties, must equal ours to 1e-6.
    """

    def edge(g):
        return near_edge(g["gx"], g["gy"], nbins) & (g["gx"] != 0)

    other_mag = np.hypot(other["gx"], other["gy"])
    ties = edge(ours) | edge(other) | (other_mag <= 1e-5 * other_mag.max())
    differ = ours["bins"] != other["bins"]
    assert not (differ & ~ties).any(), f"{(differ & ~ties).sum()} bins differ away from ties"
    assert ties.mean() <= max_tie_fraction, ties.mean()
    mixed = np.where(ties, ours["bins"], other["bins"])
    np.testing.assert_allclose(ours["hist"], ref_cells(mixed, ours["mag"], nbins), atol=1e-6)
    return ties


def ours_per_pixel(x):
    gx, gy = (np.asarray(a) for a in jit_gradients(jnp.asarray(x)))
    bins, mag = (np.asarray(a) for a in jit_pixel_bins(jnp.asarray(x)))
    return {"gx": gx, "gy": gy, "bins": bins, "mag": mag, "hist": np.asarray(hog(jnp.asarray(x)))}


def crop(img, h, w):
    y, x = (img.shape[0] - h) // 2, (img.shape[1] - w) // 2
    return img[y : y + h, x : x + w]


jit_pixel_bins = jax.jit(hog_gradients.pixel_bins, static_argnames=("nbins", "method"))


jit_gradients = jax.jit(hog_gradients.gradients)


def integer_sobel_zero(x_u8):
    """Pixels whose exact integer Sobel gx and gy are both 0 (no real gradient)."""
    gx, gy = ref_gradients(x_u8)
    return (gx == 0) & (gy == 0)


def cells_all(mask, cell):
    b, h, w, c = mask.shape
    return mask.reshape(b, h // cell, cell, w // cell, cell, c).all((2, 4))


@pytest.fixture(scope="module")
def photos_u8():
    """Four real photos, centre-cropped to 256x256, uint8 [4, 256, 256, 3]."""
    import skimage.data
    from sklearn.datasets import load_sample_image

    imgs = [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        load_sample_image("china.jpg"),
    ]
    return np.stack([crop(im, 256, 256) for im in imgs])


@pytest.fixture(scope="module")
def photos_norm(photos_u8):
    """ImageNet mean/std normalized photos, float32 (what the model sees)."""
    return ((photos_u8 - MEAN) / STD).astype(np.float32)
