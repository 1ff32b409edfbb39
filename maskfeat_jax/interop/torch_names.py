"""Parameter names and layouts between our models and PyTorch state dicts.

A mapping is a list of module-path renames (regular expressions on our '/'-joined path)
plus per-leaf layout rules that are the same for every PyTorch target:

  Linear ``kernel`` [in, out]            <-> ``weight`` [out, in]
  Conv ``kernel`` [*spatial, in, out]    <-> ``weight`` [out, in, *spatial]
  LayerNorm ``scale``                    <-> ``weight``
  ``bias`` and direct parameters (``cls_token``, ``rel_pos_h`` ...) keep their layout,
  except where a naming squeezes a token to [C] (torchvision's ``class_token``).

Our paths already follow SlowFast's keys, so each naming is a short list of renames.
Parameters a target has no place for (e.g. ``mask_token`` and ``pred_head`` in torchvision's
classifier) are returned separately rather than dropped silently.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import nnx

from maskfeat_jax.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class Naming:
    """How one PyTorch code base names a model family's parameters."""

    name: str
    renames: tuple[tuple[str, str], ...]  # (regex on our module path, replacement)
    squeeze_tokens: tuple[str, ...] = ()  # our names stored as [C] instead of [1, 1, C]
    unsupported: tuple[str, ...] = ()  # regexes of our paths the target has no place for


@dataclasses.dataclass(frozen=True)
class Buffer:
    """A constant tensor a PyTorch target expects in its state dict (no parameter of ours)."""

    key: str
    value: np.ndarray


_TORCHVISION_COMMON = (
    (r"^patch_embed/proj$", "conv_proj"),
    (r"^cls_token$", "pos_encoding.class_token"),
    (r"^blocks/(\d+)/attn/proj$", r"blocks.\1.attn.project.0"),
    (r"^blocks/(\d+)/attn/pool_([qkv])$", r"blocks.\1.attn.pool_\2.pool"),
    (r"^blocks/(\d+)/attn/norm_([qkv])$", r"blocks.\1.attn.pool_\2.norm_act.0"),
    (r"^blocks/(\d+)/mlp/fc1$", r"blocks.\1.mlp.0"),
    (r"^blocks/(\d+)/mlp/fc2$", r"blocks.\1.mlp.3"),
    (r"^blocks/(\d+)/proj$", r"blocks.\1.project"),
    (r"^head$", "head.1"),
)

# torchvision's generic MViT with the MaskFeat block settings (fine-tuning form). Its forward
# classifies from the cls token; MaskFeat fine-tunes with mean pooling (see export notes).
TORCHVISION_MVIT = Naming(
    name="torchvision",
    renames=_TORCHVISION_COMMON,
    squeeze_tokens=("cls_token",),
    unsupported=(r"^mask_token$", r"^pred_head/"),
)

# Pretraining form: the prediction head's LayerNorm and Linear take torchvision's final
# ``norm`` and ``head.1`` (num_classes = HOG target size); ``mask_token`` has no place.
TORCHVISION_MVIT_PRETRAIN = Naming(
    name="torchvision",
    renames=((r"^pred_head/norm$", "norm"), (r"^pred_head/proj$", "head.1"), *_TORCHVISION_COMMON),
    squeeze_tokens=("cls_token",),
    unsupported=(r"^mask_token$",),
)

# timm VisionTransformer: our ViT paths are timm's already. Fine-tuning is
# ``global_pool='avg'`` (mean over patch tokens -> fc_norm -> head).
TIMM_VIT = Naming(name="timm", renames=((r"^norm$", "fc_norm"),))

# Pretraining form: the encoder for ``num_classes=0, global_pool='token'`` whose final
# ``norm`` is MaskFeat's head LayerNorm; ``mask_token`` and the prediction Linear stay out.
TIMM_VIT_PRETRAIN = Naming(
    name="timm",
    renames=((r"^pred_head/norm$", "norm"),),
    unsupported=(r"^mask_token$", r"^pred_head/proj/"),
)

# SlowFast's MaskMViT / MViT keys (ViT and MViTv2): ours are SlowFast's already, but for
# the heads. Pretraining checkpoints also hold the HOG filters as persistent buffers.
SLOWFAST = Naming(
    name="slowfast",
    renames=(
        (r"^pred_head/norm$", "pred_head.transforms.0.0"),
        (r"^pred_head/proj$", "pred_head.projections.0"),
        (r"^head$", "head.projection"),
    ),
)

_SOBEL_X = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
SLOWFAST_HOG_BUFFERS = (
    Buffer("hogs.0.weight_x", np.broadcast_to(_SOBEL_X, (3, 1, 3, 3)).copy()),
    Buffer("hogs.0.weight_y", np.broadcast_to(_SOBEL_X.T, (3, 1, 3, 3)).copy()),
)

TARGETS = ("timm", "slowfast", "torchvision")


