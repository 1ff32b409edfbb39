"""MViTv2 (multiscale vision transformer) as MaskFeat uses it, for video and images (T = 1).

Semantics are SlowFast's ``MViT`` / ``MaskMViT`` with the MaskFeat K400 configs, which the
generic ``torchvision.models.video.mvit.MViT`` class reproduces with ``proj_after_attn=False,
residual_pool=True, residual_with_cls_embed=False, rel_pos_embed=True``:

  Conv3d patch embedding k(3,7,7) s(2,4,4) p(1,3,3) -> replace masked embeddings by
  ``mask_token`` -> prepend ``cls_token`` (no absolute position embedding) -> blocks ->
  pretraining: ``pred_head`` (LN -> Linear(dim -> 108)) on the patch tokens;
  fine-tuning: mean over patch tokens -> ``norm`` -> ``head``.

Each block (``DIM_MUL_IN_ATT=False``)::

  xn = norm1(x); a = attn(xn)                   # pooling attention, below
  x = maxpool_skip(x) + a                       # -inf padded, cls not pooled
  xn2 = norm2(x)
  x = (proj(xn2) if dim != dim_out else x) + mlp(xn2)   # channels grow in the MLP

Pooling attention: fused qkv; q, k and v each go through a depthwise Conv3d (weights shared
by the heads, explicit zero padding kernel//2, no bias) on the patch tokens, then LayerNorm
over the head dim on all tokens including cls; logits (q * hd^-0.5) k^T plus decomposed
relative-position terms (t, h, w) from the *unscaled* pooled q, leaving cls rows/columns
alone; softmax; @ v; residual pooling ``x[:, :, 1:] += q[:, :, 1:]``; proj.

Parameter paths follow SlowFast's keys: ``patch_embed/proj``, ``cls_token``, ``mask_token``,
``blocks/<i>/{norm1, attn/{qkv, proj, pool_q, pool_k, pool_v, norm_q, norm_k, norm_v,
rel_pos_h, rel_pos_w, rel_pos_t}, norm2, mlp/{fc1, fc2}, proj}``, ``pred_head/{norm, proj}``,
``norm``, ``head``. The stage and block table is ``mvit_spec``.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskfeat_jax.models import layers, transfer
from maskfeat_jax.models.mvit_spec import (
    VARIANTS,
    BlockSpec,
    MViTSpec,
    Triple,
    make_spec,
    parse_variant,
)
from maskfeat_jax.ops import attention, fusion, pooling

# the spec names are re-exported: callers build specs as ``mvit.make_spec``
__all__ = [
    "VARIANTS",
    "BlockSpec",
    "DepthwisePool",
    "MViT",
    "MViTSpec",
    "MultiScaleAttention",
    "MultiScaleBlock",
    "PatchEmbed",
    "key_position_onehot",
    "make_spec",
    "parse_variant",
    "relative_index",
    "resize_rel_pos",
    "transfer_params",
]


class DepthwisePool(nnx.Module):
    """Depthwise Conv3d, no bias, explicit zero padding k//2, one [kernel, hd] filter
    shared by the heads (PyTorch ``attn.pool_{q,k,v}``), applied to [B, T, H, W, heads*hd]
    with head-major channels: the filter is tiled over the heads, so the tokens keep the
    layout the qkv projection wrote them in (no transpose to [B*heads, ...] and back)."""

    def __init__(
        self, dim: int, kernel: Triple, stride: Triple, *, heads: int, dtype, rngs: nnx.Rngs
    ):
        init = layers.with_axes(layers.weight_init(), (None, None, None, None, None))
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, 1, dim)))
        self.stride, self.dtype = tuple(stride), dtype
        self.heads = heads

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        w = jnp.tile(self.kernel[...].astype(self.dtype), (1, 1, 1, 1, self.heads))
        return pooling.depthwise_conv(x, w, self.stride)


def relative_index(q_size: int, k_size: int) -> np.ndarray:
    """Table row for each (query, key) offset along one axis, as the reference computes it
    (float32 arithmetic, truncated): q_i * max(k/q, 1) - (k_j + 1 - K) * max(q/k, 1)."""
    q_ratio = np.float32(max(k_size / q_size, 1.0))
    k_ratio = np.float32(max(q_size / k_size, 1.0))
    q_idx = np.arange(q_size, dtype=np.float32)[:, None] * q_ratio
    k_idx = (np.arange(k_size, dtype=np.float32)[None, :] + np.float32(1.0 - k_size)) * k_ratio
    return (q_idx - k_idx).astype(np.int64)


def resize_rel_pos(table: jax.Array | np.ndarray, length: int):
    """Linear interpolation of a relative-position table to ``length`` rows, as PyTorch's
    ``F.interpolate(mode='linear', align_corners=False)`` (no antialiasing): what the
    reference loaders do when a table's size changes between pretraining and fine-tuning."""
    n = table.shape[0]
    if n == length:
        return table
    scale = n / length
    src = np.maximum((np.arange(length) + 0.5) * scale - 0.5, 0.0)
    lo = np.minimum(np.floor(src).astype(np.int64), n - 1)
    hi = np.minimum(lo + 1, n - 1)
    frac = (src - lo)[:, None].astype(table.dtype)
    return table[lo] * (1 - frac) + table[hi] * frac


