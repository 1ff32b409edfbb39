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

Stages: heads double at each stage's first block, channels double in the block before it
(its MLP and shortcut projection), q is pooled with stride (1,2,2) at stage starts and kv
with an adaptive stride that starts at (1,8,8) and is divided by every q stride. The
pretraining form drops the q stride of the last stage so the output stays at 1/16 of the
input (14 x 14 for 224 px): one 108-d HOG target per output token.

Parameter paths follow SlowFast's keys: ``patch_embed/proj``, ``cls_token``, ``mask_token``,
``blocks/<i>/{norm1, attn/{qkv, proj, pool_q, pool_k, pool_v, norm_q, norm_k, norm_v,
rel_pos_h, rel_pos_w, rel_pos_t}, norm2, mlp/{fc1, fc2}, proj}``, ``pred_head/{norm, proj}``,
``norm``, ``head``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskfeat_jax import errors
from maskfeat_jax.models import layers, transfer

Triple = tuple[int, int, int]

# name -> (embed_dim, num_heads, depth, stage starts); MaskFeat's MViTv2 16x4 settings
# (SlowFast configs/masked_ssl/k400_MVITv2_{S,L}_16x4_MaskFeat_PT.yaml; B from MVITv2_B).
VARIANTS: dict[str, tuple[int, int, int, tuple[int, ...]]] = {
    "S": (96, 1, 16, (1, 3, 14)),
    "B": (96, 1, 24, (2, 5, 21)),
    "L": (144, 2, 48, (2, 8, 44)),
}


@dataclasses.dataclass(frozen=True)
class BlockSpec:
    """One block's shapes, as the reference derives them from the stage settings."""

    dim: int
    dim_out: int
    num_heads: int
    q_stride: Triple
    kv_stride: Triple
    kernel: Triple  # depthwise pooling kernel for q, k and v
    input_thw: Triple
    output_thw: Triple

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    @property
    def kv_thw(self) -> Triple:
        return _pooled_size(self.input_thw, self.kv_stride)

    @property
    def rel_pos_spatial(self) -> int:
        """Rows of rel_pos_h / rel_pos_w: 2 * max(q size, kv size) - 1 (reference formula)."""
        size = max(self.input_thw[1:])
        q_size = size // self.q_stride[1]
        kv_size = size // self.kv_stride[1]
        return 2 * max(q_size, kv_size) - 1

    @property
    def rel_pos_temporal(self) -> int:
        return 2 * self.input_thw[0] - 1

    @property
    def skip_kernel(self) -> Triple:
        """Max-pool skip kernel: s + 1 where the q stride s > 1, else s."""
        return tuple(s + 1 if s > 1 else s for s in self.q_stride)

    @property
    def pools_q(self) -> bool:
        return math.prod(self.q_stride) > 1


