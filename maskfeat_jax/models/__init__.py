"""Model families by name; ``build_model`` turns ``config.model`` into an NNX module."""

from __future__ import annotations

import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskfeat_jax.models import vit

FAMILIES = ("vit",)
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float64": jnp.float64}


def compute_dtype(name: str):
    if name not in _DTYPES:
        raise ValueError(f"config.model.dtype={name!r} is not one of {sorted(_DTYPES)}.")
    return _DTYPES[name]


def model_spec(model: ml_collections.ConfigDict, target_dim: int = 108):
    if model.name == "vit":
        return vit.make_spec(
            model.variant,
            image_size=model.image_size,
            num_frames=model.get("num_frames", 1),
            num_classes=model.get("num_classes", 0),
            width=model.get("width"),
            depth=model.get("depth"),
            num_heads=model.get("num_heads"),
            mlp_dim=model.get("mlp_dim"),
            target_dim=target_dim,
        )
    raise ValueError(f"Unknown config.model.name={model.name!r}; choose one of {FAMILIES}.")


def build_model(
    model: ml_collections.ConfigDict, rngs: nnx.Rngs, target_dim: int = 108
) -> nnx.Module:
    spec = model_spec(model, target_dim)
    return vit.ViT(
        spec,
        dtype=compute_dtype(model.get("dtype", "float32")),
        scan=model.get("scan", False),
        remat=model.get("remat", False),
        rngs=rngs,
    )