def transfer_params(
    flat: Mapping[str, Any], template: Mapping[str, Any]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Flat params of one MViT form for another, e.g. pretraining -> fine-tuning.

    ``rel_pos_*`` tables whose length differs (block 15 of MViTv2-S: 27 -> 13 rows when the
    block-14 q stride comes back) are linearly resized, as the reference loaders do; every
    other shared entry must have the template's shape. Returns (params shaped like
    ``template``, source entries the template has no place for (``mask_token``,
    ``pred_head``), template entries kept at their own values (the new ``norm`` and
    ``head``)). Shape mismatches raise one error that lists them all."""

    def adapt(key, value, want):
        if key.rsplit("/", 1)[-1].startswith("rel_pos_") and value.shape[1:] == want[1:]:
            return resize_rel_pos(value, want[0])
        return value

    return transfer.transfer_params(flat, template, adapt, what="MViT")


class MultiScaleAttention(nnx.Module):
    def __init__(self, block: BlockSpec, *, dtype, rngs: nnx.Rngs):
        dim, hd = block.dim, block.head_dim
        self.block = block
        self.scale = hd**-0.5
        rel_init = layers.with_axes(layers.weight_init(), (None, None))
        self.rel_pos_h = nnx.Param(rel_init(rngs.params(), (block.rel_pos_spatial, hd)))
        self.rel_pos_w = nnx.Param(rel_init(rngs.params(), (block.rel_pos_spatial, hd)))
        self.rel_pos_t = nnx.Param(rel_init(rngs.params(), (block.rel_pos_temporal, hd)))
        self.qkv = layers.dense(dim, 3 * dim, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.proj = layers.dense(dim, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)
        kernel = block.kernel
        heads = block.num_heads
        self.pool_q = DepthwisePool(hd, kernel, block.q_stride, heads=heads, dtype=dtype, rngs=rngs)
        self.pool_k = DepthwisePool(
            hd, kernel, block.kv_stride, heads=heads, dtype=dtype, rngs=rngs
        )
        self.pool_v = DepthwisePool(
            hd, kernel, block.kv_stride, heads=heads, dtype=dtype, rngs=rngs
        )
        self.norm_q = layers.layer_norm(hd, dtype=dtype, rngs=rngs)
        self.norm_k = layers.layer_norm(hd, dtype=dtype, rngs=rngs)
        self.norm_v = layers.layer_norm(hd, dtype=dtype, rngs=rngs)

    @staticmethod
    def _pool(x: jax.Array, thw: Triple, conv: DepthwisePool, norm: nnx.LayerNorm, heads: int):
        """[B, 1+N, heads*hd] -> [B, 1+N', heads, hd]: patch tokens pooled, cls kept,
        LayerNorm over each head's channels on all tokens."""
        b, _, d = x.shape
        cls, tokens = jnp.split(x, [1], axis=1)  # split: its gradient is one concatenate
        pooled = conv(tokens.reshape(b, *thw, d))
        new_thw = tuple(pooled.shape[1:4])
        pooled = jnp.concatenate([cls, pooled.reshape(b, -1, d)], axis=1)
        return norm(pooled.reshape(b, pooled.shape[1], heads, d // heads)), new_thw

    def _rel_pos_terms(self, q: jax.Array, q_thw: Triple, k_thw: Triple) -> jax.Array:
        """Decomposed relative-position terms [B, 1+Nq, heads, Kt+Kh+Kw] (zero for cls) from
        the unscaled pooled q [B, 1+Nq, heads, hd]: the logit bias of query (t, y, x) for key
        (kt, ky, kx) is the sum of the entries at kt, Kt+ky and Kt+Kh+kx."""
        b, _, h, d = q.shape
        tables = (self.rel_pos_t[...], self.rel_pos_h[...], self.rel_pos_w[...])
        r = [t[relative_index(qs, ks)].astype(q.dtype) for t, qs, ks in zip(tables, q_thw, k_thw)]
        rq = jnp.split(q, [1], axis=1)[1].reshape(b, *q_thw, h, d)
        terms = [
            jnp.einsum("btyxnc,tkc->btyxnk", rq, r[0]),
            jnp.einsum("btyxnc,ykc->btyxnk", rq, r[1]),
            jnp.einsum("btyxnc,xkc->btyxnk", rq, r[2]),
        ]
        terms = jnp.concatenate(terms, axis=-1).reshape(b, -1, h, sum(k_thw))
        return jnp.pad(terms, ((0, 0), (1, 0), (0, 0), (0, 0)))

    def __call__(self, x: jax.Array) -> jax.Array:
        thw, heads = self.block.input_thw, self.block.num_heads
        qkv = self.qkv(x)
        d = qkv.shape[-1] // 3
        # channel s*D + h*hd + c; split's gradient is one concatenate (slices' would be pads+adds)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        k, k_thw = self._pool(k, thw, self.pool_k, self.norm_k, heads)
        v, _ = self._pool(v, thw, self.pool_v, self.norm_v, heads)
        q, q_thw = self._pool(q, thw, self.pool_q, self.norm_q, heads)
        # The relative-position bias rides in the logits matmul: q gains the per-axis terms,
        # k the one-hot of its (t, y, x), so q'.k' = scale q.k + bias and the [Nq, Nk] bias
        # (and its gradient, three reductions over the attention matrix) never exists.
        positions = jnp.asarray(key_position_onehot(k_thw), k.dtype)[None, :, None, :]
        q_ext = jnp.concatenate(
            [q * jnp.asarray(self.scale, q.dtype), self._rel_pos_terms(q, q_thw, k_thw)], -1
        )
        k_ext = jnp.concatenate(
            [k, jnp.broadcast_to(positions, (*k.shape[:3], positions.shape[-1]))], -1
        )
        heads_first = functools.partial(jnp.swapaxes, axis1=1, axis2=2)  # [B, heads, N, hd]
        out = attention.attend(heads_first(q_ext), heads_first(k_ext), heads_first(v))
        out = heads_first(out)
        # Residual pooling: the pooled q is added back to the patch tokens (not cls).
        patches_only = jnp.asarray(np.arange(q.shape[1]) > 0, q.dtype)[None, :, None, None]
        out = out + q * patches_only
        return self.proj(out.reshape(*out.shape[:2], d))


def key_position_onehot(thw: Triple) -> np.ndarray:
    """[1+N, T+H+W]: row 1+i holds ones at t, T+y and T+H+x of token i's (t, y, x);
    the cls row is zero (cls gets no relative-position bias)."""
    t, y, x = np.unravel_index(np.arange(math.prod(thw)), thw)
    onehot = np.zeros((1 + len(t), sum(thw)), np.float32)
    rows = np.arange(1, 1 + len(t))
    for column in (t, thw[0] + y, thw[0] + thw[1] + x):
        onehot[rows, column] = 1.0
    return onehot


def _max_pool_skip(x: jax.Array, block: BlockSpec) -> jax.Array:
    """Max-pools the patch tokens of the residual stream ([B, 1+N, C]); -inf padding."""
    b, _, c = x.shape
    cls, tokens = jnp.split(x, [1], axis=1)
    tokens = tokens.reshape(b, *block.input_thw, c)
    pooled = pooling.max_pool(tokens, block.skip_kernel, block.q_stride)
    return jnp.concatenate([cls, pooled.reshape(b, -1, c)], axis=1)


class MultiScaleBlock(nnx.Module):
    def __init__(self, block: BlockSpec, mlp_ratio: float, *, dtype, rngs: nnx.Rngs):
        self.block = block
        self.norm1 = layers.layer_norm(block.dim, dtype=dtype, rngs=rngs)
        self.attn = MultiScaleAttention(block, dtype=dtype, rngs=rngs)
        self.norm2 = layers.layer_norm(block.dim, dtype=dtype, rngs=rngs)
        self.mlp = layers.Mlp(
            block.dim, int(block.dim * mlp_ratio), block.dim_out, dtype=dtype, rngs=rngs
        )
        if block.dim != block.dim_out:
            self.proj = layers.dense(
                block.dim, block.dim_out, ("embed", "embed"), dtype=dtype, rngs=rngs
            )

    def __call__(self, x: jax.Array, drop_rate=0.0, key: jax.Array | None = None) -> jax.Array:
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        attended = self.attn(self.norm1(x))
        skip = _max_pool_skip(x, self.block) if self.block.pools_q else x
        x = skip + layers.drop_path(attended, drop_rate, k1)
        xn = self.norm2(x)
        shortcut = self.proj(xn) if self.block.dim != self.block.dim_out else x
        return shortcut + layers.drop_path(self.mlp(xn), drop_rate, k2)


class PatchEmbed(nnx.Module):
    """Overlapping Conv3d k(3,7,7) s(2,4,4) p(1,3,3) (PyTorch ``patch_embed.proj``)."""

    def __init__(self, spec: MViTSpec, *, dtype, rngs: nnx.Rngs):
        kernel = spec.patch_kernel
        self.proj = nnx.Conv(
            spec.in_channels,
            spec.embed_dim,
            kernel_size=kernel,
            strides=spec.patch_stride,
            padding=[(p, p) for p in spec.patch_padding],
            kernel_init=layers.with_axes(layers.weight_init(), (None, None, None, None, "embed")),
            bias_init=layers.conv_bias_init(spec.in_channels * math.prod(kernel), "embed"),
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.patch_conv(self.proj, x)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class MViT(layers.MaskFeatModel):
    """MViTv2 encoder with the MaskFeat pretraining head or a mean-pooling classifier.

    Input: clips [B, T, H, W, C] (video) or images [B, H, W, C] (``num_frames=1``).

    Args:
      spec: architecture.
      dtype: compute dtype (e.g. bfloat16 on TPU); parameters stay float32.
      remat: rematerialize each block in the backward pass (saves activation memory).
      drop_path_rate: stochastic depth of the last block (rising linearly from 0 at the
        first); active only when the call passes a ``key``.
      kernels: the form of each op (``maskfeat_jax.ops``): 'auto' (per backend),
        'reference' or 'tuned'; config.model.kernels.
    """

    name = "MViT"

    def __init__(
        self,
        spec: MViTSpec,
        *,
        dtype=jnp.float32,
        remat: bool = False,
        drop_path_rate: float = 0.0,
        kernels: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.spec = spec
        self.dtype = dtype
        self.kernels = kernels
        self.remat = remat
        self.drop_rates = tuple(layers.drop_path_rates(drop_path_rate, spec.depth))
        d = spec.embed_dim
        token_init = layers.with_axes(layers.weight_init(), (None, None, "embed"))
        self.patch_embed = PatchEmbed(spec, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(token_init(rngs.params(), (1, 1, d)))
        self.blocks = nnx.List(
            layers.build_blocks(
                lambda b, r: MultiScaleBlock(b, spec.mlp_ratio, dtype=dtype, rngs=r),
                spec.blocks(),
                rngs,
            )
        )
        self._init_heads(d, spec.out_dim, dtype=dtype, rngs=rngs)

    @layers.with_kernels
    def embed(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Patch embedding, mask-token replacement and cls: [B, 1+N, D]."""
        if not self.spec.is_video:
            x = x[:, None]
        return self._mask_and_cls(self.patch_embed(x.astype(self.dtype)), mask)

    @layers.with_kernels
    def encode(
        self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None
    ) -> jax.Array:
        """All output tokens of the last block, cls first: [B, 1 + prod(output grid), D_out].
        ``key`` turns drop path on."""
        self._check_input(x)
        h = self.embed(x, mask)

        def apply_block(block: MultiScaleBlock, y: jax.Array, rate, k) -> jax.Array:
            # the residual stream's gradient is computed once per block, not re-derived by
            # each of its consumers in every block below
            return layers.shard_batch(block(fusion.materialize_gradient(y), rate, k))

        if self.remat:
            apply_block = nnx.remat(apply_block, static_argnums=(2,))
        keys = layers.block_keys(key, len(self.blocks))
        for block, rate, k in zip(self.blocks, self.drop_rates, keys):
            h = apply_block(block, h, rate, k)
        return h
