"""MViTv2's architecture table: the per-block shapes (``BlockSpec``) that SlowFast derives
from a variant's stage settings, and the checks that keep every pooled grid exact.

Stages: heads double at each stage's first block, channels double in the block before it
(its MLP and shortcut projection), q is pooled with stride (1,2,2) at stage starts and kv
with an adaptive stride that starts at (1,8,8) and is divided by every q stride. The
pretraining form drops the q stride of the last stage so the output stays at 1/16 of the
input (14 x 14 for 224 px): one 108-d HOG target per output token.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence
from typing import Any

from maskfeat_jax import errors

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
    target_size: int = 108  # pretraining head output per token; 0: no pretraining head

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
    return {"embed_dim": embed, "num_heads": heads, "depth": depth, "stage_starts": starts}


_IMAGE_DEFAULTS = {
    "patch_kernel": (1, 7, 7),
    "patch_stride": (1, 4, 4),
    "patch_padding": (0, 3, 3),
    "pool_kernel": (1, 3, 3),
}


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
    h = spec.embed_thw[1]
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
