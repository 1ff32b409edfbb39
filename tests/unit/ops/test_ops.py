"""Every tuned op form equals its reference form: float32 outputs, float64 gradients; the
implementation switch; the CPU fusion fence."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import ops
from maskfeat_jax.ops import activations, attention, fusion, linear, pooling
from tests.support.op_forms import tuned_and_reference


def _check(fn, shapes, cotangent_shape, *, atol32=1e-5, atol64=1e-11, seed=0):
    """Tuned vs reference on random inputs of ``shapes``: outputs in float32, outputs and
    gradients in float64."""
    rng = np.random.default_rng(seed)
    values = [rng.normal(size=s) for s in shapes]
    g = rng.normal(size=cotangent_shape)
    forms = tuned_and_reference(fn, [jnp.asarray(v, jnp.float32) for v in values])
    np.testing.assert_allclose(forms["tuned"][0], forms["reference"][0], atol=atol32, rtol=1e-5)
    assert forms["tuned"][0].dtype == forms["reference"][0].dtype == jnp.float32
    with jax.enable_x64(True):
        forms = tuned_and_reference(fn, [jnp.asarray(v) for v in values], jnp.asarray(g))
        (out, grads), (want, want_grads) = forms["tuned"], forms["reference"]
        np.testing.assert_allclose(out, want, atol=atol64, rtol=0)
        for got, ref in zip(grads, want_grads, strict=True):
            assert got.dtype == jnp.float64
            np.testing.assert_allclose(got, ref, atol=atol64, rtol=0)


def test_implementation_is_checked_and_restored():
    with pytest.raises(ValueError, match="not one of"), ops.implementation("fast"):
        pass
    x = jnp.ones((4, 4))
    with ops.implementation("reference"):
        with ops.implementation("tuned"):
            assert "cond" in str(jax.make_jaxpr(fusion.materialize)(x))
        assert "cond" not in str(jax.make_jaxpr(fusion.materialize)(x))
    # auto: both forms are in the jaxpr, the platform picks one when lowering
    assert "platform_index" in str(jax.make_jaxpr(fusion.materialize)(x))


@pytest.mark.parametrize("features", [(8, 3), (3, 8)])  # both weight-gradient layouts
def test_dot_general(features):
    dims = (((2,), (0,)), ((), ()))
    _check(
        lambda x, w: linear.dot_general(x, w, dims),
        [(2, 5, features[0]), features],
        (2, 5, features[1]),
    )


@pytest.mark.parametrize(
    "kernel,stride,padding,shape",
    [
        # overlapping and padded like MViT video, with fewer windows to compile
        ((3, 3, 5), (2, 2, 4), [(1, 1), (1, 1), (2, 2)], (1, 4, 10, 16, 3)),
        ((1, 7, 7), (1, 4, 4), [(0, 0), (3, 3), (3, 3)], (1, 1, 20, 20, 3)),  # MViT image
        ((2, 4, 4), (2, 4, 4), [(0, 0)] * 3, (2, 4, 16, 16, 3)),  # ViT tubelet
        ((4, 4), (4, 4), [(0, 0)] * 2, (2, 18, 16, 3)),  # ViT image, ragged edge dropped
    ],
)
def test_patch_embed(kernel, stride, padding, shape):
    spatial = shape[1:-1]
    out = [(n + sum(p) - k) // s + 1 for n, p, k, s in zip(spatial, padding, kernel, stride)]
    _check(
        lambda x, w, b: linear.patch_embed(x, w, b, stride, padding),
        [shape, (*kernel, 3, 5), (5,)],
        (shape[0], *out, 5),
    )


@pytest.mark.parametrize(
    "stride,batch",
    [((1, 1, 1), 3), ((1, 8, 8), 3), ((2, 2, 2), 3), ((1, 2, 2), 33)],
)
def test_depthwise_conv(stride, batch):
    # batch 33 x 2 frames sums more (batch, frame) terms than the unrolled weight gradient
    # takes, so it checks the reduction fallback too.
    out = [-(-n // s) for n, s in zip((2, 8, 8), stride)]
    _check(
        lambda x, w: pooling.depthwise_conv(x, w, stride),
        [(batch, 2, 8, 8, 4), (3, 3, 3, 1, 4)],
        (batch, *out, 4),
    )


@pytest.mark.parametrize("kernel,stride", [((1, 3, 3), (1, 2, 2))])  # MViT's skip pooling
def test_max_pool(kernel, stride):
    out = [-(-n // s) for n, s in zip((4, 10, 10), stride)]
    _check(
        lambda x: pooling.max_pool(x, kernel, stride),
        [(2, 4, 10, 10, 6)],
        (2, *out, 6),
        atol32=0,
    )


def test_attend():
    _check(attention.attend, [(2, 3, 7, 4), (2, 3, 5, 4), (2, 3, 5, 6)], (2, 3, 7, 6))


def test_gelu():
    _check(lambda x: activations.gelu(4 * x), [(1000,)], (1000,), atol64=1e-13)


@pytest.mark.parametrize("op", [fusion.materialize, fusion.materialize_gradient])
def test_fences_are_identities(op):
    _check(lambda x: jnp.sin(op(jnp.exp(x))), [(64, 32)], (64, 32), atol32=0, atol64=0)


def test_materialize_stops_fusion_on_the_cpu():
    x = jnp.asarray(np.random.default_rng(0).normal(size=(64, 32)), jnp.float32)
    np.testing.assert_array_equal(fusion.materialize(x.astype(jnp.int8)), x.astype(jnp.int8))

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
        assert re.search(r" conditional\(", entry(fusion.materialize))
