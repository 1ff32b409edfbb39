"""Vision Transformer for MaskFeat, images (P x P patches) and video (T x P x P tubelets).

Semantics follow SlowFast's ``MaskMViT`` in its ViT form (``PATCH_2D``, no pooling), which is
timm's ``VisionTransformer`` with a MaskFeat head:

  patch_embed -> replace masked embeddings by ``mask_token`` -> prepend ``cls_token`` ->
  add the learned ``pos_embed`` (mask tokens get it too) -> pre-norm blocks
  (LN eps 1e-6, MHSA with qkv bias, exact GELU MLP, no layer scale) ->
  pretraining: ``pred_head`` = LN -> Linear(width -> target_size) on the patch tokens;
  fine-tuning: mean over patch tokens -> ``norm`` -> ``head``.

The full sequence (visible + mask tokens) runs through the encoder (no MAE-style dropping).

Parameter paths mirror the PyTorch names so export is a rename plus transposes:
``patch_embed/proj``, ``cls_token``, ``pos_embed``, ``mask_token``, ``blocks/<i>/{norm1,attn/qkv,
attn/proj,norm2,mlp/fc1,mlp/fc2}``, ``pred_head/{norm,proj}`` (SlowFast
``pred_head.transforms.0.0`` / ``pred_head.projections.0``), ``norm`` and ``head``.
With ``scan=True`` the blocks are stacked: ``blocks/<name>`` with a leading layer axis.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskfeat_jax import errors
from maskfeat_jax.models import layers, transfer
from maskfeat_jax.ops import attention, fusion

# name -> (width, depth, heads, mlp_dim); the ViT paper / timm table.
VARIANTS: dict[str, tuple[int, int, int, int]] = {
    "Ti": (192, 12, 3, 768),
    "S": (384, 12, 6, 1536),
    "B": (768, 12, 12, 3072),
    "L": (1024, 24, 16, 4096),
    "H": (1280, 32, 16, 5120),
}


@dataclasses.dataclass(frozen=True)
class ViTSpec:
    """Everything that fixes the architecture (and so the parameter shapes)."""

    width: int
    depth: int
    num_heads: int
    mlp_dim: int
    patch_size: int
    image_size: int = 224
    in_channels: int = 3
    num_frames: int = 1  # 1 = image model (2-D patches); >1 = video with tubelets
    tubelet: int = 1  # temporal patch size for video
    num_classes: int = 0  # >0: fine-tuning head (mean pool -> norm -> head)
    # pretraining head output per token (HOG: 3 * 9 * (P/8)^2); 0: no pretraining head
    target_size: int = 108

    @property
    def is_video(self) -> bool:
        return self.num_frames > 1

    @property
    def grid(self) -> tuple[int, ...]:
        """Token grid: (H/P, W/P) for images, (T/t, H/P, W/P) for video."""
        side = self.image_size // self.patch_size
        if self.is_video:
            return (self.num_frames // self.tubelet, side, side)
        return (side, side)

    @property
    def token_grid(self) -> tuple[int, ...]:
        """Grid where masked embeddings are replaced; for a ViT the same as ``grid``."""
        return self.grid

    @property
    def num_patches(self) -> int:
        return math.prod(self.grid)


def parse_variant(variant: str) -> dict[str, int]:
    """'B/16' -> width/depth/heads/mlp of ViT-B with 16-px patches; 'B/2x16' adds a 2-frame tubelet."""
    match = re.fullmatch(r"(Ti|S|B|L|H)/(?:(\d+)x)?(\d+)", variant)
    if not match:
        raise ValueError(
            f"Unknown ViT variant {variant!r}. Use '<size>/<patch>' or '<size>/<tubelet>x<patch>' "
            f"with size in {sorted(VARIANTS)}, e.g. 'B/16' or 'L/2x16'."
        )
    name, tubelet, patch = match.groups()
    width, depth, heads, mlp = VARIANTS[name]
    out = {"width": width, "depth": depth, "num_heads": heads, "mlp_dim": mlp}
    out["patch_size"] = int(patch)
    if tubelet:
        out["tubelet"] = int(tubelet)
    return out


def make_spec(variant: str, **overrides: Any) -> ViTSpec:
    """A spec from a variant name; explicit overrides (e.g. a tiny width for tests) win."""
    fields = parse_variant(variant)
    fields.update({k: v for k, v in overrides.items() if v is not None})
    spec = ViTSpec(**fields)
    _check_spec(spec)
    return spec


def _check_spec(spec: ViTSpec) -> None:
    if spec.width % spec.num_heads:
        raise errors.ConfigError(
            f"width {spec.width} is not divisible by num_heads {spec.num_heads}; "
            "pick a head count that divides the width."
        )
    if spec.image_size % spec.patch_size:
        raise errors.ConfigError(
            f"image_size {spec.image_size} is not a multiple of patch_size {spec.patch_size}; "
            f"use e.g. --config.model.image_size="
            f"{max(spec.patch_size, spec.image_size // spec.patch_size * spec.patch_size)}."
        )
    if spec.is_video and spec.num_frames % spec.tubelet:
        raise errors.ConfigError(
            f"num_frames {spec.num_frames} is not a multiple of tubelet {spec.tubelet}."
        )


def transfer_params(
    flat: Mapping[str, Any], template: Mapping[str, Any], grid: tuple[int, ...]
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Flat ViT params of one form for another with token grid ``grid``: pretraining ->
    fine-tuning, another image size (``pos_embed`` resampled bicubically over the patch grid,
    cls entry kept), scanned <-> per-layer blocks. Returns (params like ``template``, unused
    source entries, template entries kept at their own values); shape mismatches raise one
    error that lists them all."""

    def adapt(key, value, want):
        if key == "pos_embed" and value.shape[-1] == want[-1]:
            grid_in = transfer.pos_embed_grid(value.shape[1], tuple(grid))
            return transfer.resize_pos_embed(np.asarray(value), grid_in, tuple(grid))
        return value

    return transfer.transfer_params(flat, template, adapt, what="ViT")