def naming_for(target: str, family: str, pretrain: bool) -> Naming:
    """The naming of ``target`` ('timm', 'slowfast', 'torchvision') for a model family
    ('vit', 'mvit') in its pretraining or fine-tuning form."""
    if target == "slowfast":
        return SLOWFAST
    if target == "timm" and family == "vit":
        return TIMM_VIT_PRETRAIN if pretrain else TIMM_VIT
    if target == "torchvision" and family == "mvit":
        return TORCHVISION_MVIT_PRETRAIN if pretrain else TORCHVISION_MVIT
    supported = {"vit": ("ViT", "timm"), "mvit": ("MViTv2", "torchvision")}
    if target not in TARGETS or family not in supported:
        raise ConfigError(f"Unknown naming {target!r} for {family!r}; choose one of {TARGETS}.")
    name, other = supported[family]
    raise ConfigError(
        f"{target} has no {name} like ours; use --naming {other} or --naming slowfast."
    )


def buffers_for(naming: Naming, pretrain: bool) -> tuple[Buffer, ...]:
    return SLOWFAST_HOG_BUFFERS if (naming is SLOWFAST and pretrain) else ()


_LEAF_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias"}


def flat_params(tree: Any) -> dict[str, np.ndarray]:
    """Model (or nnx state) -> {'blocks/0/attn/qkv/kernel': array, ...} of its Params.

    An abstract model (``nnx.eval_shape``) gives ``jax.ShapeDtypeStruct`` values."""
    state = nnx.state(tree, nnx.Param) if isinstance(tree, nnx.Module) else tree

    def value(v):
        v = v.get_value()
        return v if isinstance(v, jax.ShapeDtypeStruct) else np.asarray(jax.device_get(v))

    return {"/".join(map(str, path)): value(v) for path, v in nnx.to_flat_state(state)}


def _torch_key(path: str, naming: Naming) -> tuple[str, str] | None:
    """Our path -> (torch key, leaf kind); None if the target has no such parameter."""
    if any(re.search(p, path) for p in naming.unsupported):
        return None
    module, _, leaf = path.rpartition("/")
    if leaf in _LEAF_NAMES and module:
        kind, torch_leaf = leaf, _LEAF_NAMES[leaf]
    else:  # a direct parameter such as cls_token or blocks/3/attn/rel_pos_h
        module, torch_leaf, kind = path, "", "direct"
    for pattern, replacement in naming.renames:
        if re.search(pattern, module):
            module = re.sub(pattern, replacement, module)
            break
    else:
        module = module.replace("/", ".")
    return (f"{module}.{torch_leaf}" if torch_leaf else module), kind


def torch_key(path: str, naming: Naming) -> str | None:
    """The torch key of one of our parameter paths (None if the target has no place for it)."""
    key = _torch_key(path, naming)
    return None if key is None else key[0]


def _to_torch_layout(x: np.ndarray, kind: str, path: str, naming: Naming) -> np.ndarray:
    if kind == "kernel":
        # [*spatial, in, out] -> [out, in, *spatial]; for a Linear just the transpose.
        return np.moveaxis(x, (-1, -2), (0, 1))
    if kind == "direct" and path in naming.squeeze_tokens:
        return x.reshape(x.shape[-1])
    return x


def _from_torch_layout(x: np.ndarray, kind: str, path: str, naming: Naming) -> np.ndarray:
    if kind == "kernel" and x.ndim >= 2:
        return np.moveaxis(x, (0, 1), (-1, -2))
    if kind == "direct" and path in naming.squeeze_tokens and x.ndim == 1:
        return x.reshape(1, 1, -1)
    return x


def _relayout(value: Any, layout, kind: str, path: str, naming: Naming) -> Any:
    """``layout`` applied to an array, or to the shape of an abstract one (through a
    zero-stride view: no memory however large the shape)."""
    if isinstance(value, jax.ShapeDtypeStruct):
        view = np.broadcast_to(np.zeros((), value.dtype), value.shape)
        return jax.ShapeDtypeStruct(layout(view, kind, path, naming).shape, value.dtype)
    return layout(np.asarray(value), kind, path, naming)


def to_torch(flat: Mapping[str, Any], naming: Naming) -> tuple[dict, dict]:
    """Our flat params -> (torch-named arrays, our params the target has no place for).

    Abstract leaves (``jax.ShapeDtypeStruct``) give abstract leaves with the torch shapes,
    which is enough to check names and shapes of a full-size model without its memory."""
    out, left = {}, {}
    for path, value in flat.items():
        key = _torch_key(path, naming)
        if key is None:
            left[path] = value
            continue
        x = _relayout(value, _to_torch_layout, key[1], path, naming)
        out[key[0]] = x if isinstance(x, jax.ShapeDtypeStruct) else np.ascontiguousarray(x)
    return out, left


class MappingError(ConfigError):
    """A PyTorch state dict does not fit the model; the message lists every problem."""


