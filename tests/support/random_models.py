"""Models with random parameters, built without compiling their initializers."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import mvit, vit


def random_params(template, seed=0):
    """Random values for every abstract entry of a flat template (LayerNorm scales near 1)."""
    rng = np.random.default_rng(seed)
    out = {}
    for key, like in template.items():
        if isinstance(like, jax.ShapeDtypeStruct):
            like = rng.normal(0.0, 0.1, like.shape) + key.endswith("scale")
        out[key] = np.asarray(like)
    return out


def random_model(spec, seed=0, dtype=jnp.float32, **kw):
    """A ViT or MViT (by the spec's type) with random parameters in ``dtype``'s precision
    (float64 parameters for float64 parity checks)."""
    cls = mvit.MViT if isinstance(spec, mvit.MViTSpec) else vit.ViT
    model = nnx.eval_shape(lambda: cls(spec, dtype=dtype, rngs=nnx.Rngs(0), **kw))
    params = random_params(torch_names.flat_params(model), seed)
    param_dtype = jnp.float64 if dtype == jnp.float64 else None
    torch_names.load_flat_params(model, params, dtype=param_dtype)
    return model


# Compiled forward passes: a small MViT's forward runs op by op in about 30 s on this CPU and
# compiled in about 4 s. Traced under the caller's precision (inside ``jax.enable_x64`` too).
forward = nnx.jit(lambda model, *inputs: model(*inputs))
encode = nnx.jit(lambda model, x: model.encode(x))
