"""3-D pooling over [N, T, H, W, C] grids with padding kernel // 2: the depthwise convolution
of MViT's pooling attention and the max pool of its residual skip.

The references are XLA's grouped convolution and ``reduce_window`` max. XLA's CPU backend
runs grouped convolutions (and their gradients) 10-50x slower than the same sum of 27
shifted, strided views, which fuses into a few loops; its reduce-window max and gradient
(which builds index arrays) ran ~3.5x slower than PyTorch's pooling. So the CPU computes
both as shifted views, with hand-written backward passes; accelerators run the references.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax.ops import dispatch
from maskfeat_jax.ops.fusion import materialize
from maskfeat_jax.ops.windows import spread, strided_windows

Triple = tuple[int, int, int]


def _pooled_size(thw: Sequence[int], stride: Sequence[int]) -> Triple:
    # A kernel-3 conv (or kernel s+1 max-pool) with padding k//2 gives ceil(n / s) outputs.
    return tuple(-(-n // s) for n, s in zip(thw, stride))


def _pad_same(x: jax.Array, kernel: Triple, fill: float) -> jax.Array:
    return jnp.pad(
        x, [(0, 0)] + [(k // 2, k // 2) for k in kernel] + [(0, 0)], constant_values=fill
    )


def _unpad_same(padded: jax.Array, kernel: Triple) -> jax.Array:
    lo = [k // 2 for k in kernel]
    hi = [n - a for n, a in zip(padded.shape[1:4], lo)]
    return padded[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def _correlate(padded: jax.Array, w: jax.Array, stride: Triple, out: Sequence[int]) -> jax.Array:
    """Depthwise cross-correlation as a sum of shifted, strided views times per-channel
    weights (w [kt, kh, kw, 1, C])."""
    views = strided_windows(padded, w.shape[:3], stride, out)
    return sum(view * w[(*offset, 0)] for offset, view in views)


# Most time slices the weight gradient sums term by term in one fused loop.
_TERMS_PER_SUM = 16
_MAX_TERMS = 64


def _weight_grad(padded: jax.Array, g: jax.Array, kernel: Triple, stride: Triple) -> jax.Array:
    """dw[offset, c] = sum over (n, t, h, w) of view_offset * g, as [prod(kernel), C].

    The sum over t is written out term by term on time slices, so each offset's products
    form one elementwise loop over [N, H, W, C] that reads the input in place; only those
    partial sums (1/T of a view) are materialized and reduced. (A plain ``jnp.sum`` per
    offset hands the reduction to a library kernel that cannot read strided slices, so XLA
    first copies all 27 shifted views out: most of the pooling's backward time.) The batch
    axis stays whole: it is the sharded one, and slicing it per example made the SPMD
    partitioner move data between devices for every term (a 17x slower step on an 8-device
    CPU mesh)."""
    n, t, c = g.shape[0], g.shape[1], g.shape[-1]
    out = g.shape[1:4]
    if t > _MAX_TERMS:  # long clips: fewer ops to compile beats the copies
        views = strided_windows(padded, kernel, stride, out)
        return jnp.stack([jnp.sum(v * g, axis=(0, 1, 2, 3)) for _, v in views])
    groups = [range(j, min(j + _TERMS_PER_SUM, t)) for j in range(0, t, _TERMS_PER_SUM)]
    hw_limit = [(m - 1) * s + 1 for m, s in zip(out[1:], stride[1:])]
    partial = []
    for ot, oh, ow in np.ndindex(*kernel):
        for group in groups:
            total = None
            for j in group:
                start = (0, ot + j * stride[0], oh, ow, 0)
                limit = (n, start[1] + 1, oh + hw_limit[0], ow + hw_limit[1], c)
                view = jax.lax.slice(padded, start, limit, (1, 1, *stride[1:], 1))
                term = view * jax.lax.slice(g, (0, j, 0, 0, 0), (n, j + 1, *out[1:], c))
                total = term if total is None else total + term
            partial.append(total)
    partial = jnp.stack(partial)
    return jnp.sum(partial.reshape(math.prod(kernel), -1, c), axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifts(x: jax.Array, w: jax.Array, stride: Triple) -> jax.Array:
    """The CPU form. Its hand-written backward keeps only x for the weight gradient;
    autodiff of the view sum would keep all 27 views (a 27x larger residual that dominated
    the step's memory traffic)."""
    padded = _pad_same(x, w.shape[:3], 0.0)
    return _correlate(padded, w, stride, _pooled_size(x.shape[1:4], stride))


def _depthwise_shifts_fwd(x, w, stride):
    return _depthwise_shifts(x, w, stride), (x, w)


def _depthwise_shifts_bwd(stride, residuals, g):
    x, w = residuals
    kernel = w.shape[:3]
    padded = _pad_same(x, kernel, 0.0)
    dw = _weight_grad(padded, g, kernel, stride)
    size = padded.shape[1:4]
    if any(s > 1 for s in stride):  # the transpose of a strided correlation
        dpadded = spread([(o, g * w[(*o, 0)]) for o in np.ndindex(*kernel)], size, stride)
    else:  # at stride 1, a correlation of the padded g with the flipped kernel
        padded_g = jnp.pad(g, [(0, 0)] + [(k - 1, k - 1) for k in kernel] + [(0, 0)])
        dpadded = _correlate(padded_g, w[::-1, ::-1, ::-1], (1, 1, 1), size)
    dx = _unpad_same(dpadded, kernel)
    return dx, dw.reshape(w.shape).astype(w.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


def depthwise_conv_reference(x: jax.Array, w: jax.Array, stride: Sequence[int]) -> jax.Array:
    return jax.lax.conv_general_dilated(
        x,
        w,
        tuple(stride),
        [(k // 2, k // 2) for k in w.shape[:3]],
        dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
        feature_group_count=x.shape[-1],
    )


def depthwise_conv(x: jax.Array, w: jax.Array, stride: Sequence[int]) -> jax.Array:
    """Depthwise Conv3d of x [N, T, H, W, C] with w [kt, kh, kw, 1, C], zero padding
    kernel // 2, no bias."""
    stride = tuple(stride)
    return dispatch.select(
        x,
        w,
        tuned=lambda x, w: _depthwise_shifts(x, w, stride),
        reference=lambda x, w: depthwise_conv_reference(x, w, stride),
    )


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_shifts(x: jax.Array, kernel: Triple, stride: Triple) -> jax.Array:
    """The CPU form: the maximum of shifted, strided views, one fused loop."""
    padded = _pad_same(x, kernel, -jnp.inf)
    views = strided_windows(padded, kernel, stride, _pooled_size(x.shape[1:4], stride))
    return functools.reduce(jnp.maximum, (view for _, view in views))


def _max_pool_shifts_fwd(x, kernel, stride):
    out = _max_pool_shifts(x, kernel, stride)
    return out, (x, out)


def _max_pool_shifts_bwd(kernel, stride, residuals, g):
    """Each window's gradient goes to its first maximum in scan order (as PyTorch's)."""
    x, out = residuals
    padded = _pad_same(x, kernel, -jnp.inf)
    offsets, views = zip(*strided_windows(padded, kernel, stride, out.shape[1:4]))
    first = jnp.zeros(out.shape, jnp.int8)
    for i in reversed(range(len(views))):
        first = jnp.where(views[i] == out, jnp.int8(i), first)
    # computed once, not re-derived by the spread below for every window element it reads
    first = materialize(first)
    zero = jnp.zeros((), g.dtype)
    contributions = [(o, jnp.where(first == i, g, zero)) for i, o in enumerate(offsets)]
    return (_unpad_same(spread(contributions, padded.shape[1:4], stride), kernel),)


_max_pool_shifts.defvjp(_max_pool_shifts_fwd, _max_pool_shifts_bwd)


def max_pool_reference(x: jax.Array, kernel: Sequence[int], stride: Sequence[int]) -> jax.Array:
    return jax.lax.reduce_window(
        x,
        -jnp.inf,  # a literal init value makes this the differentiable max-pool primitive
        jax.lax.max,
        (1, *kernel, 1),
        (1, *stride, 1),
        [(0, 0)] + [(k // 2, k // 2) for k in kernel] + [(0, 0)],
    )


def max_pool(x: jax.Array, kernel: Sequence[int], stride: Sequence[int]) -> jax.Array:
    """Max pool of x [N, T, H, W, C] over ``kernel`` windows, -inf padding kernel // 2."""
    kernel, stride = tuple(kernel), tuple(stride)
    return dispatch.select(
        x,
        tuned=lambda x: _max_pool_shifts(x, kernel, stride),
        reference=lambda x: max_pool_reference(x, kernel, stride),
    )
