"""Building blocks shared by the ViT and MViT families.

Every parameter carries its logical axis names in the variable metadata key ``axes``
(e.g. ``("embed", "mlp")``). ``maskfeat_jax.sharding`` maps those names to mesh axes
through the rule table in the config. We use our own key rather than Flax's
``out_sharding`` so that a model can be built (and tested) without a mesh in context;
sharding is decided once, when the state is placed on the mesh.

Initialization follows SlowFast's MViT/ViT (``_init_weights``): Linear and Conv
weights N(0, 0.02) (PyTorch truncates at +-2 absolute, i.e. effectively never),
Linear bias 0.02, LayerNorm weight 1 and bias 0.02.

The backend-specific forms of the computations (projections, GELU, attention, pooling,
fusion fences) live in ``maskfeat_jax.ops``.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from maskfeat_jax.ops import activations, dispatch, linear

AXES_KEY = "axes"
LN_EPS = 1e-6

Dtype = Any


def weight_init(stddev: float = 0.02):
    # torch.nn.init.trunc_normal_(std=.02) truncates at +-2 in absolute units, i.e. at 100
    # standard deviations: never. A plain normal is the same distribution and much cheaper
    # to trace than a truncated one (which matters for 48-block models).
    return jax.nn.initializers.normal(stddev)


def with_axes(init, axes: Sequence[str | None]):
    """Attaches logical axis names to an initializer's variable."""
    return nnx.with_metadata(init, **{AXES_KEY: tuple(axes)})


def patch_conv(conv: nnx.Conv, x: jax.Array) -> jax.Array:
    """``conv(x)`` for a patch-embedding convolution (explicit padding, no dilation or
    groups), through ``ops.linear.patch_embed``."""
    dtype = conv.dtype
    bias = None if conv.bias is None else conv.bias[...].astype(dtype)
    kernel = conv.kernel[...].astype(dtype)
    return linear.patch_embed(x.astype(dtype), kernel, bias, conv.strides, conv.padding)


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
        dot_general=linear.dot_general,
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


_ACTIVATION_SHARDING = contextvars.ContextVar("activation_sharding", default=None)


@contextlib.contextmanager
def activations_sharded(sharding):
    """While a step is traced in this context, ``shard_batch`` pins activations to
    ``sharding`` (examples split over the batch mesh axes). Without the pins XLA may gather
    the whole global batch of images onto every chip around the FSDP-sharded patch
    embedding, rather than gathering the small kernel."""
    token = _ACTIVATION_SHARDING.set(sharding)
    try:
        yield
    finally:
        _ACTIVATION_SHARDING.reset(token)


def shard_batch(x: jax.Array) -> jax.Array:
    """``x`` [B, ...] constrained to the batch sharding of ``activations_sharded`` (if any)."""
    sharding = _ACTIVATION_SHARDING.get()
    return x if sharding is None else jax.lax.with_sharding_constraint(x, sharding)


def drop_path(x: jax.Array, rate, key: jax.Array | None) -> jax.Array:
    """Stochastic depth: zeroes a residual branch for a random ``rate`` fraction of the examples
    and scales the rest by 1/(1 - rate) (timm ``DropPath``). No key (evaluation) or a rate of 0
    leaves ``x`` unchanged. ``rate`` may be traced (the scanned ViT carries one per layer)."""
    if key is None or (isinstance(rate, (int, float)) and rate == 0):
        return x
    keep = 1.0 - jnp.asarray(rate, jnp.float32)
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    kept = jax.random.bernoulli(key, keep, shape)
    return jnp.where(kept, x / keep.astype(x.dtype), jnp.zeros((), x.dtype))


def build_blocks(make: Callable[[Any, nnx.Rngs], nnx.Module], specs: Sequence, rngs: nnx.Rngs):
    """``[make(s, rngs) for s in specs]``; under a trace (``nnx.eval_shape``, a jitted init)
    each block is traced in a frame of its own. Flax advances an rng count once per parameter,
    and under a trace each advance walks the whole frame being traced (building an error
    message for the tracer's missing ``sharding``), so one frame for all blocks makes a deep
    model's build quadratic in depth: MViTv2-L's abstract build took 21 s of CPU, 3 s with a
    frame per block. The same keys in the same order: the parameters are unchanged. Built
    eagerly, blocks are made in place (a jit per block would compile each initializer)."""
    if not isinstance(rngs.params.key.get_value(), jax.core.Tracer):
        return [make(s, rngs) for s in specs]
    blocks = []
    for s in specs:

        def block(r: nnx.Rngs, s=s) -> nnx.Module:
            return make(s, r)

        blocks.append(nnx.jit(block)(rngs))
    return blocks


