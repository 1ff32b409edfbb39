"""A small MViTv2 with random weights, and a forward pass of it."""

import jax.numpy as jnp
from flax import nnx

from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import mvit
from tests.support.random_models import random_params


def small_spec(**kw):
    # 8 frames at 64 px: 4x16x16 input tokens, q-pooled to 8x8 and 4x4; the last stage start
    # keeps 4x4 in the pretraining form (16-px output tokens, like the full model).
    base = {"embed_dim": 16, "num_heads": 1, "depth": 4, "stage_starts": (1, 2, 3)}
    base.update(num_frames=8, image_size=64)
    base.update(kw)
    return mvit.make_spec("MViTv2-S", **base)


def build(spec, seed=0, dtype=jnp.float32, **kw):
    """A model with random parameters, without compiling the initializers (slow on CPU)."""
    model = nnx.eval_shape(lambda: mvit.MViT(spec, dtype=dtype, rngs=nnx.Rngs(0), **kw))
    torch_names.load_flat_params(model, random_params(torch_names.flat_params(model), seed))
    return model


@nnx.jit
def apply(model, x, mask=None):
    return model(x, mask)
