"""Shared layer pieces with CPU-specific forms: the patch convolution as one matmul, the
materialisation fence, and the pooling-skip max pool with its own backward."""

import re

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from maskfeat_jax.models import layers, mvit


@pytest.mark.parametrize(
    "kernel,stride,padding,shape",
    [
        ((3, 7, 7), (2, 4, 4), [(1, 1), (3, 3), (3, 3)], (2, 8, 24, 24, 3)),  # MViT video
        ((1, 7, 7), (1, 4, 4), [(0, 0), (3, 3), (3, 3)], (2, 1, 20, 20, 3)),  # MViT image
        ((2, 4, 4), (2, 4, 4), [(0, 0)] * 3, (2, 4, 16, 16, 3)),  # ViT tubelet
        ((4, 4), (4, 4), [(0, 0)] * 2, (2, 18, 16, 3)),  # ViT image, ragged edge dropped
    ],
)
def test_patch_conv_equals_the_convolution_with_gradients(kernel, stride, padding, shape):
    with jax.enable_x64(True):
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


def test_materialize_is_the_identity_and_stops_fusion_on_the_cpu():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
    np.testing.assert_array_equal(layers.materialize(x), x)
    np.testing.assert_array_equal(layers.materialize(x.astype(jnp.int8)), x.astype(jnp.int8))
    g = jax.grad(lambda x: jnp.sum(jnp.sin(layers.materialize_gradient(x))))(x)
    np.testing.assert_allclose(g, jnp.cos(x), rtol=1e-6)

    def spread(x, fence):
        y = fence(jnp.sin(x) * jnp.exp(x))
        return sum(jnp.pad(y, ((i, 4 - i), (0, 0))) for i in range(5))

    def entry(fence):
        text = jax.jit(lambda x: spread(x, fence)).lower(x).compile().as_text()
        return text.split("ENTRY")[1]

    if jax.default_backend() == "cpu":
        # Without the fence XLA fuses sin*exp into the five-way sum (evaluating it five
        # times per element); with it, the product is computed once, before a conditional.
        assert not re.search(r" conditional\(", entry(lambda y: y))
        assert re.search(r" conditional\(", entry(layers.materialize))


@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2)), ((3, 3, 3), (2, 2, 2))])
def test_cpu_max_pool_and_its_gradient_equal_pytorch_even_with_ties(kernel, stride):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    # small integers: many windows hold their maximum more than once; PyTorch gives the
    # gradient to the first in scan order, and so must we
    x = rng.integers(0, 3, size=(2, 4, 10, 10, 6)).astype(np.float64)
    g = rng.normal(size=(2, *[-(-n // s) for n, s in zip(x.shape[1:4], stride)], 6))
    with jax.enable_x64(True):
        out, vjp = jax.vjp(lambda x: mvit._max_pool_shifts(x, kernel, stride), jnp.asarray(x))
        (dx,) = vjp(jnp.asarray(g))
    xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3)).requires_grad_(True)
    want = torch.nn.functional.max_pool3d(xt, kernel, stride, [k // 2 for k in kernel])
    want.backward(torch.from_numpy(g.transpose(0, 4, 1, 2, 3)))
    np.testing.assert_array_equal(np.asarray(out), want.detach().numpy().transpose(0, 2, 3, 4, 1))
    np.testing.assert_allclose(
        np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 4, 1), atol=1e-12, rtol=0
    )