def rename_from_torch(
    state_dict: Mapping[str, Any], paths: Any, naming: Naming
) -> tuple[dict[str, np.ndarray], list[str], list[str]]:
    """Torch-named arrays -> ours for the parameter ``paths`` of one of our models, in our
    layouts but with whatever shapes the file has (resampling is the caller's business).

    Returns (our flat params found, our paths with no tensor in the file, torch keys that
    were not used). Paths the naming has no place for count as neither. Abstract tensors
    (``jax.ShapeDtypeStruct``) give abstract params: names and shapes without memory."""
    arrays = {k: _as_numpy(v) for k, v in state_dict.items()}
    out, absent, used = {}, [], set()
    for path in paths:
        key = _torch_key(path, naming)
        if key is None:
            continue
        name, kind = key
        if name not in arrays:
            absent.append(path)
            continue
        used.add(name)
        out[path] = _relayout(arrays[name], _from_torch_layout, kind, path, naming)
    return out, absent, sorted(set(arrays) - used)


def from_torch(
    state_dict: Mapping[str, Any],
    template: Mapping[str, np.ndarray],
    naming: Naming,
    *,
    allow_missing: tuple[str, ...] = (),
) -> tuple[dict[str, np.ndarray], list[str]]:
    """A torch-named state dict -> our flat params shaped exactly like ``template``.

    Returns (params, torch keys that were not used). Parameters of ours the target has no
    place for (``naming.unsupported``) and paths matching ``allow_missing`` keep the
    template's values. Any missing key or shape mismatch raises one error listing them all.
    """
    found, absent, unused = rename_from_torch(state_dict, template, naming)
    out: dict[str, np.ndarray] = {}
    problems: list[str] = []
    for path, like in template.items():
        shape = tuple(like.shape)
        if path in found and not any(re.search(p, path) for p in allow_missing):
            value = found[path]
            if value.shape != shape:
                name = _torch_key(path, naming)[0]
                problems.append(
                    f"{name}: shape {_torch_shape(value, path, naming)} does not fit {path} {shape}"
                )
                continue
            out[path] = value.astype(like.dtype)
        elif path in absent and not any(re.search(p, path) for p in allow_missing):
            problems.append(f"missing {_torch_key(path, naming)[0]} (for {path}, shape {shape})")
        else:
            out[path] = like  # keeps the template's value
    if problems:
        raise MappingError(
            f"{len(problems)} parameter(s) do not fit the {naming.name} naming:\n  "
            + "\n  ".join(problems)
        )
    return out, unused


def _torch_shape(value: np.ndarray, path: str, naming: Naming) -> tuple[int, ...]:
    """The shape the tensor had in the file (for error messages)."""
    kind = _torch_key(path, naming)[1]
    return tuple(_to_torch_layout(value, kind, path, naming).shape)


def _as_numpy(v: Any) -> Any:
    if isinstance(v, jax.ShapeDtypeStruct):
        return v
    if hasattr(v, "detach"):  # a torch tensor, without importing torch here
        v = v.detach().cpu().numpy()
    return np.asarray(v)


def load_flat_params(model: nnx.Module, flat: Mapping[str, np.ndarray], dtype=None) -> None:
    """Writes flat params (same paths and shapes as the model's) into the model in place.

    Works on an abstract model from ``nnx.eval_shape`` too (no initialization needed).
    ``dtype`` overrides the parameters' dtype (e.g. float64 for parity checks)."""
    state = nnx.state(model, nnx.Param)
    problems = []
    for path, var in nnx.to_flat_state(state):
        key = "/".join(map(str, path))
        current = var.get_value()
        if key not in flat:
            problems.append(f"missing {key}")
            continue
        value = np.asarray(flat[key])
        if value.shape != tuple(current.shape):
            problems.append(f"{key}: shape {value.shape} != {tuple(current.shape)}")
            continue
        var.set_value(jax.numpy.asarray(value, dtype or current.dtype))
    if problems:
        raise MappingError(f"{len(problems)} parameter(s) do not fit:\n  " + "\n  ".join(problems))
    nnx.update(model, state)


def torchvision_mvit_kwargs(spec) -> dict[str, Any]:
    """Arguments of ``torchvision.models.video.mvit.MViT`` that rebuild our MViT exactly
    (``block_setting`` as dicts of ``MSBlockConfig`` fields)."""
    blocks = [
        {
            "num_heads": b.num_heads,
            "input_channels": b.dim,
            "output_channels": b.dim_out,
            "kernel_q": list(b.kernel),
            "kernel_kv": list(b.kernel),
            "stride_q": list(b.q_stride),
            "stride_kv": list(b.kv_stride),
        }
        for b in spec.blocks()
    ]
    return {
        "spatial_size": (spec.image_size, spec.image_size),
        "temporal_size": spec.num_frames,
        "block_setting": blocks,
        "residual_pool": True,
        "residual_with_cls_embed": False,
        "rel_pos_embed": True,
        "proj_after_attn": False,
        "num_classes": spec.num_classes or 400,
        "patch_embed_kernel": tuple(spec.patch_kernel),
        "patch_embed_stride": tuple(spec.patch_stride),
        "patch_embed_padding": tuple(spec.patch_padding),
    }
