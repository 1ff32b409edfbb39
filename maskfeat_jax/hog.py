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

``"normalized"``: meant for the mean/std-normalised float tensor the encoder
sees, which is what SlowFast passes to HOGLayerC. The Sobel is then the
reference's 3x3 cross-correlation, accumulated tap by tap in row-major order;
on CPU this gives gradients bit-identical to PyTorch's conv2d, so rounding
residues have the reference's values and signs. Non-flat cells equal the
reference to ~2e-7 on CPU (other backends: as far as their float arithmetic
agrees). The one deliberate difference: a cell in which no pixel has a
gradient above rounding level (|g| <= 2**-20 * sum |tap * value| for both
components, see _RESIDUE_RTOL) is flat and gives zeros, as in "pixels" mode.
The reference L2-normalises the rounding residues of such a cell into a
unit-norm vector of noise, which depends on the backend's summation order and
is not a property of the image. On 8-bit input the flat cells are exactly the
cells whose integer Sobel is 0 at every pixel.

Why the two modes differ on normalised 8-bit data. HOG is invariant to a
per-channel affine map in exact arithmetic, but where the integer Sobel is 0
only by cancellation (row differences +1, -2, +1; or a constant region, whose
3x3 sum of ~2.0-sized values leaves -2.4e-7), the normalised float32 gradient
is a residue of either sign: a residue gx moves the vote between bins 0 and
8, and a pixel without real gradient votes its ~1e-7 magnitude. On 256x256
ImageNet-normalised photos ~5 % of pixels carry such a residue, ~70 % of cells
contain one, and 1.8 % of cells differ by more than 0.1 between the modes;
cells without residue pixels agree to ~1e-6. "pixels" is the ideal HOG of the
image; "normalized" reproduces the reference's numbers.

Binning without atan2 on CPU. XLA's CPU atan2 is a scalar library call, the
largest single cost (~0.2 s per 64x224x224x3 batch). On CPU the bin is instead
found by sign tests ``|gx| cos(k pi/n) - sign(gx) gy sin(k pi/n) >= 0``
against the bin edges. A pixel whose direction lies within ``_EDGE_MARGIN``
(2e-5 rad, ~16x the float32 atan2 + rounding error) of an edge, or whose
magnitude is tiny, huge or not finite, gets its bin from ``jnp.arctan2``
instead (small groups of such pixels are gathered, recomputed with the same
gradient code and scattered back). Outside that margin both give the same bin
whenever atan2 is accurate to a few ulp, so the result equals the plain atan2
formula bit for bit; the tests check this on photos, noise, adversarial
directions and every 8-bit Sobel value pair. Other backends use
``jnp.arctan2`` directly.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

__all__ = ["INPUT_KINDS", "hog", "hog_targets", "hog_targets_video"]

# What the HOG is computed on; see the module docstring.
INPUT_KINDS = ("pixels", "normalized")

_NORM_EPS = 1e-12
# "normalized" mode: a gradient component is rounding residue when it is at most
# _RESIDUE_RTOL times the sum of |tap * value| it was summed from. Any order of
# the 6 float32 additions errs by < 5 * 2**-24 = 3e-7 of that sum; the smallest
# real step of an 8-bit (16-bit) image after normalisation is >= 8e-4 (3e-6)
# of it, so 2**-20 = 9.5e-7 separates the two with margin on both sides.
_RESIDUE_RTOL = 2.0**-20
# Angular margin (rad) around each bin edge inside which the atan2 result is
# used. The float32 atan2 path is within ~1.2e-6 rad of exact (<= 2 ulp atan2,
# two roundings of phase / pi * nbins); the sign tests err by < 1e-6 relative.
_EDGE_MARGIN = 2e-5
# Outside [_MIN_MAG, _MAX_MAG] squares under/overflow and the margin test is
# meaningless (non-finite values fail it too); such pixels use atan2.
_MIN_MAG = 1e-18
_MAX_MAG = 1e18
# The 0/pi-edge shortcut needs |gx| >= _MIN_RATIO * mag (>= 1e-33, a normal
# float: XLA's CPU code treats denormals as zero).
_MIN_RATIO = 1e-15
# Planes per segment recomputed together with atan2, and the fixed capacities
# (fractions of all segments) one pass can recompute. Each capacity is a
# compiled branch (~0.3 s of compile time each); these two cover raw or noise
# input (~0.05-0.2 % of segments flagged) and mean/std-normalised photos
# (~5 %); more takes several passes.
_SEGMENT = 16
_CAPACITY_FRACTIONS = (1 / 512, 1 / 16)


