"""Weights of one model form into another: pretraining -> fine-tuning, a new resolution,
scanned <-> per-layer ViT blocks. Works on flat ``{'blocks/0/attn/qkv/kernel': array}`` dicts;
names and shapes also come through for abstract ``jax.ShapeDtypeStruct`` leaves (a full-size
model checked without its memory).

Resampling follows what the PyTorch loaders do so that weights moved here or there agree:
  ViT ``pos_embed``: bicubic over the patch grid, cls entry untouched (timm
  ``resample_abs_pos_embed`` / mmpretrain ``resize_pos_embed``: ``F.interpolate(mode='bicubic',
  align_corners=False)``, cubic coefficient -0.75);
  MViT ``rel_pos_*``: linear over the table (``mvit.resize_rel_pos``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from maskfeat_jax.errors import ConfigError

_STACKED = re.compile(r"^blocks/(?!\d+/)")


def cubic_resize_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """[n_out, n_in] weights of PyTorch's 1-D bicubic resize (align_corners=False, borders
    clamped, no antialiasing); applying it on each axis is ``F.interpolate(mode='bicubic')``."""
    src = (np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5
    base = np.floor(src)
    t = src - base
    out = np.zeros((n_out, n_in))

    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    weights = (far(t + 1), near(t), near(1 - t), far(2 - t))
    for offset, w in zip((-1, 0, 1, 2), weights):
        idx = np.clip(base + offset, 0, n_in - 1).astype(np.int64)
        np.add.at(out, (np.arange(n_out), idx), w)
    return out


def resize_pos_embed(pos: np.ndarray, grid_in: tuple[int, ...], grid_out: tuple[int, ...]):
    """``[1, 1 + prod(grid), D]`` with cls first -> the same for ``grid_out``.

    Images: grid (H, W). Video: (T, H, W), resized over H and W per frame; T must not change
    (the reference keeps the temporal length between pretraining and fine-tuning)."""
    grid_in, grid_out = tuple(grid_in), tuple(grid_out)
    if grid_in == grid_out:
        return pos
    if len(grid_in) != len(grid_out) or grid_in[:-2] != grid_out[:-2]:
        raise ValueError(
            f"pos_embed grid {grid_in} cannot be resampled to {grid_out}: only the spatial "
            "size may change (keep num_frames and tubelet of the source model)."
        )
    cls, tokens = pos[:, :1], pos[:, 1:]
    d = tokens.shape[-1]
    x = np.asarray(tokens, np.float64).reshape(*grid_in, d)
    mh = cubic_resize_matrix(grid_in[-2], grid_out[-2])
    mw = cubic_resize_matrix(grid_in[-1], grid_out[-1])
    x = np.einsum("ph,...hwd->...pwd", mh, x)
    x = np.einsum("qw,...pwd->...pqd", mw, x)
    tokens = x.reshape(1, -1, d).astype(pos.dtype)
    return np.concatenate([np.asarray(cls), tokens], axis=1)


def pos_embed_grid(num_tokens: int, like_grid: tuple[int, ...]) -> tuple[int, ...]:
    """The square patch grid of a ``pos_embed`` with ``num_tokens`` entries (cls included),
    with the leading (temporal) sizes of ``like_grid``."""
    lead = math.prod(like_grid[:-2])
    side = math.isqrt((num_tokens - 1) // lead) if num_tokens > 1 else 0
    if lead * side * side != num_tokens - 1:
        raise ValueError(
            f"pos_embed with {num_tokens} tokens is not cls + {like_grid[:-2] or ''} x a square "
            "grid; the source model must have the same number of frames and a square input."
        )
    return (*like_grid[:-2], side, side)


def unstack_blocks(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Scanned ViT params (``blocks/<name>`` with a leading layer axis) -> ``blocks/<i>/<name>``;
    per-layer params pass through."""
    out = {}
    for key, value in flat.items():
        if _STACKED.match(key):
            rest = key[len("blocks/") :]
            for i in range(value.shape[0]):
                out[f"blocks/{i}/{rest}"] = _layer(value, i)
        else:
            out[key] = value
    return out


def _layer(value: Any, i: int) -> Any:
    """Layer ``i`` of a stacked array, or its abstract shape."""
    if isinstance(value, jax.ShapeDtypeStruct):
        return jax.ShapeDtypeStruct(value.shape[1:], value.dtype)
    return value[i]


def _stack(layers: list[Any]) -> Any:
    """Per-layer arrays (or abstract shapes) -> one with a leading layer axis."""
    if all(isinstance(v, jax.ShapeDtypeStruct) for v in layers):
        return jax.ShapeDtypeStruct((len(layers), *layers[0].shape), layers[0].dtype)
    return np.stack([np.asarray(v) for v in layers])


def stack_like(flat: Mapping[str, Any], template: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer params -> the template's layout (stacks them if the template is scanned)."""
    if not any(_STACKED.match(k) for k in template):
        return dict(flat)
    out = {k: v for k, v in flat.items() if not re.match(r"^blocks/\d+/", k)}
    for key, like in template.items():
        if _STACKED.match(key):
            rest = key[len("blocks/") :]
            layers = [flat.get(f"blocks/{i}/{rest}") for i in range(like.shape[0])]
            if all(v is not None for v in layers):
                out[key] = _stack(layers)
    return out


Adapt = Callable[[str, Any, tuple[int, ...]], Any]


def transfer_params(
    flat: Mapping[str, Any],
    template: Mapping[str, Any],
    adapt: Adapt | None = None,
    what: str = "model",
) -> tuple[dict[str, Any], list[str], list[str]]:
    """Source params shaped like ``template``.

    ``adapt(key, value, target_shape)`` may resample a value (position tables); every other
    shared entry must already have the template's shape. Returns (params like ``template``,
    source entries the template has no place for (e.g. ``mask_token``, ``pred_head``),
    template entries that keep their own values (e.g. a new ``norm`` and ``head``)). All shape
    mismatches are reported in one error."""
    flat = unstack_blocks(flat)
    per_layer_template = unstack_blocks(template)
    out, kept, problems = {}, [], []
    for key, like in per_layer_template.items():
        if key not in flat:
            out[key], _ = like, kept.append(key)
            continue
        value, want = flat[key], tuple(like.shape)
        if adapt is not None and tuple(value.shape) != want:
            value = adapt(key, value, want)
        if tuple(value.shape) != want:
            problems.append(f"{key}: shape {tuple(value.shape)} does not fit {want}")
        out[key] = value
    if problems:
        raise ConfigError(
            f"{len(problems)} parameter(s) do not fit the target {what} (check variant, "
            "image_size and num_frames):\n  " + "\n  ".join(problems)
        )
    unused = sorted(set(flat) - set(per_layer_template))
    return stack_like(out, template), unused, sorted(kept)