def _pooled_size(thw: Sequence[int], stride: Sequence[int]) -> Triple:
    # A kernel-3 conv (or kernel s+1 max-pool) with padding k//2 gives ceil(n / s) outputs.
    return tuple(-(-n // s) for n, s in zip(thw, stride))


@dataclasses.dataclass(frozen=True)
class MViTSpec:
    """Everything that fixes the architecture (and so the parameter shapes)."""

    embed_dim: int
    num_heads: int
    depth: int
    stage_starts: tuple[int, ...]
    image_size: int = 224
    num_frames: int = 16  # 1 = images (a T = 1 clip, as torchvision's MViT treats 4-D input)
    in_channels: int = 3
    patch_kernel: Triple = (3, 7, 7)
    patch_stride: Triple = (2, 4, 4)
    patch_padding: Triple = (1, 3, 3)
    pool_kernel: Triple = (3, 3, 3)
    q_stride: Triple = (1, 2, 2)
    kv_stride: Triple = (1, 8, 8)  # adaptive: divided by each q stride on the way
    mlp_ratio: float = 4.0
    pool_last_stage: bool = False  # False: pretraining form (last stage keeps 1/16)
    num_classes: int = 0  # >0: fine-tuning head (mean pool -> norm -> head)
    target_dim: int = 108  # pretraining head output per token

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1

    @property
    def embed_thw(self) -> Triple:
        """Token grid after the patch embedding (t, h, w)."""
        size = (self.num_frames, self.image_size, self.image_size)
        return tuple(
            (n + 2 * p - k) // s + 1
            for n, k, s, p in zip(size, self.patch_kernel, self.patch_stride, self.patch_padding)
        )

    def q_strides(self) -> list[Triple]:
        pooled = self.stage_starts if self.pool_last_stage else self.stage_starts[:-1]
        return [self.q_stride if i in pooled else (1, 1, 1) for i in range(self.depth)]

    def blocks(self) -> list[BlockSpec]:
        out = []
        dim, heads = self.embed_dim, self.num_heads
        kv = self.kv_stride
        thw = self.embed_thw
        for i, q in enumerate(self.q_strides()):
            if i in self.stage_starts:
                heads *= 2
            dim_out = dim * 2 if (i + 1) in self.stage_starts else dim
            kv = tuple(max(s // qs, 1) for s, qs in zip(kv, q))
            out_thw = _pooled_size(thw, q)
            out.append(BlockSpec(dim, dim_out, heads, q, kv, self.pool_kernel, thw, out_thw))
            dim, thw = dim_out, out_thw
        return out

    @property
    def out_dim(self) -> int:
        return self.blocks()[-1].dim_out

    def _output_thw(self) -> Triple:
        return self.blocks()[-1].output_thw

    @property
    def grid(self) -> tuple[int, ...]:
        """Output token grid (where the targets and the loss live): (t, h, w) or (h, w)."""
        thw = self._output_thw()
        return thw if self.is_video else thw[1:]

    @property
    def token_grid(self) -> tuple[int, ...]:
        """Input token grid (where masked embeddings are replaced)."""
        return self.embed_thw if self.is_video else self.embed_thw[1:]

    @property
    def patch_size(self) -> int:
        """Pixels per output token side: the HOG target's patch size."""
        return self.image_size // self._output_thw()[1]

    @property
    def tubelet(self) -> int:
        """Frames per output token: targets come from frames 0, tubelet, 2 tubelet, ..."""
        return self.num_frames // self._output_thw()[0] if self.is_video else 1

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)


def parse_variant(variant: str) -> dict[str, Any]:
    """'MViTv2-S' (or 'S') -> embed_dim / num_heads / depth / stage_starts."""
    match = re.fullmatch(r"(?:MViTv2-)?(S|B|L)", variant)
    if not match:
        raise ValueError(
            f"Unknown MViT variant {variant!r}; use one of "
            f"{[f'MViTv2-{k}' for k in VARIANTS]} (or the bare size letter)."
        )
    embed, heads, depth, starts = VARIANTS[match.group(1)]
    return dict(embed_dim=embed, num_heads=heads, depth=depth, stage_starts=starts)


_IMAGE_DEFAULTS = dict(
    patch_kernel=(1, 7, 7), patch_stride=(1, 4, 4), patch_padding=(0, 3, 3), pool_kernel=(1, 3, 3)
)


def make_spec(variant: str, **overrides: Any) -> MViTSpec:
    """A spec from a variant name; explicit overrides (e.g. a small model for tests) win.

    ``pool_last_stage`` defaults to the fine-tuning form when ``num_classes > 0`` and to the
    pretraining form otherwise."""
    fields = parse_variant(variant)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    for key in ("stage_starts", "patch_kernel", "patch_stride", "patch_padding", "pool_kernel"):
        if key in fields:
            fields[key] = tuple(int(v) for v in fields[key])
    for key in ("q_stride", "kv_stride"):
        if key in fields:
            fields[key] = tuple(int(v) for v in fields[key])
    fields.setdefault("pool_last_stage", bool(fields.get("num_classes")))
    if fields.get("num_frames") == 1:
        # Images: the reference's 2-D form, i.e. no temporal extent in any kernel or stride.
        for key, value in _IMAGE_DEFAULTS.items():
            fields.setdefault(key, value)
    spec = MViTSpec(**fields)
    _check_spec(spec)
    return spec


def _check_spec(spec: MViTSpec) -> None:
    starts = spec.stage_starts
    if list(starts) != sorted(set(starts)) or (starts and not 0 < starts[0] < spec.depth):
        raise ValueError(
            f"stage_starts {starts} must be increasing block indices in 1..depth-1 "
            f"(depth {spec.depth})."
        )
    if starts and starts[-1] >= spec.depth:
        raise ValueError(f"stage_starts {starts} go past depth {spec.depth}.")
    if spec.is_video and spec.num_frames % spec.patch_stride[0]:
        raise errors.ConfigError(
            f"num_frames {spec.num_frames} is not a multiple of the temporal patch stride "
            f"{spec.patch_stride[0]}; use e.g. {spec.num_frames - spec.num_frames % 2 or 2}."
        )
    _, h, w = spec.embed_thw
    spatial = spec.patch_stride[1] * math.prod(q[1] for q in spec.q_strides())
    kv = spec.kv_stride[1]
    need = spec.patch_stride[1] * max(spatial // spec.patch_stride[1], kv)
    if spec.image_size % need or spec.image_size != h * spec.patch_stride[1]:
        raise errors.ConfigError(
            f"image_size {spec.image_size} must be a multiple of {need} (patch stride x the "
            "larger of the q-pooling and kv-pooling strides) so every pooled grid is exact; "
            f"use e.g. --config.model.image_size={max(need, spec.image_size // need * need)}."
        )
    for b in spec.blocks():
        if b.dim % b.num_heads:
            raise errors.ConfigError(f"block dim {b.dim} is not divisible by {b.num_heads} heads.")


def _pad_same(x: jax.Array, kernel: Triple, fill: float) -> jax.Array:
    return jnp.pad(
        x, [(0, 0)] + [(k // 2, k // 2) for k in kernel] + [(0, 0)], constant_values=fill
    )


def _unpad_same(padded: jax.Array, kernel: Triple) -> jax.Array:
    lo = [k // 2 for k in kernel]
    hi = [n - a for n, a in zip(padded.shape[1:4], lo)]
    return padded[:, lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]


def _spread(terms: Sequence[tuple[Triple, jax.Array]], size: Triple, stride: Triple):
    """The transpose of ``strided_windows``: sums each (offset, [N, *out, C]) term onto a
    [N, *size, C] grid at positions offset + m * stride. Polyphase: offset o lands on the
    phase sub-grid o % stride, shifted by o // stride, so every term is a plain shift (no
    interior padding, no work on the zeros between strided positions); the phases are
    then interleaved."""
    n, c = terms[0][1].shape[0], terms[0][1].shape[-1]
    out = terms[0][1].shape[1:4]
    phase_size = [-(-m // s) for m, s in zip(size, stride)]
    phases: dict[Triple, jax.Array] = {}
    for offset, term in terms:
        phase = tuple(o % s for o, s in zip(offset, stride))
        shift = [o // s for o, s in zip(offset, stride)]
        placed = jnp.pad(
            term, [(0, 0)] + [(a, p - m - a) for a, p, m in zip(shift, phase_size, out)] + [(0, 0)]
        )
        phases[phase] = placed + phases[phase] if phase in phases else placed
    zeros = jnp.zeros((n, *phase_size, c), terms[0][1].dtype)
    grid = jnp.stack([phases.get(p, zeros) for p in np.ndindex(*stride)])
    grid = grid.reshape(*stride, n, *phase_size, c).transpose(3, 4, 0, 5, 1, 6, 2, 7)
    grid = grid.reshape(n, *(p * s for p, s in zip(phase_size, stride)), c)
    return grid[:, : size[0], : size[1], : size[2]]


def _correlate(padded: jax.Array, w: jax.Array, stride: Triple, out: Sequence[int]) -> jax.Array:
    """Depthwise cross-correlation as a sum of shifted, strided views times per-channel
    weights (w [kt, kh, kw, 1, C])."""
    views = layers.strided_windows(padded, w.shape[:3], stride, out)
    return sum(view * w[(*offset, 0)] for offset, view in views)


# Most (batch, time) slices the weight gradient sums term by term in one fused loop.
_TERMS_PER_SUM = 16
_MAX_TERMS = 64


def _weight_grad(padded: jax.Array, g: jax.Array, kernel: Triple, stride: Triple) -> jax.Array:
    """dw[offset, c] = sum over (n, t, h, w) of view_offset * g, as [prod(kernel), C].

    The sum over (n, t) is written out term by term on slices, so each offset's products
    form one elementwise loop over [H, W, C] that reads the input in place; only those
    small partial sums are materialised and reduced. (A plain ``jnp.sum`` per offset hands
    the reduction to a library kernel that cannot read strided slices, so XLA first copies
    all 27 shifted views out: most of the pooling's backward time.)"""
    n, t, c = g.shape[0], g.shape[1], g.shape[-1]
    out = g.shape[1:4]
    if n * t > _MAX_TERMS:  # large CPU batches: fewer ops to compile beats the copies
        views = layers.strided_windows(padded, kernel, stride, out)
        return jnp.stack([jnp.sum(v * g, axis=(0, 1, 2, 3)) for _, v in views])
    pairs = [(i, j) for i in range(n) for j in range(t)]
    groups = [pairs[i : i + _TERMS_PER_SUM] for i in range(0, len(pairs), _TERMS_PER_SUM)]
    hw_limit = [(m - 1) * s + 1 for m, s in zip(out[1:], stride[1:])]
    partial = []
    for ot, oh, ow in np.ndindex(*kernel):
        for group in groups:
            total = None
            for i, j in group:
                start = (i, ot + j * stride[0], oh, ow, 0)
                limit = (i + 1, start[1] + 1, oh + hw_limit[0], ow + hw_limit[1], c)
                view = jax.lax.slice(padded, start, limit, (1, 1, *stride[1:], 1))
                term = view * jax.lax.slice(g, (i, j, 0, 0, 0), (i + 1, j + 1, *out[1:], c))
                total = term if total is None else total + term
            partial.append(total)
    partial = jnp.stack(partial)
    return jnp.sum(partial.reshape(math.prod(kernel), -1, c), axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _depthwise_shifts(x: jax.Array, w: jax.Array, stride: Triple) -> jax.Array:
    """Depthwise Conv3d (zero padding k//2) for the CPU. Its hand-written backward keeps
    only x for the weight gradient; autodiff of the view sum would keep all 27 views (a
    27x larger residual that dominated the step's memory traffic)."""
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
        dpadded = _spread([(o, g * w[(*o, 0)]) for o in np.ndindex(*kernel)], size, stride)
    else:  # at stride 1, a correlation of the padded g with the flipped kernel
        spread = jnp.pad(g, [(0, 0)] + [(k - 1, k - 1) for k in kernel] + [(0, 0)])
        dpadded = _correlate(spread, w[::-1, ::-1, ::-1], (1, 1, 1), size)
    dx = _unpad_same(dpadded, kernel)
    return dx, dw.reshape(w.shape).astype(w.dtype)


_depthwise_shifts.defvjp(_depthwise_shifts_fwd, _depthwise_shifts_bwd)


class DepthwisePool(nnx.Module):
    """Depthwise Conv3d, no bias, explicit zero padding k//2, one [kernel, hd] filter
    shared by the heads (PyTorch ``attn.pool_{q,k,v}``), applied to [B, T, H, W, heads*hd]
    with head-major channels: the filter is tiled over the heads, so the tokens keep the
    layout the qkv projection wrote them in (no transpose to [B*heads, ...] and back).

    XLA's CPU backend runs grouped convolutions (and their gradients) 10-50x slower than
    the same sum of 27 shifted, strided views, which fuses into a few loops; so the CPU
    computes that sum (with a hand-written backward), accelerators the native convolution."""

    def __init__(
        self, dim: int, kernel: Triple, stride: Triple, *, heads: int, dtype, rngs: nnx.Rngs
    ):
        init = layers.with_axes(layers.weight_init(), (None, None, None, None, None))
        self.kernel = nnx.Param(init(rngs.params(), (*kernel, 1, dim)))
        self.kernel_size, self.stride, self.dtype = tuple(kernel), tuple(stride), dtype
        self.heads = heads

    def __call__(self, x: jax.Array) -> jax.Array:
        x = x.astype(self.dtype)
        w = jnp.tile(self.kernel[...].astype(self.dtype), (1, 1, 1, 1, self.heads))

        def via_conv(x, w):
            return jax.lax.conv_general_dilated(
                x,
                w,
                self.stride,
                [(k // 2, k // 2) for k in self.kernel_size],
                dimension_numbers=("NDHWC", "DHWIO", "NDHWC"),
                feature_group_count=x.shape[-1],
            )

        def via_shifts(x, w):
            return _depthwise_shifts(x, w, self.stride)

        return jax.lax.platform_dependent(x, w, cpu=via_shifts, default=via_conv)


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
        out = layers.attend(heads_first(q_ext), heads_first(k_ext), heads_first(v))
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
    kernel, stride = block.skip_kernel, block.q_stride

    def via_reduce_window(tokens):
        return jax.lax.reduce_window(
            tokens,
            -jnp.inf,  # a literal init value makes this the differentiable max-pool primitive
            jax.lax.max,
            (1, *kernel, 1),
            (1, *stride, 1),
            [(0, 0)] + [(k // 2, k // 2) for k in kernel] + [(0, 0)],
        )

    def via_shifts(tokens):
        return _max_pool_shifts(tokens, kernel, stride)

    pooled = jax.lax.platform_dependent(tokens, cpu=via_shifts, default=via_reduce_window)
    return jnp.concatenate([cls, pooled.reshape(b, -1, c)], axis=1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _max_pool_shifts(x: jax.Array, kernel: Triple, stride: Triple) -> jax.Array:
    """Max pooling (padding k//2 with -inf) for the CPU as the maximum of shifted, strided
    views: one fused loop, where XLA's CPU reduce-window and its gradient (which builds
    index arrays) ran ~3.5x slower than PyTorch's pooling."""
    padded = _pad_same(x, kernel, -jnp.inf)
    views = layers.strided_windows(padded, kernel, stride, _pooled_size(x.shape[1:4], stride))
    return functools.reduce(jnp.maximum, (view for _, view in views))


def _max_pool_shifts_fwd(x, kernel, stride):
    out = _max_pool_shifts(x, kernel, stride)
    return out, (x, out)


def _max_pool_shifts_bwd(kernel, stride, residuals, g):
    """Each window's gradient goes to its first maximum in scan order (as PyTorch's)."""
    x, out = residuals
    padded = _pad_same(x, kernel, -jnp.inf)
    offsets, views = zip(*layers.strided_windows(padded, kernel, stride, out.shape[1:4]))
    first = jnp.zeros(out.shape, jnp.int8)
    for i in reversed(range(len(views))):
        first = jnp.where(views[i] == out, jnp.int8(i), first)
    # computed once, not re-derived by the spread below for every window element it reads
    first = layers.materialize(first)
    zero = jnp.zeros((), g.dtype)
    contributions = [(o, jnp.where(first == i, g, zero)) for i, o in enumerate(offsets)]
    return (_unpad_same(_spread(contributions, padded.shape[1:4], stride), kernel),)


_max_pool_shifts.defvjp(_max_pool_shifts_fwd, _max_pool_shifts_bwd)


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
      remat: rematerialise each block in the backward pass (saves activation memory).
      drop_path_rate: stochastic depth of the last block (rising linearly from 0 at the
        first); active only when the call passes a ``key``.
    """

    name = "MViT"

    def __init__(
        self,
        spec: MViTSpec,
        *,
        dtype=jnp.float32,
        remat: bool = False,
        drop_path_rate: float = 0.0,
        rngs: nnx.Rngs,
    ):
        self.spec = spec
        self.dtype = dtype
        self.remat = remat
        self.drop_rates = tuple(layers.drop_path_rates(drop_path_rate, spec.depth))
        d = spec.embed_dim
        token_init = layers.with_axes(layers.weight_init(), (None, None, "embed"))
        self.patch_embed = PatchEmbed(spec, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(token_init(rngs.params(), (1, 1, d)))
        self.blocks = nnx.List(
            [MultiScaleBlock(b, spec.mlp_ratio, dtype=dtype, rngs=rngs) for b in spec.blocks()]
        )
        self._init_heads(d, spec.out_dim, dtype=dtype, rngs=rngs)

    def embed(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Patch embedding, mask-token replacement and cls: [B, 1+N, D]."""
        if not self.spec.is_video:
            x = x[:, None]
        return self._mask_and_cls(self.patch_embed(x.astype(self.dtype)), mask)

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
            return layers.shard_batch(block(layers.materialize_gradient(y), rate, k))

        if self.remat:
            apply_block = nnx.remat(apply_block, static_argnums=(2,))
        keys = layers.block_keys(key, len(self.blocks))
        for block, rate, k in zip(self.blocks, self.drop_rates, keys):
            h = apply_block(block, h, rate, k)
        return h
