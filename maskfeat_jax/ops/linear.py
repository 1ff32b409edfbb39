"""Projections: x @ W for every Linear layer, and the patch-embedding convolution.

``dot_general`` is ``lax.dot_general`` (the reference) except on the CPU, where the
backward pass of x @ W starts from x as the forward pass computed it. Left alone, XLA's CPU
compiler recomputes x's elementwise producers (LayerNorm, GELU, ...) inside the transposes
that feed the weight-gradient matmuls, and those fused transposes took 43% of a ViT-B/16
step.

``patch_embed`` is a convolution with explicit padding (the reference) except on the CPU:
XLA's CPU convolution runs these 3-channel, large-kernel shapes several times slower than
extracting the patches and doing one matmul, so the CPU does that.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax
import jax.numpy as jnp

from maskfeat_jax.ops import dispatch
from maskfeat_jax.ops.windows import strided_windows


@jax.custom_vjp
def _project_keeping_input(x: jax.Array, w: jax.Array) -> jax.Array:
    return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ())))


def _project_fwd(x, w):
    return _project_keeping_input(x, w), (x, w)


def _project_bwd(residuals, g):
    x, w = residuals
    dx = jax.lax.dot_general(g, w, (((g.ndim - 1,), (1,)), ((), ())))
    x2, g2 = x.reshape(-1, x.shape[-1]), g.reshape(-1, g.shape[-1])
    if x2.shape[1] > g2.shape[1]:
        # XLA's CPU GEMM runs this token-contracting product up to ~1.8x faster when the
        # result's rows are the narrower side (g^T x, [out, in]); the barrier stops XLA
        # from folding the small transpose back into the matmul.
        dw = jax.lax.optimization_barrier(g2.T @ x2).T
    else:
        dw = x2.T @ g2
    return dx, dw.astype(w.dtype)


_project_keeping_input.defvjp(_project_fwd, _project_bwd)


def dot_general_reference(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    return jax.lax.dot_general(lhs, rhs, dimension_numbers, precision=precision, **kwargs)


def dot_general(lhs, rhs, dimension_numbers, precision=None, **kwargs):
    """``lax.dot_general`` for ``nnx.Linear`` (its ``dot_general`` argument); x @ W with a
    2-D W and default precision gets the CPU backward above."""

    def reference(lhs, rhs):
        return dot_general_reference(lhs, rhs, dimension_numbers, precision, **kwargs)

    simple = dimension_numbers == (((lhs.ndim - 1,), (0,)), ((), ())) and rhs.ndim == 2
    if not simple or precision is not None or kwargs.get("preferred_element_type") is not None:
        return reference(lhs, rhs)
    return dispatch.select(lhs, rhs, tuned=_project_keeping_input, reference=reference)


def _patches(x: jax.Array, kernel, stride, padding) -> jax.Array:
    """[N, *spatial, C] -> [N, *out, prod(kernel) * C], features ordered (*kernel, C) like
    a [*kernel, C, out] convolution kernel flattened."""
    spatial = x.shape[1:-1]
    out = [(n + sum(p) - k) // s + 1 for n, p, k, s in zip(spatial, padding, kernel, stride)]
    if tuple(kernel) == tuple(stride) and not any(map(any, padding)):
        # non-overlapping: a reshape and one transpose
        n, c, d = x.shape[0], x.shape[-1], len(kernel)
        x = x[(slice(None), *(slice(0, m * k) for m, k in zip(out, kernel)))]
        x = x.reshape(n, *[a for m, k in zip(out, kernel) for a in (m, k)], c)
        order = [1 + 2 * i for i in range(d)] + [2 + 2 * i for i in range(d)]
        return x.transpose(0, *order, 2 * d + 1).reshape(n, *out, -1)
    padded = jnp.pad(x, [(0, 0), *padding, (0, 0)])
    return jnp.concatenate([v for _, v in strided_windows(padded, kernel, stride, out)], -1)


def patch_embed_reference(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> jax.Array:
    """Convolution of x [N, *spatial, C] with kernel [*k, C, out] (no dilation or groups),
    plus bias [out]: what ``nnx.Conv`` computes."""
    d = kernel.ndim - 2
    layout = "DHW"[3 - d :]
    y = jax.lax.conv_general_dilated(
        x,
        kernel,
        tuple(strides),
        tuple(tuple(p) for p in padding),
        lhs_dilation=(1,) * d,
        rhs_dilation=(1,) * d,
        dimension_numbers=(f"N{layout}C", f"{layout}IO", f"N{layout}C"),
        feature_group_count=1,
        precision=None,
    )
    return y if bias is None else y + bias.reshape((1,) * (y.ndim - 1) + bias.shape)


def patch_embed(
    x: jax.Array,
    kernel: jax.Array,
    bias: jax.Array | None,
    strides: Sequence[int],
    padding: Sequence[tuple[int, int]],
) -> jax.Array:
    """``patch_embed_reference``; on the CPU as patch extraction and one matmul. Inputs
    come in the compute dtype."""
    padding = [tuple(p) for p in padding]

    def as_matmul(x, kernel, bias):
        patches = _patches(x, kernel.shape[:-2], strides, padding)
        y = _project_keeping_input(patches, kernel.reshape(-1, kernel.shape[-1]))
        return y + bias if bias is not None else y

    def reference(x, kernel, bias):
        return patch_embed_reference(x, kernel, bias, strides, padding)

    return dispatch.select(x, kernel, bias, tuned=as_matmul, reference=reference)
