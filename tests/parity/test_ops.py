"""What the tuned op forms promise against PyTorch: max-pool gradients to the first maximum,
and exact GELU."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import ops
from maskfeat_jax.ops import activations, pooling
from tests.support.op_forms import tuned_and_reference


@pytest.mark.parametrize("kernel,stride", [((3, 3, 3), (2, 2, 2))])
def test_tuned_max_pool_gradient_goes_to_the_first_maximum_as_pytorch(kernel, stride):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(0)
    # small integers: many windows hold their maximum more than once; PyTorch gives the
    # gradient to the first in scan order, and so must we
    x = rng.integers(0, 3, size=(2, 4, 10, 10, 6)).astype(np.float64)
    g = rng.normal(size=(2, *[-(-n // s) for n, s in zip(x.shape[1:4], stride)], 6))
    with jax.enable_x64(True):
        forms = tuned_and_reference(lambda x: pooling.max_pool(x, kernel, stride), [jnp.asarray(x)], g)
        out, (dx,) = forms["tuned"]
    xt = torch.from_numpy(x.transpose(0, 4, 1, 2, 3)).requires_grad_(True)
    want = torch.nn.functional.max_pool3d(xt, kernel, stride, [k // 2 for k in kernel])
    want.backward(torch.from_numpy(g.transpose(0, 4, 1, 2, 3)))
    np.testing.assert_array_equal(np.asarray(out), want.detach().numpy().transpose(0, 2, 3, 4, 1))
    np.testing.assert_allclose(
        np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 4, 1), atol=1e-12, rtol=0
    )


def test_gelu_is_pytorchs_exact_gelu():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(1)
    for impl in ("tuned", "reference"):
        with jax.enable_x64(True), ops.implementation(impl):
            x = jnp.asarray(rng.standard_normal(1000) * 4)
            ref = torch.nn.functional.gelu(torch.from_numpy(np.asarray(x))).numpy()
            np.testing.assert_allclose(activations.gelu(x), ref, rtol=0, atol=1e-14)
        with ops.implementation(impl):
            x32 = jnp.asarray(rng.standard_normal(1000) * 4, jnp.float32)
            ref32 = torch.nn.functional.gelu(torch.from_numpy(np.asarray(x32))).numpy()
            np.testing.assert_allclose(activations.gelu(x32), ref32, rtol=0, atol=2e-6)
