"""Exact (erf) GELU, as PyTorch's ``nn.GELU()``; ``jax.nn.gelu`` defaults to the tanh form.

The reference is ``jax.nn.gelu(approximate=False)``, which goes through erfc: XLA's CPU
backend evaluates that 2.5x slower than erf. The tuned form writes GELU with erf and its
backward by hand (x's CDF plus x times its density); it runs on every backend.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from maskfeat_jax.ops import dispatch


@jax.custom_vjp
def _gelu_erf(x: jax.Array) -> jax.Array:
    return x * _normal_cdf(x)


def _normal_cdf(x):
    return 0.5 + 0.5 * jax.lax.erf(x * jnp.asarray(2**-0.5, x.dtype))


def _gelu_fwd(x):
    return _gelu_erf(x), x


def _gelu_bwd(x, g):
    density = jnp.exp(-0.5 * x * x) * jnp.asarray((2 * math.pi) ** -0.5, x.dtype)
    return (g * (_normal_cdf(x) + x * density),)


_gelu_erf.defvjp(_gelu_fwd, _gelu_bwd)


def gelu_reference(x: jax.Array) -> jax.Array:
    return jax.nn.gelu(x, approximate=False)


def gelu(x: jax.Array) -> jax.Array:
    """x * Phi(x), Phi the standard normal CDF."""
    return dispatch.select(x, tuned=_gelu_erf, reference=gelu_reference, tuned_on=None)
