"""HOG's per-pixel stage: reflect padding, Sobel gradients, magnitudes and orientation bins.

Two Sobel forms, one per ``INPUT_KINDS`` entry (see ``maskfeat_jax.hog``):
``sobel_separable`` (exact zeros for equal neighbours, "pixels") and
``sobel_3x3`` (the reference's tap order, "normalized"), with
``residue_pixels`` marking gradients that are only rounding residue.

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

# What the HOG is computed on; see the docstring of maskfeat_jax.hog.
INPUT_KINDS = ("pixels", "normalized")

# "normalized" mode: a gradient component is rounding residue when it is at most
# _RESIDUE_RTOL times the sum of |tap * value| it was summed from. Any order of
# the 6 float32 additions errs by < 5 * 2**-24 = 3e-7 of that sum; the smallest
# real step of an 8-bit (16-bit) image after normalization is >= 8e-4 (3e-6)
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
# input (~0.05-0.2 % of segments flagged) and mean/std-normalized photos
# (~5 %); more takes several passes.
_SEGMENT = 16
_CAPACITY_FRACTIONS = (1 / 512, 1 / 16)


def check_input_kind(input_kind: str) -> None:
    if input_kind not in INPUT_KINDS:
        raise ValueError(
            f"input_kind {input_kind!r} is not one of {INPUT_KINDS}: 'pixels' for raw pixel "
            "values, 'normalized' for the mean/std-normalized tensor the encoder sees."
        )


# ----------------------------------------------------------------------------
# Layout: all work happens on [H, W, N] "plane stacks", N = B*C image planes
# minor. Every stencil shift and cell sum then moves whole contiguous N-vectors,
# which XLA's CPU loops vectorise: ~2x faster end to end than W-minor planes
# [B*C, H, W] (the cell sums alone ~4x).


def _reflect_indices(size: int) -> np.ndarray:
    """Source index of each reflect-padded position (-1 -> 1, size -> size-2)."""
    return np.concatenate([[1], np.arange(size), [size - 2]])


def padded_planes(images: jax.Array) -> jax.Array:
    """[B, H, W, C] any dtype -> reflect-padded float32 [H+2, W+2, B*C].

    One constant-index gather does the padding (it only copies values, so it
    is exact), then one transpose; cheaper on CPU than jnp.pad's concatenates.
    """
    x = lax.stop_gradient(jnp.asarray(images).astype(jnp.float32))
    b, h, w, c = x.shape
    src = _reflect_indices(h)[:, None] * w + _reflect_indices(w)[None, :]
    x = jnp.take(x.reshape(b, h * w, c), src.reshape(-1), axis=1)  # [B, P, C]
    return jnp.transpose(x, (1, 0, 2)).reshape(h + 2, w + 2, b * c)


def sobel_separable(padded: jax.Array) -> tuple[jax.Array, jax.Array]:
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


def sobel_3x3(padded: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Sobel gx, gy as the reference's 3x3 cross-correlation (see _correlate).

    Unlike sobel_separable, gradients that are 0 only after weighting (row differences
    +1, -1, +1) or whose partial sums round (even in a constant region, where
    x + 2x is rounded) leave a ~1e-7 residue of either sign, as the reference
    does on the same float32 input.
    """
    return _correlate(padded, _KX_TAPS), _correlate(padded, _KY_TAPS)


def residue_pixels(padded: jax.Array, gx: jax.Array, gy: jax.Array) -> jax.Array:
    """True where both gx and gy are within rounding error of 0 (see _RESIDUE_RTOL)."""
    bound_x = _RESIDUE_RTOL * _correlate(padded, _KX_TAPS, absolute=True)
    bound_y = _RESIDUE_RTOL * _correlate(padded, _KY_TAPS, absolute=True)
    return (jnp.abs(gx) <= bound_x) & (jnp.abs(gy) <= bound_y)


def magnitude(gx: jax.Array, gy: jax.Array) -> jax.Array:
    return jnp.sqrt(gx * gx + gy * gy)


def sobel_for(input_kind: str):
    """The Sobel form of each input kind: exact-zero separable, or the reference's 3x3."""
    check_input_kind(input_kind)
    return sobel_separable if input_kind == "pixels" else sobel_3x3


def gradients(images: jax.Array, input_kind: str = "pixels") -> tuple[jax.Array, jax.Array]:
    """Sobel gx, gy in float32, NHWC like the input (for tests and inspection)."""
    b, h, w, c = images.shape
    gx, gy = sobel_for(input_kind)(padded_planes(images))
    back = lambda g: jnp.transpose(g.reshape(h, w, b, c), (2, 0, 1, 3))
    return back(gx), back(gy)