# ----------------------------------------------------------------------------
# Argument checks


def _check_multiple(name: str, size: int, unit: int, unit_name: str) -> None:
    if size % unit:
        lo, hi = size - size % unit, size + unit - size % unit
        raise ValueError(
            f"image {name} {size} is not a multiple of {unit_name} {unit}; "
            f"crop or resize to {lo} or {hi} (or change {unit_name})."
        )


def _check_input_kind(input_kind: str) -> None:
    if input_kind not in INPUT_KINDS:
        raise ValueError(
            f"input_kind {input_kind!r} is not one of {INPUT_KINDS}: 'pixels' for raw pixel "
            "values, 'normalized' for the mean/std-normalised tensor the encoder sees."
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
# Layout: all work happens on [H, W, N] "plane stacks", N = B*C image planes
# minor. Every stencil shift and cell sum then moves whole contiguous N-vectors,
# which XLA's CPU loops vectorise: ~2x faster end to end than W-minor planes
# [B*C, H, W] (the cell sums alone ~4x).


def _reflect_indices(size: int) -> np.ndarray:
    """Source index of each reflect-padded position (-1 -> 1, size -> size-2)."""
    return np.concatenate([[1], np.arange(size), [size - 2]])


def _padded_planes(images: jax.Array) -> jax.Array:
    """[B, H, W, C] any dtype -> reflect-padded float32 [H+2, W+2, B*C].

    One constant-index gather does the padding (it only copies values, so it
    is exact), then one transpose; cheaper on CPU than jnp.pad's concatenates.
    """
    x = lax.stop_gradient(jnp.asarray(images).astype(jnp.float32))
    b, h, w, c = x.shape
    src = _reflect_indices(h)[:, None] * w + _reflect_indices(w)[None, :]
    x = jnp.take(x.reshape(b, h * w, c), src.reshape(-1), axis=1)  # [B, P, C]
    return jnp.transpose(x, (1, 0, 2)).reshape(h + 2, w + 2, b * c)


def _sobel(padded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sobel gx, gy of reflect-padded [..., H+2, W+2, N] -> [..., H, W, N].

    Separable, difference first: ``left - right`` (``top - bottom``) of two
    pixels, then the [1, 2, 1] smoothing across it, so equal neighbours give
    an exact 0.0 whatever the input scale. The same function recomputes the
    atan2 strips, so both give bit-identical gradients.
    """
    d = padded[..., :, :-2, :] - padded[..., :, 2:, :]  # [..., H+2, W, N]
    gx = (d[..., :-2, :, :] + 2.0 * d[..., 1:-1, :, :]) + d[..., 2:, :, :]
    e = padded[..., :-2, :, :] - padded[..., 2:, :, :]  # [..., H, W+2, N]
    gy = (e[..., :, :-2, :] + 2.0 * e[..., :, 1:-1, :]) + e[..., :, 2:, :]
    return gx, gy


# (row, column, weight) of the nonzero taps of Kx and Ky, in row-major order.
_KX_TAPS = ((0, 0, 1.0), (0, 2, -1.0), (1, 0, 2.0), (1, 2, -2.0), (2, 0, 1.0), (2, 2, -1.0))
_KY_TAPS = ((0, 0, 1.0), (0, 1, 2.0), (0, 2, 1.0), (2, 0, -1.0), (2, 1, -2.0), (2, 2, -1.0))


def _tap(padded: jax.Array, row: int, col: int) -> jax.Array:
    h, w = padded.shape[-3] - 2, padded.shape[-2] - 2
    return padded[..., row : row + h, col : col + w, :]


def _correlate(padded: jax.Array, taps, absolute: bool = False) -> jax.Array:
    """sum(weight * x[tap]) accumulated tap by tap in row-major order.

    This is the order of a direct 3x3 cross-correlation (PyTorch's CPU conv2d
    gives bit-identical results), so rounding residues come out as there.
    Products with +-1, +-2 are exact. ``absolute`` sums |weight * x| instead:
    the scale that bounds the rounding error of the sum.
    """
    acc = None
    for row, col, weight in taps:
        term = weight * _tap(padded, row, col)
        term = jnp.abs(term) if absolute else term
        acc = term if acc is None else acc + term
    return acc


def _sobel_3x3(padded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sobel gx, gy as the reference's 3x3 cross-correlation (see _correlate).

    Unlike _sobel, gradients that are 0 only after weighting (row differences
    +1, -1, +1) or whose partial sums round (even in a constant region, where
    x + 2x is rounded) leave a ~1e-7 residue of either sign, as the reference
    does on the same float32 input.
    """
    return _correlate(padded, _KX_TAPS), _correlate(padded, _KY_TAPS)


def _residue_pixels(padded: jax.Array, gx: jax.Array, gy: jax.Array) -> jax.Array:
    """True where both gx and gy are within rounding error of 0 (see _RESIDUE_RTOL)."""
    bound_x = _RESIDUE_RTOL * _correlate(padded, _KX_TAPS, absolute=True)
    bound_y = _RESIDUE_RTOL * _correlate(padded, _KY_TAPS, absolute=True)
    return (jnp.abs(gx) <= bound_x) & (jnp.abs(gy) <= bound_y)


def _magnitude(gx: jax.Array, gy: jax.Array) -> jax.Array:
    return jnp.sqrt(gx * gx + gy * gy)


def _sobel_for(input_kind: str):
    """The Sobel form of each input kind: exact-zero separable, or the reference's 3x3."""
    _check_input_kind(input_kind)
    return _sobel if input_kind == "pixels" else _sobel_3x3


def _gradients(images: jax.Array, input_kind: str = "pixels") -> tuple[jax.Array, jax.Array]:
    """Sobel gx, gy in float32, NHWC like the input (for tests and inspection)."""
    b, h, w, c = images.shape
    gx, gy = _sobel_for(input_kind)(_padded_planes(images))
    back = lambda g: jnp.transpose(g.reshape(h, w, b, c), (2, 0, 1, 3))
    return back(gx), back(gy)


# ----------------------------------------------------------------------------
# Orientation bins


def _atan2_bins(gx: jax.Array, gy: jax.Array, nbins: int) -> jax.Array:
    """The defining formula: floor(atan2(gx, gy) / pi * nbins) mod nbins."""
    phase = jnp.arctan2(gx, gy) / math.pi * nbins
    return jnp.mod(jnp.floor(phase).astype(jnp.int32), nbins).astype(_bin_dtype(nbins))


def _bin_dtype(nbins: int):
    return jnp.int8 if nbins <= 127 else jnp.int32


def _edge_directions(nbins: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(1, nbins) * np.pi / nbins
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def _sign_test_bins(gx: jax.Array, gy: jax.Array, mag: jax.Array, nbins: int) -> jax.Array:
    """Bins from sign tests against the bin edges; -1 marks "use atan2".

    Folding (gx, gy) -> (|gx|, sign(gx) * gy) maps the direction to psi in
    (0, pi) with the same bin (bins are unsigned). Then
    psi >= k pi/n  <=>  |gx| cos(k pi/n) - gy' sin(k pi/n) >= 0, and the bin is
    the number of edges passed. Pixels within _EDGE_MARGIN of an edge are
    left to atan2, except near the 0/pi edge where the formula's outcome is
    fixed by signs alone (|atan2| is tiny, or within a hair of -pi):
      gx == 0 -> 0 (phase +-0 or +-pi); gx > 0, gy > 0 -> 0 (phase > 0);
      gx < 0, gy > 0 -> n-1 (phase < 0); gx < 0, gy < 0 -> 0 (phase ~ -pi).
    gx > 0, gy < 0 (phase just below pi) depends on how atan2 rounds, so it
    stays with atan2. On 8-bit photos after mean/std normalisation ~1 % of
    pixels are near this edge: their raw integer gx is 0 and gx is rounding
    residue. One output (not bins + mask) saves a pass over the gradients.
    """
    dtype = _bin_dtype(nbins)
    cos_k, sin_k = _edge_directions(nbins)
    w = jnp.abs(gx)
    u = jnp.where(gx < 0, -gy, gy)
    margin = _EDGE_MARGIN * mag
    usable = (mag >= _MIN_MAG) & (mag <= _MAX_MAG)  # false for inf/NaN too
    clear = usable & (w >= margin)  # away from the 0/pi edge
    count = jnp.zeros(gx.shape, dtype)
    for c, s in zip(cos_k, sin_k):
        side = w * c - u * s
        count = count + (side >= 0).astype(dtype)
        clear = clear & (jnp.abs(side) >= margin)
    # Near the 0/pi edge, but |gx| / mag not so small that phase underflows.
    near_zero = usable & (w < margin) & (w >= _MIN_RATIO * mag)
    zero, last, ask = dtype(0), dtype(nbins - 1), dtype(-1)
    by_sign = jnp.where(gx > 0, jnp.where(gy > 0, zero, ask), jnp.where(gy > 0, last, zero))
    code = jnp.where(clear, count, jnp.where(near_zero, by_sign, ask))
    # XLA's CPU code treats denormals as zero, so gx here is never denormal
    # (the Sobel subtractions flush them) and gx == 0 is an exact-zero test.
    return jnp.where(gx == 0, zero, code)


def _patch_with_atan2(codes: jax.Array, padded: jax.Array, nbins: int, sobel=_sobel) -> jax.Array:
    """Replace every -1 code by its atan2 bin.

    codes: [H, W, N]; padded: [H+2, W+2, N]. Codes are handled in segments
    of L consecutive planes at one pixel. Segments holding a -1 are found with
    a fixed-size nonzero (capacity: the smallest of _CAPACITY_FRACTIONS of
    all segments that fits the count), their 3 x 3 x L padded neighbourhoods are
    gathered, re-differentiated with the same ``sobel`` (bit-identical gx, gy)
    and their bins set from atan2. The loop only repeats when more than the
    largest capacity is flagged; being a loop, it also makes XLA read the
    materialised codes rather than recompute them for the flag test.
    """
    h, w, n = codes.shape
    seg = math.gcd(n, _SEGMENT)
    per_pixel = n // seg
    n_seg = h * w * per_pixel
    # Rows of L contiguous planes: a gather of whole rows moves memory in runs.
    padded_rows = padded.reshape(-1, seg)
    capacities = sorted({max(1, min(n_seg, int(n_seg * f))) for f in _CAPACITY_FRACTIONS})
    di, dj = np.meshgrid(np.arange(3), np.arange(3), indexing="ij")
    offsets = (di * (w + 2) + dj) * per_pixel  # [3, 3] in rows

    def patch(codes, flags, capacity):
        # Unused slots repeat segment 0; rewriting a segment with its atan2
        # bins is always correct, those being the defining values.
        (idx,) = jnp.nonzero(flags, size=capacity, fill_value=0)
        pixel, group = idx // per_pixel, idx % per_pixel
        corner = ((pixel // w) * (w + 2) + pixel % w) * per_pixel + group
        strips = padded_rows[corner[:, None, None] + offsets]  # [K, 3, 3, L]
        gx, gy = sobel(strips)  # [K, 1, 1, L]
        return codes.at[idx].set(_atan2_bins(gx[:, 0, 0], gy[:, 0, 0], nbins))

    def step(state):
        codes, _ = state
        flags = jnp.any(codes < 0, axis=-1)
        count = jnp.sum(flags.astype(jnp.int32))
        branch = jnp.minimum(jnp.searchsorted(jnp.asarray(capacities), count), len(capacities) - 1)
        branches = [functools.partial(patch, capacity=c) for c in capacities]
        return lax.switch(branch, branches, codes, flags), count > capacities[-1]

    codes, _ = lax.while_loop(lambda s: s[1], step, (codes.reshape(n_seg, seg), jnp.bool_(True)))
    return codes.reshape(h, w, n)


def _bins_and_magnitude(
    padded: jax.Array, nbins: int, method: str = "auto", sobel=_sobel
) -> tuple[jax.Array, jax.Array]:
    """Bins and float32 magnitude [H, W, N] of reflect-padded [H+2, W+2, N] planes.

    method: "atan2" (the formula), "sign" (sign tests, atan2 near edges: the
    same bins) or "auto" (sign on CPU, where atan2 is a slow scalar call;
    atan2 elsewhere). sobel: _sobel or _sobel_3x3.
    """

    def via_atan2(padded):
        gx, gy = sobel(padded)
        return _atan2_bins(gx, gy, nbins), _magnitude(gx, gy)

    def via_sign_tests(padded):
        gx, gy = sobel(padded)
        mag = _magnitude(gx, gy)
        codes = _sign_test_bins(gx, gy, mag, nbins)
        return _patch_with_atan2(codes, padded, nbins, sobel), mag

    if method == "atan2":
        return via_atan2(padded)
    if method == "sign":
        return via_sign_tests(padded)
    if method == "auto":
        return lax.platform_dependent(padded, cpu=via_sign_tests, default=via_atan2)
    raise ValueError(f"unknown bin method {method!r}; use 'auto', 'sign' or 'atan2'.")


def _pixel_bins(
    images: jax.Array, nbins: int = 9, method: str = "auto", input_kind: str = "pixels"
) -> tuple[jax.Array, jax.Array]:
    """Per-pixel bins (int) and magnitudes (float32), NHWC (for tests and inspection)."""
    b, h, w, c = images.shape
    sobel = _sobel_for(input_kind)
    bins, mag = _bins_and_magnitude(_padded_planes(images), nbins, method, sobel)
    back = lambda a: jnp.transpose(a.reshape(h, w, b, c), (2, 0, 1, 3))
    return back(bins), back(mag)


# ----------------------------------------------------------------------------
# Voting, pooling, normalisation


def gaussian_window_weights(window: int) -> np.ndarray:
    """[window, window] Gaussian, sigma = window // 2, normalised to sum 1."""
    n = np.arange(window, dtype=np.float64) - (window - 1) / 2
    g = np.exp(-0.5 * (n / (window // 2)) ** 2)
    k = np.outer(g, g)
    return (k / k.sum()).astype(np.float32)


def _cell_histograms(mag: jax.Array, bins: jax.Array, nbins: int, cell: int) -> jax.Array:
    """Magnitude-weighted hard votes summed over cells: [H, W, N] -> [h, w, nbins, N].

    The sums are adds of strided slices (first over the cell's rows, then its
    columns), which XLA's CPU backend runs as fused elementwise loops, several
    times faster than reduce ops; the one-hot tensor is never materialised.
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
    """Normalised histograms in the internal layout [h, w, nbins, B, C]."""
    b, h, w, c = images.shape
    padded = _padded_planes(images)
    sobel = _sobel_for(input_kind)
    bins, mag = _bins_and_magnitude(padded, nbins, method, sobel)
    if gaussian_window:
        reps = (h // gaussian_window, w // gaussian_window)
        window = np.tile(gaussian_window_weights(gaussian_window), reps)
        mag = mag * jnp.asarray(window)[:, :, None]
    hist = _cell_histograms(mag, bins, nbins, cell_size)
    if input_kind == "normalized":
        # A cell with no gradient above rounding level is flat: zeros, as in
        # "pixels" mode, rather than a unit vector of rounding noise.
        residue = _residue_pixels(padded, *sobel(padded))
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
    result is per channel and per cell L2-normalised and carries no gradient.
    input_kind: "pixels" or "normalized" (module docstring).
    """
    _check_input_kind(input_kind)
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
    _check_input_kind(input_kind)
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
