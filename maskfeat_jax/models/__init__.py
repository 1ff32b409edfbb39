"""Model families by name; ``from_config`` turns ``config.model`` into an NNX module.

``config.model.name``: 'vit' (``variant`` like 'B/16' or 'L/2x16') or 'mvit' (``variant``
like 'MViTv2-S'). Both expose the same spec interface to training: ``grid`` (output tokens,
where targets and the loss live), ``token_grid`` (input tokens, where mask tokens replace
embeddings), ``patch_size`` and ``tubelet`` (pixels and frames per output token),
``image_size``, ``num_frames`` and ``is_video``.
"""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskfeat_jax.models import mvit, vit
from maskfeat_jax.ops import dispatch

FAMILIES = ("vit", "mvit")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"config.model.dtype={name!r} is not one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def kernels(name: str) -> str:
    if name not in dispatch.IMPLS:
        raise ValueError(f"config.model.kernels={name!r} is not one of {dispatch.IMPLS}.")
    return name


def model_spec(model: ml_collections.ConfigDict, target_size: int = 0):
    """The architecture ``config.model`` names; ``target_size`` is the pretraining head's
    output per token (0: no pretraining head)."""
    common = {
        "image_size": model.image_size,
        "num_frames": model.get("num_frames", 1),
        "num_classes": model.get("num_classes", 0),
        "target_size": target_size,
    }
    if model.name == "vit":
        return vit.make_spec(
            model.variant,
            width=model.get("width"),
            depth=model.get("depth"),
            num_heads=model.get("num_heads"),
            mlp_dim=model.get("mlp_dim"),
            **common,
        )
    if model.name == "mvit":
        return mvit.make_spec(
            model.variant,
            embed_dim=model.get("embed_dim"),
            num_heads=model.get("num_heads"),
            depth=model.get("depth"),
            stage_starts=model.get("stage_starts"),
            **common,
        )
    raise ValueError(f"Unknown config.model.name={model.name!r}; choose one of {FAMILIES}.")


def from_config(
    model: ml_collections.ConfigDict, rngs: nnx.Rngs, *, target_size: int
) -> nnx.Module:
    """The model ``config.model`` describes, with a pretraining head of ``target_size``
    outputs per token (0 for none: fine-tuning, or an encoder alone)."""
    spec = model_spec(model, target_size)
    kwargs = {
        "dtype": compute_dtype(model.get("dtype", "float32")),
        "remat": model.get("remat", False),
        "drop_path_rate": float(model.get("drop_path_rate", 0.0) or 0.0),
        "kernels": kernels(model.get("kernels", "auto")),
        "rngs": rngs,
    }
    if model.name == "mvit":
        return mvit.MViT(spec, **kwargs)
    return vit.ViT(spec, scan=model.get("scan", False), **kwargs)


def transfer_params(spec, flat, template):
    """Source params (flat) shaped for a model with ``spec`` whose flat params are
    ``template``; see ``vit.transfer_params`` / ``mvit.transfer_params``."""
    if isinstance(spec, mvit.MViTSpec):
        return mvit.transfer_params(flat, template)
    return vit.transfer_params(flat, template, spec.grid)
