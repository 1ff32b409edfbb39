"""The factor the optimizer's layer-decay stage applies to each parameter, by name."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from maskfeat_jax import optim


def flat(tree):
    return {
        optim._path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def multipliers(model, decay, depth):
    """The factor the optimizer's layer-decay stage applies to each parameter."""
    params = nnx.state(model, nnx.Param)
    ones = jax.tree.map(jnp.ones_like, params)
    scaled, _ = optim.scale_by_layer_decay(decay, depth).update(ones, None)
    return {k: np.asarray(v) for k, v in flat(scaled).items()}