def drop_path_rates(rate: float, depth: int) -> list[float]:
    """Per-block rates rising linearly from 0 to ``rate`` (timm / SlowFast ``dpr``)."""
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"drop_path_rate must be in [0, 1), got {rate}.")
    if depth == 1:
        return [0.0]
    return [rate * i / (depth - 1) for i in range(depth)]


def block_keys(key: jax.Array | None, depth: int):
    """One key per block for its two drop-path draws (None when not training)."""
    if key is None:
        return [None] * depth
    return list(jax.random.split(key, depth))


class Mlp(nnx.Module):
    """fc1 -> exact GELU -> fc2 (SlowFast/timm ``mlp.fc1`` / ``mlp.fc2``)."""

    def __init__(
        self, dim: int, hidden: int, out_dim: int | None = None, *, dtype: Dtype, rngs: nnx.Rngs
    ):
        self.fc1 = dense(dim, hidden, ("embed", "mlp"), dtype=dtype, rngs=rngs)
        self.fc2 = dense(hidden, out_dim or dim, ("mlp", "embed"), dtype=dtype, rngs=rngs)

    def __call__(self, x: jax.Array) -> jax.Array:
        return self.fc2(activations.gelu(self.fc1(x)))


def at_least_f32(x: jax.Array) -> jax.Array:
    """Upcasts bfloat16/float16 to float32; leaves float32 and float64 alone."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


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


def conv_bias_init(fan_in: int, axis_name: str | None):
    """PyTorch's default Conv bias init U(-1/sqrt(fan_in), 1/sqrt(fan_in)); the reference
    leaves the patch-embedding bias at it."""
    bound = 1.0 / fan_in**0.5

    def init(key, shape, dtype=jnp.float32):
        return jax.random.uniform(key, shape, dtype, -bound, bound)

    return with_axes(init, (axis_name,))


def classifier(dim: int, num_classes: int, *, dtype: Dtype, rngs: nnx.Rngs) -> nnx.Linear:
    """Fine-tuning head at 1e-3 of the usual init (weight and bias), as the reference recipe."""
    return nnx.Linear(
        dim,
        num_classes,
        kernel_init=with_axes(
            lambda k, s, t=jnp.float32: weight_init()(k, s, t) * 1e-3, ("embed", "classes")
        ),
        bias_init=with_axes(jax.nn.initializers.zeros, ("classes",)),
        dtype=dtype,
        param_dtype=jnp.float32,
        dot_general=linear.dot_general,
        rngs=rngs,
    )


class PredictionHead(nnx.Module):
    """MaskFeat's head: LayerNorm -> Linear(width -> target_size), init LN 1/0, Linear bias 0
    (SlowFast ``pred_head.transforms.0.0`` / ``pred_head.projections.0``)."""

    def __init__(self, dim: int, out_dim: int, *, dtype: Dtype, rngs: nnx.Rngs):
        self.norm = layer_norm(dim, dtype=dtype, rngs=rngs, bias_init=0.0)
        self.proj = dense(dim, out_dim, ("embed", "target"), dtype=dtype, rngs=rngs, bias_init=0.0)

    def __call__(self, x: jax.Array) -> jax.Array:
        return at_least_f32(self.proj(self.norm(x)))


def with_kernels(method: Callable) -> Callable:
    """A model method traced with the op forms the model's ``kernels`` names ('auto' leaves
    the choice to the caller's ``ops.implementation``, per backend by default)."""

    @functools.wraps(method)
    def traced(self, *args, **kwargs):
        if self.kernels == "auto":
            return method(self, *args, **kwargs)
        with dispatch.implementation(self.kernels):
            return method(self, *args, **kwargs)

    return traced