class PatchEmbed(nnx.Module):
    """Non-overlapping P x P (or t x P x P) convolution, as PyTorch ``patch_embed.proj``."""

    def __init__(self, spec: ViTSpec, *, dtype, rngs: nnx.Rngs):
        if spec.is_video:
            kernel = (spec.tubelet, spec.patch_size, spec.patch_size)
        else:
            kernel = (spec.patch_size, spec.patch_size)
        self.proj = nnx.Conv(
            spec.in_channels,
            spec.width,
            kernel_size=kernel,
            strides=kernel,
            padding=[(0, 0)] * len(kernel),
            kernel_init=layers.with_axes(
                layers.weight_init(), (None,) * (len(kernel) + 1) + ("embed",)
            ),
            bias_init=layers.conv_bias_init(spec.in_channels * math.prod(kernel), "embed"),
            dtype=dtype,
            param_dtype=jnp.float32,
            rngs=rngs,
        )

    def __call__(self, x: jax.Array) -> jax.Array:
        y = layers.patch_conv(self.proj, x)
        return y.reshape(y.shape[0], -1, y.shape[-1])


class Attention(nnx.Module):
    def __init__(self, dim: int, num_heads: int, *, dtype, rngs: nnx.Rngs):
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.qkv = layers.dense(dim, 3 * dim, ("embed", "heads"), dtype=dtype, rngs=rngs)
        self.proj = layers.dense(dim, dim, ("heads", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        q, k, v = layers.split_heads(self.qkv(x), self.num_heads)
        out = attention.attend(q * jnp.asarray(self.scale, q.dtype), k, v)
        return self.proj(layers.merge_heads(out))


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm1(x)); x + mlp(norm2(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_dim: int, *, dtype, rngs: nnx.Rngs):
        self.norm1 = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.attn = Attention(dim, num_heads, dtype=dtype, rngs=rngs)
        self.norm2 = layers.layer_norm(dim, dtype=dtype, rngs=rngs)
        self.mlp = layers.Mlp(dim, mlp_dim, dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array, drop_rate=0.0, key: jax.Array | None = None) -> jax.Array:
        k1, k2 = (None, None) if key is None else jax.random.split(key)
        x = x + layers.drop_path(self.attn(self.norm1(x)), drop_rate, k1)
        return x + layers.drop_path(self.mlp(self.norm2(x)), drop_rate, k2)


class ViT(layers.MaskFeatModel):
    """ViT encoder with the MaskFeat pretraining head or a mean-pooling classification head.

    Args:
      spec: architecture.
      dtype: compute dtype (e.g. bfloat16 on TPU); parameters stay float32.
      scan: stack the blocks and run them with ``nnx.scan`` (faster compiles for deep models).
      remat: rematerialize each block in the backward pass (saves activation memory).
      drop_path_rate: stochastic depth of the last block (rising linearly from 0 at the
        first); active only when the call passes a ``key``.
      kernels: the form of each op (``maskfeat_jax.ops``): 'auto' (per backend),
        'reference' or 'tuned'; config.model.kernels.
    """

    name = "ViT"

    def __init__(
        self,
        spec: ViTSpec,
        *,
        dtype=jnp.float32,
        scan: bool = False,
        remat: bool = False,
        drop_path_rate: float = 0.0,
        kernels: str = "auto",
        rngs: nnx.Rngs,
    ):
        self.spec = spec
        self.dtype = dtype
        self.kernels = kernels
        self.scan = scan
        self.remat = remat
        self.drop_rates = tuple(layers.drop_path_rates(drop_path_rate, spec.depth))
        d = spec.width
        token_init = layers.with_axes(layers.weight_init(), (None, None, "embed"))
        self.patch_embed = PatchEmbed(spec, dtype=dtype, rngs=rngs)
        self.cls_token = nnx.Param(token_init(rngs.params(), (1, 1, d)))
        self.pos_embed = nnx.Param(token_init(rngs.params(), (1, spec.num_patches + 1, d)))

        def make_block(r: nnx.Rngs) -> Block:
            return Block(d, spec.num_heads, spec.mlp_dim, dtype=dtype, rngs=r)

        if scan:
            make_stack = nnx.split_rngs(splits=spec.depth)(
                nnx.vmap(make_block, in_axes=(0,), out_axes=0)
            )
            self.blocks = make_stack(rngs)
        else:
            self.blocks = nnx.List(
                layers.build_blocks(lambda _, r: make_block(r), range(spec.depth), rngs)
            )

        self._init_heads(d, d, dtype=dtype, rngs=rngs)

    @layers.with_kernels
    def embed(self, x: jax.Array, mask: jax.Array | None = None) -> jax.Array:
        """Patch embedding, mask-token replacement, cls and position embedding: [B, 1+N, D]."""
        tokens = self._mask_and_cls(self.patch_embed(x.astype(self.dtype)), mask)
        return tokens + self.pos_embed[...].astype(tokens.dtype)

    @layers.with_kernels
    def encode(
        self, x: jax.Array, mask: jax.Array | None = None, key: jax.Array | None = None
    ) -> jax.Array:
        """All encoder output tokens, cls first: [B, 1+N, D]. ``key`` turns drop path on."""
        self._check_input(x)
        h = self.embed(x, mask)

        def apply_block(block: Block, y: jax.Array, rate, k) -> jax.Array:
            # the residual stream's gradient is computed once per block (see MViT.encode)
            return layers.shard_batch(block(fusion.materialize_gradient(y), rate, k))

        if self.remat:  # a per-layer rate is a Python float unless the blocks are scanned
            apply_block = nnx.remat(apply_block, static_argnums=() if self.scan else (2,))
        depth = self.spec.depth
        if self.scan:
            rates = jnp.asarray(self.drop_rates, jnp.float32)
            if key is None:
                body = nnx.scan(
                    lambda y, block, r: apply_block(block, y, r, None),
                    in_axes=(nnx.Carry, 0, 0),
                    out_axes=nnx.Carry,
                )
                return body(h, self.blocks, rates)
            body = nnx.scan(
                lambda y, block, r, k: apply_block(block, y, r, k),
                in_axes=(nnx.Carry, 0, 0, 0),
                out_axes=nnx.Carry,
            )
            return body(h, self.blocks, rates, jax.random.split(key, depth))
        for block, rate, k in zip(self.blocks, self.drop_rates, layers.block_keys(key, depth)):
            h = apply_block(block, h, rate, k)
        return h