# ----------------------------------------------------------------------------
# Orientation bins


def atan2_bins(gx: jax.Array, gy: jax.Array, nbins: int) -> jax.Array:
    """The defining formula: floor(atan2(gx, gy) / pi * nbins) mod nbins."""
    phase = jnp.arctan2(gx, gy) / math.pi * nbins
    return jnp.mod(jnp.floor(phase).astype(jnp.int32), nbins).astype(_bin_dtype(nbins))


def _bin_dtype(nbins: int):
    return jnp.int8 if nbins <= 127 else jnp.int32


def _edge_directions(nbins: int) -> tuple[np.ndarray, np.ndarray]:
    angles = np.arange(1, nbins) * np.pi / nbins
    return np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)


def sign_test_bins(gx: jax.Array, gy: jax.Array, mag: jax.Array, nbins: int) -> jax.Array:
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
    stays with atan2. On 8-bit photos after mean/std normalization ~1 % of
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


def _patch_with_atan2(
    codes: jax.Array, padded: jax.Array, nbins: int, sobel=sobel_separable
) -> jax.Array:
    """Replace every -1 code by its atan2 bin.

    codes: [H, W, N]; padded: [H+2, W+2, N]. Codes are handled in segments
    of L consecutive planes at one pixel. Segments holding a -1 are found with
    a fixed-size nonzero (capacity: the smallest of _CAPACITY_FRACTIONS of
    all segments that fits the count), their 3 x 3 x L padded neighbourhoods are
    gathered, re-differentiated with the same ``sobel`` (bit-identical gx, gy)
    and their bins set from atan2. The loop only repeats when more than the
    largest capacity is flagged; being a loop, it also makes XLA read the
    materialized codes rather than recompute them for the flag test.
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
        return codes.at[idx].set(atan2_bins(gx[:, 0, 0], gy[:, 0, 0], nbins))

    def step(state):
        codes, _ = state
        flags = jnp.any(codes < 0, axis=-1)
        count = jnp.sum(flags.astype(jnp.int32))
        branch = jnp.minimum(jnp.searchsorted(jnp.asarray(capacities), count), len(capacities) - 1)
        branches = [functools.partial(patch, capacity=c) for c in capacities]
        return lax.switch(branch, branches, codes, flags), count > capacities[-1]

    codes, _ = lax.while_loop(lambda s: s[1], step, (codes.reshape(n_seg, seg), jnp.bool_(True)))
    return codes.reshape(h, w, n)


def bins_and_magnitude(
    padded: jax.Array, nbins: int, method: str = "auto", sobel=sobel_separable
) -> tuple[jax.Array, jax.Array]:
    """Bins and float32 magnitude [H, W, N] of reflect-padded [H+2, W+2, N] planes.

    method: "atan2" (the formula), "sign" (sign tests, atan2 near edges: the
    same bins) or "auto" (sign on CPU, where atan2 is a slow scalar call;
    atan2 elsewhere). sobel: sobel_separable or sobel_3x3.
    """

    def via_atan2(padded):
        gx, gy = sobel(padded)
        return atan2_bins(gx, gy, nbins), magnitude(gx, gy)

    def via_sign_tests(padded):
        gx, gy = sobel(padded)
        mag = magnitude(gx, gy)
        codes = sign_test_bins(gx, gy, mag, nbins)
        return _patch_with_atan2(codes, padded, nbins, sobel), mag

    if method == "atan2":
        return via_atan2(padded)
    if method == "sign":
        return via_sign_tests(padded)
    if method == "auto":
        return lax.platform_dependent(padded, cpu=via_sign_tests, default=via_atan2)
    raise ValueError(f"unknown bin method {method!r}; use 'auto', 'sign' or 'atan2'.")


def pixel_bins(
    images: jax.Array, nbins: int = 9, method: str = "auto", input_kind: str = "pixels"
) -> tuple[jax.Array, jax.Array]:
    """Per-pixel bins (int) and magnitudes (float32), NHWC (for tests and inspection)."""
    b, h, w, c = images.shape
    sobel = sobel_for(input_kind)
    bins, mag = bins_and_magnitude(padded_planes(images), nbins, method, sobel)
    back = lambda a: jnp.transpose(a.reshape(h, w, b, c), (2, 0, 1, 3))
    return back(bins), back(mag)
