"""Building blocks shared by the ViT and MViT families.

Every parameter carries its logical axis names in the variable metadata key ``axes``
(e.g. ``("embed", "mlp")``). ``maskfeat_jax.sharding`` maps those names to mesh axes
through the rule table in the config. We use our own key rather than Flax's
``out_sharding`` so that a model can be built (and tested) without a mesh in context;
sharding is decided once, when the state is placed on the mesh.

Initialisation follows SlowFast's MViT/ViT (``_init_weights``): Linear and Conv
weights N(0, 0.02) (PyTorch truncates at +-2 absolute, i.e. effectively never),
Linear bias 0.02, LayerNorm weight 1 and bias 0.02.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

AXES_KEY = "axes"
LN_EPS = 1e-6

Dtype = Any


def weight_init(stddev: float = 0.02):
    # +-2 in absolute units, as torch.nn.init.trunc_normal_(std=.02) does.
    bound = 2.0 / stddev
    return jax.nn.initializers.truncated_normal(stddev, lower=-bound, upper=bound)


def with_axes(init, axes: Sequence[str | None]):
    """Attaches logical axis names to an initializer's variable."""
    return nnx.with_metadata(init, **{AXES_KEY: tuple(axes)})


def dense(
    in_features: int,
    out_features: int,
    axes: tuple[str | None, str | None],
    *,
    dtype: Dtype,
    rngs: nnx.Rngs,
    bias_init: float = 0.02,
    stddev: float = 0.02,
) -> nnx.Linear:
    """Linear layer with the reference init and logical axis names (kernel [in, out])."""
    return nnx.Linear(
        in_features,
        out_features,
        kernel_init=with_axes(weight_init(stddev), axes),
        bias_init=with_axes(jax.nn.initializers.constant(bias_init), axes[1:]),
        dtype=dtype,
        param_dtype=jnp.float32,
        precision=None,
        rngs=rngs,
    )


def layer_norm(
    dim: int, *, dtype: Dtype, rngs: nnx.Rngs, bias_init: float = 0.02, axis_name: str = "norm"
) -> nnx.LayerNorm:
    """LayerNorm with eps 1e-6; two-pass variance for tight parity with PyTorch."""
    return nnx.LayerNorm(
        dim,
        epsilon=LN_EPS,
        use_fast_variance=False,
        scale_init=with_axes(jax.nn.initializers.ones, (axis_name,)),
        bias_init=with_axes(jax.nn.initializers.constant(bias_init), (axis_name,)),
        dtype=dtype,
        param_dtype=jnp.float32,
        rngs=rngs,
    )


def gelu(x: jax.Array) -> jax.Array:
    # Exact erf GELU as in PyTorch's nn.GELU(); jax.nn.gelu defaults to tanh.
    return jax.nn.gelu(x, approximate=False)


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2 (SlowFast/timm ``mlp.fc1`` / ``mlp.fc2``)."""

    def __init__(
        self, dim: int, hidden: int, out_dim: int | None = None, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, out_dim or dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(gelu(self.fc1(x)))


def at_least_f32(x: jax.Array) -> jax.Array:
    """Upcasts bfloat16/float16 to float32; leaves float32 and float64 alone."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def attention_weights(q: jax.Array, k: jax.Array, scale: float) -> jax.Array:
    """softmax((q * scale) @ k^T) with the softmax in at least float32.

    q, k: [B, heads, N, head_dim] -> [B, heads, Nq, Nk].
    """
    logits = jnp.einsum("bhqd,bhkd->bhqk", q * jnp.asarray(scale, q.dtype), k)
    return jax.nn.softmax(at_least_f32(logits), axis=-1)


def split_heads(qkv: jax.Array, num_heads: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """[B, N, 3*D] with channel index s*D + h*hd + d -> three [B, heads, N, hd]."""
    b, n, three_d = qkv.shape
    hd = three_d // (3 * num_heads)
    qkv = qkv.reshape(b, n, 3, num_heads, hd).transpose(2, 0, 3, 1, 4)
    return qkv[0], qkv[1], qkv[2]


def merge_heads(x: jax.Array) -> jax.Array:
    """[B, heads, N, hd] -> [B, N, heads*hd] (head-major channels, as PyTorch)."""
    b, h, n, d = x.shape
    return x.transpose(0, 2, 1, 3).reshape(b, n, h * d)