class MaskFeatModel(nnx.Module):
    """What the ViT and MViT families share around their encoders: the input check, the
    mask-token replacement with cls in front, and the two readouts.

    A subclass sets ``spec`` (with ``image_size``, ``num_frames``, ``in_channels``,
    ``is_video``, ``token_grid``, ``num_classes``, ``target_size``), ``cls_token``, calls
    ``_init_heads`` and implements ``encode(x, mask) -> [B, 1+N, D]``."""

    name = "model"
    kernels = "auto"  # ops.dispatch: which form of each op the methods trace

    def _init_heads(self, token_dim: int, out_dim: int, *, dtype: Dtype, rngs: nnx.Rngs):
        """Fine-tuning: ``norm`` + ``head``; pretraining: ``mask_token`` + ``pred_head``;
        neither with ``num_classes`` and ``target_size`` both 0 (an encoder alone)."""
        if self.spec.num_classes:
            self.norm = layer_norm(out_dim, dtype=dtype, rngs=rngs)
            self.head = classifier(out_dim, self.spec.num_classes, dtype=dtype, rngs=rngs)
        elif self.spec.target_size:
            token_init = with_axes(weight_init(), (None, None, "embed"))
            self.mask_token = nnx.Param(token_init(rngs.params(), (1, 1, token_dim)))
            self.pred_head = PredictionHead(out_dim, self.spec.target_size, dtype=dtype, rngs=rngs)

    def _check_input(self, x: jax.Array) -> None:
        spec = self.spec
        s = spec.image_size
        frames = (spec.num_frames,) if spec.is_video else ()
        want = (*frames, s, s, spec.in_channels)
        if tuple(x.shape[1:]) != want:
            layout = "[B, T, H, W, C]" if spec.is_video else "[B, H, W, C]"
            raise ValueError(
                f"{self.name} expects input {layout} with per-example shape {want}, got "
                f"{tuple(x.shape)}. Check config.model.image_size / num_frames and the data."
            )

    def _mask_and_cls(self, tokens: jax.Array, mask: jax.Array | None) -> jax.Array:
        """Masked patch embeddings are *replaced* by ``mask_token``; then cls goes in front."""
        if mask is not None:
            if self.spec.num_classes or not self.spec.target_size:
                kind = "fine-tuning model (num_classes > 0)"
                if not self.spec.num_classes:
                    kind = "model without a pretraining head (target_size 0)"
                raise ValueError(f"A {kind} has no mask token; pass mask=None.")
            m = mask.reshape(mask.shape[0], -1, 1).astype(tokens.dtype)
            if m.shape[1] != tokens.shape[1]:
                raise ValueError(
                    f"mask has {m.shape[1]} entries per example but the input gives "
                    f"{tokens.shape[1]} tokens (grid {self.spec.token_grid}); upsample the "
                    "mask units to the input token grid first."
                )
            tokens = tokens * (1 - m) + self.mask_token[...].astype(tokens.dtype) * m
        cls = jnp.broadcast_to(
            self.cls_token[...].astype(tokens.dtype), (tokens.shape[0], 1, tokens.shape[-1])
        )
        return shard_batch(jnp.concatenate([cls, tokens], axis=1))

    @with_kernels
    def __call__(
        self, x: jax.Array, mask: jax.Array | None = None, *, key: jax.Array | None = None
    ) -> jax.Array:
        """Pretraining: per-output-token predictions [B, N_out, target_size] (float32), with
        ``mask`` the token mask on the *input* token grid. Fine-tuning: logits
        [B, num_classes] (float32) from mean-pooled patch tokens -> norm -> head. A ``key``
        (training) turns drop path on."""
        if not (self.spec.num_classes or self.spec.target_size):
            raise ValueError(
                f"This {self.name} has no head (num_classes and target_size are 0); use "
                "encode or features."
            )
        patches = self.encode(x, mask, key)[:, 1:]
        if self.spec.num_classes:
            return at_least_f32(self.head(self.norm(self.pool(patches))))
        return self.pred_head(patches)

    @with_kernels
    def features(self, x: jax.Array) -> jax.Array:
        """Frozen-encoder features for linear probing: mean of the last block's patch tokens
        (a pretrained encoder has no final norm), float32 [B, D]."""
        return at_least_f32(self.pool(self.encode(x)[:, 1:]))

    @staticmethod
    def pool(patches: jax.Array) -> jax.Array:
        return patches.mean(axis=1)
