"""MaskFeat HOG targets (semantics of SlowFast's ``HOGLayerC``), in pure JAX.

Per image and colour channel (channels are never mixed):

1. reflect-pad by 1 pixel (mirror without repeating the edge pixel);
2. Sobel cross-correlation, ``Kx = [[1,0,-1],[2,0,-2],[1,0,-1]]`` (left minus
   right) and ``Ky = Kx.T`` (top minus bottom);
3. ``mag = sqrt(gx**2 + gy**2)``, ``bin = floor(atan2(gx, gy) / pi * nbins)``
   floored-mod ``nbins`` (note: gx is the FIRST atan2 argument), i.e. unsigned
   orientation with 9 hard bins of 20 degrees;
4. optional Gaussian window (mmpretrain variant): mag is multiplied by a
   ``window x window`` Gaussian (sigma = window // 2, sum 1) tiled every
   ``window`` pixels; 0 (the official MaskFeat setting) disables it;
5. magnitude-weighted vote into the pixel's bin, SUMMED over 8x8 cells;
6. each (channel, cell) histogram divided by ``max(||h||_2, 1e-12)``, so a flat
   cell gives exact zeros.

Everything runs in float32 (the input is cast first) under ``stop_gradient``.

What the HOG is computed on: ``input_kind`` (``config.hog.input`` in training).

``"pixels"`` (default): meant for the integer pixel values of the augmented
view. The Sobel filter is applied separably as a plain difference ``a - b`` of
two pixels followed by the ``[1, 2, 1]`` smoothing, so equal neighbours give
exactly 0.0 whatever the input scale (flat regions; the first/last row and
column, where reflect padding mirrors the neighbour). On integer-valued input
every gradient is exact, and the result equals the reference (HOGLayerC, or
its PyTorch re-creation in benchmarks/torch_reference.py) to ~2e-7, with the
same tokens and feature order.

``"normalized"``: meant for the mean/std-normalized float tensor the encoder
sees, which is what SlowFast passes to HOGLayerC. The Sobel is then the
reference's 3x3 cross-correlation, accumulated tap by tap in row-major order;
on CPU this gives gradients bit-identical to PyTorch's conv2d, so rounding
residues have the reference's values and signs. Non-flat cells equal the
reference to ~2e-7 on CPU (other backends: as far as their float arithmetic
agrees). The one deliberate difference: a cell in which no pixel has a
gradient above rounding level (|g| <= 2**-20 * sum |tap * value| for both
components, see _RESIDUE_RTOL in hog_gradients) is flat and gives zeros, as in
"pixels" mode.
The reference L2-normalizes the rounding residues of such a cell into a
unit-norm vector of noise, which depends on the backend's summation order and
is not a property of the image. On 8-bit input the flat cells are exactly the
cells whose integer Sobel is 0 at every pixel.

Why the two modes differ on normalized 8-bit data. HOG is invariant to a
per-channel affine map in exact arithmetic, but where the integer Sobel is 0
only by cancellation (row differences +1, -2, +1; or a constant region, whose
3x3 sum of ~2.0-sized values leaves -2.4e-7), the normalized float32 gradient
is a residue of either sign: a residue gx moves the vote between bins 0 and
8, and a pixel without real gradient votes its ~1e-7 magnitude. On 256x256
ImageNet-normalized photos ~5 % of pixels carry such a residue, ~70 % of cells
contain one, and 1.8 % of cells differ by more than 0.1 between the modes;
cells without residue pixels agree to ~1e-6. "pixels" is the ideal HOG of the
image; "normalized" reproduces the reference's numbers.

The gradients and their orientation bins (with how bins are found without atan2
on CPU) are in ``hog_gradients``; this module votes, pools, normalizes and
assembles per-token targets.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import hog_gradients
from maskfeat_jax.hog_gradients import INPUT_KINDS

__all__ = ["INPUT_KINDS", "hog", "hog_targets", "hog_targets_video"]

_NORM_EPS = 1e-12


# ----------------------------------------------------------------------------
# Argument checks


def _check_multiple(name: str, size: int, unit: int, unit_name: str) -> None:
    if size % unit:
        lo, hi = size - size % unit, size + unit - size % unit
        raise ValueError(
            f"image {name} {size} is not a multiple of {unit_name} {unit}; "
            f"crop or resize to {lo} or {hi} (or change {unit_name})."
        )


def _check_images(
    shape, *, nbins: int, cell_size: int, gaussian_window: int, patch_size: int | None = None
) -> None:
    if len(shape) != 4:
        raise ValueError(
            f"expected images of rank 4 [B, H, W, C] (NHWC), got shape {tuple(shape)}; "
            "add a batch axis with images[None] or use hog_targets_video for clips."
        )
    if nbins < 1:
        raise ValueError(f"nbins must be >= 1, got {nbins}.")
    if cell_size < 1:
        raise ValueError(f"cell_size must be >= 1, got {cell_size}.")
    _, h, w, _ = shape
    if h < 2 or w < 2:
        raise ValueError(f"reflect padding needs H, W >= 2, got {h}x{w}.")
    _check_multiple("height", h, cell_size, "cell_size")
    _check_multiple("width", w, cell_size, "cell_size")
    if patch_size is not None:
        if patch_size < cell_size or patch_size % cell_size:
            raise ValueError(
                f"patch_size {patch_size} must be a multiple of cell_size {cell_size}; "
                f"use e.g. patch_size={max(1, patch_size // cell_size) * cell_size}."
            )
        _check_multiple("height", h, patch_size, "patch_size")
        _check_multiple("width", w, patch_size, "patch_size")
    if gaussian_window < 0:
        raise ValueError(f"gaussian_window must be >= 0, got {gaussian_window}.")
    if gaussian_window:
        _check_multiple("height", h, gaussian_window, "gaussian_window")
        _check_multiple("width", w, gaussian_window, "gaussian_window")


# ----------------------------------------------------------------------------
# Voting, pooling, normalization


def gaussian_window_weights(window: int) -> np.ndarray:
    """[window, window] Gaussian, sigma = window // 2, normalized to sum 1."""
    n = np.arange(window, dtype=np.float64) - (window - 1) / 2
    g = np.exp(-0.5 * (n / (window // 2)) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def _cell_histograms(mag: jax.Array, bins: jax.Array, nbins: int, cell: int) -> jax.Array:
    """Magnitude-weighted hard votes summed over cells: [H, W, N] -> [h, w, nbins, N].

    The sums are adds of strided slices (first over the cell's rows, then its
    columns), which XLA's CPU backend runs as fused elementwise loops, several
    times faster than reduce ops; the one-hot tensor is never materialized.
    """
    k = jnp.arange(nbins, dtype=bins.dtype)[:, None]  # [nbins, 1] vs [1, N]
    rows = None
    for dy in range(cell):
        vote = jnp.where(
            bins[dy::cell, :, None, :] == k, mag[dy::cell, :, None, :], 0.0
        )  # [h, W, nbins, N]
        rows = vote if rows is None else rows + vote
    hist = rows[:, 0::cell]
    for dx in range(1, cell):
        hist = hist + rows[:, dx::cell]
    return hist


def _flat_cells(residue: jax.Array, cell: int) -> jax.Array:
    """[H, W, N] residue pixels -> [h, w, 1, N]: cells where every pixel is residue."""
    h, w, n = residue.shape
    flat = jnp.all(residue.reshape(h // cell, cell, w // cell, cell, n), axis=(1, 3))
    return flat[:, :, None, :]


def _l2_normalize(hist: jax.Array, axis: int) -> jax.Array:
    """v / max(||v||_2, 1e-12) along axis (a flat cell stays all-zero)."""
    norm = jnp.sqrt(jnp.sum(hist * hist, axis=axis, keepdims=True))
    return hist / jnp.maximum(norm, _NORM_EPS)


def _hog_cells(
    images: jax.Array,
    nbins: int,
    cell_size: int,
    gaussian_window: int,
    method: str = "auto",
    input_kind: str = "pixels",
) -> jax.Array:
    """Normalized histograms in the internal layout [h, w, nbins, B, C]."""
    b, h, w, c = images.shape
    padded = hog_gradients.padded_planes(images)
    sobel = hog_gradients.sobel_for(input_kind)
    bins, mag = hog_gradients.bins_and_magnitude(padded, nbins, method, sobel)
    if gaussian_window:
        reps = (h // gaussian_window, w // gaussian_window)
        window = np.tile(gaussian_window_weights(gaussian_window), reps)
        mag = mag * jnp.asarray(window)[:, :, None]
    hist = _cell_histograms(mag, bins, nbins, cell_size)
    if input_kind == "normalized":
        # A cell with no gradient above rounding level is flat: zeros, as in
        # "pixels" mode, rather than a unit vector of rounding noise.
        residue = hog_gradients.residue_pixels(padded, *sobel(padded))
        hist = jnp.where(_flat_cells(residue, cell_size), 0.0, hist)
    hist = _l2_normalize(hist, axis=2)
    return hist.reshape(h // cell_size, w // cell_size, nbins, b, c)


# ----------------------------------------------------------------------------
# Public API


@functools.partial(
    jax.jit, static_argnames=("nbins", "cell_size", "gaussian_window", "input_kind")
)
def hog(
    images: jax.Array,
    *,
    nbins: int = 9,
    cell_size: int = 8,
    gaussian_window: int = 0,
    input_kind: str = "pixels",
) -> jax.Array:
    """HOG of NHWC images [B, H, W, C] -> float32 [B, H/cell, W/cell, C, nbins].

    Any float or integer dtype is accepted; the computation is float32. The
    result is per channel and per cell L2-normalized and carries no gradient.
    input_kind: "pixels" or "normalized" (module docstring).
    """
    hog_gradients.check_input_kind(input_kind)
    _check_images(images.shape, nbins=nbins, cell_size=cell_size, gaussian_window=gaussian_window)
    hist = _hog_cells(images, nbins, cell_size, gaussian_window, input_kind=input_kind)
    return jnp.transpose(hist, (3, 0, 1, 4, 2))


def _tokens(hist: jax.Array, patch_size: int, cell_size: int) -> jax.Array:
    """[h, w, nbins, B, C] -> [B, (H/p)*(W/p), C*nbins*k*k], k = p / cell.

    Feature index c*nbins*k*k + bin*k*k + dy*k + dx; tokens in raster order.
    """
    h, w, nbins, b, c = hist.shape
    k = patch_size // cell_size
    t = hist.reshape(h // k, k, w // k, k, nbins, b, c)
    t = jnp.transpose(t, (5, 0, 2, 6, 4, 1, 3))  # [B, h', w', C, bin, dy, dx]
    return t.reshape(b, (h // k) * (w // k), c * nbins * k * k)


@functools.partial(
    jax.jit,
    static_argnames=("patch_size", "nbins", "cell_size", "gaussian_window", "input_kind"),
)
def hog_targets(
    images: jax.Array,
    *,
    patch_size: int = 16,
    nbins: int = 9,
    cell_size: int = 8,
    gaussian_window: int = 0,
    input_kind: str = "pixels",
) -> jax.Array:
    """Per-token MaskFeat targets [B, (H/p)*(W/p), C*nbins*(p/cell)**2] (108 for RGB).

    Feature order c*36 + bin*4 + dy*2 + dx (for p=16, cell=8); tokens in
    raster (h, w) order. input_kind: "pixels" or "normalized".
    """
    hog_gradients.check_input_kind(input_kind)
    _check_images(
        images.shape,
        nbins=nbins,
        cell_size=cell_size,
        gaussian_window=gaussian_window,
        patch_size=patch_size,
    )
    hist = _hog_cells(images, nbins, cell_size, gaussian_window, input_kind=input_kind)
    return _tokens(hist, patch_size, cell_size)


@functools.partial(
    jax.jit,
    static_argnames=(
        "temporal_stride",
        "patch_size",
        "nbins",
        "cell_size",
        "gaussian_window",
        "input_kind",
    ),
)
def hog_targets_video(
    clips: jax.Array,
    *,
    temporal_stride: int = 2,
    patch_size: int = 16,
    nbins: int = 9,
    cell_size: int = 8,
    gaussian_window: int = 0,
    input_kind: str = "pixels",
) -> jax.Array:
    """Targets for clips [B, T, H, W, C] from frames 0, s, 2s, ... (s = temporal_stride).

    -> [B, (T/s)*(H/p)*(W/p), C*nbins*(p/cell)**2], tokens in (t, h, w) order.
    Each selected frame gets the 2-D target; frames are sliced before the HOG.
    """
    if clips.ndim != 5:
        raise ValueError(
            f"expected clips of rank 5 [B, T, H, W, C], got shape {tuple(clips.shape)}; "
            "use hog_targets for images."
        )
    b, t = clips.shape[:2]
    if temporal_stride < 1 or t % temporal_stride:
        raise ValueError(
            f"clip length T={t} is not a multiple of temporal_stride={temporal_stride}; "
            f"use T={t - t % max(temporal_stride, 1)} frames or another stride."
        )
    frames = clips[:, ::temporal_stride]
    frames = frames.reshape((-1,) + clips.shape[2:])
    tokens = hog_targets(
        frames,
        patch_size=patch_size,
        nbins=nbins,
        cell_size=cell_size,
        gaussian_window=gaussian_window,
        input_kind=input_kind,
    )
    return tokens.reshape(b, -1, tokens.shape[-1])
