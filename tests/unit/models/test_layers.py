"""Shared layer pieces: the patch convolution through ``ops.linear.patch_embed``, the ops
every Linear uses, and the heads a model gets from its spec. (The ops' tuned forms against
their references: test_ops.py.)"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import ops
from maskfeat_jax.models import layers, vit
from maskfeat_jax.ops import linear


@pytest.mark.parametrize(
    "kernel,stride,padding,shape",
    [
        ((3, 7, 7), (2, 4, 4), [(1, 1), (3, 3), (3, 3)], (2, 8, 24, 24, 3)),  # MViT video
        ((4, 4), (4, 4), [(0, 0)] * 2, (2, 18, 16, 3)),  # ViT image, ragged edge dropped
    ],
)
def test_patch_conv_equals_the_convolution_module_with_gradients(kernel, stride, padding, shape):
    with jax.enable_x64(True), ops.implementation("reference"):
        conv = nnx.Conv(
            3, 5, kernel_size=kernel, strides=stride, padding=padding,
            dtype=jnp.float64, param_dtype=jnp.float64, rngs=nnx.Rngs(0),
        )  # fmt: skip
        x = jnp.asarray(np.random.default_rng(0).normal(size=shape))
        want = conv(x)
        got = layers.patch_conv(conv, x)
        assert got.shape == want.shape
        np.testing.assert_allclose(got, want, atol=1e-12, rtol=0)

        def loss(apply, c, x):
            return jnp.sum(jnp.sin(apply(c, x)))

        ref = nnx.grad(lambda c, x: loss(lambda c, x: c(x), c, x), argnums=(0, 1))(conv, x)
        ours = nnx.grad(lambda c, x: loss(layers.patch_conv, c, x), argnums=(0, 1))(conv, x)
        np.testing.assert_allclose(ours[1], ref[1], atol=1e-11, rtol=0)
        for name in ("kernel", "bias"):
            np.testing.assert_allclose(
                getattr(ours[0], name)[...], getattr(ref[0], name)[...], atol=1e-10, rtol=0
            )


def test_every_linear_projects_through_the_ops():
    spec = vit.make_spec("Ti/16", image_size=32, depth=1)
    model = nnx.eval_shape(lambda: vit.ViT(spec, rngs=nnx.Rngs(0)))
    for dense in (model.blocks[0].mlp.fc1, model.blocks[0].attn.qkv, model.pred_head.proj):
        assert dense.dot_general is linear.dot_general


def test_target_size_zero_leaves_an_encoder_without_a_pretraining_head():
    spec = vit.make_spec("Ti/16", image_size=32, depth=1, target_size=0)
    model = nnx.eval_shape(lambda: vit.ViT(spec, rngs=nnx.Rngs(0)))
    assert not hasattr(model, "pred_head") and not hasattr(model, "mask_token")
    x = jnp.zeros((2, 32, 32, 3))
    assert nnx.eval_shape(lambda m: m.features(x), model).shape == (2, 192)
    with pytest.raises(ValueError, match="has no head"):
        nnx.eval_shape(lambda m: m(x), model)
    with pytest.raises(ValueError, match="target_size 0. has no mask token"):
        nnx.eval_shape(lambda m: m.encode(x, jnp.zeros((2, 4), bool)), model)


def test_blocks_built_under_a_trace_get_a_frame_each_and_the_same_parameters():
    spec = vit.make_spec("B/16", image_size=32, width=32, depth=3, num_heads=2, mlp_dim=64)

    def build():
        return nnx.state(vit.ViT(spec, rngs=nnx.Rngs(0)), nnx.Param)

    # One nested jit per block in the traced build (each block's rng advances walk only its
    # own frame), none eagerly.
    jaxpr = jax.make_jaxpr(build)()
    nested = [e for e in jaxpr.eqns if e.params.get("name") == "block"]
    assert len(nested) == spec.depth
    # The same keys in the same order (compiled and eager initializers differ in the last bit).
    eager = build()
    traced = jax.jit(build)()
    for (path, a), (_, b) in zip(nnx.to_flat_state(eager), nnx.to_flat_state(traced)):
        np.testing.assert_allclose(a[...], b[...], rtol=1e-5, atol=1e-8, err_msg=str(path))
