"""Fusion fences: identities that make XLA compute a value into memory once.

XLA's CPU compiler fuses an elementwise producer into each of its consumers, which re-derives
the value per read: once per window element of a pooling gradient, say, or once per
consumer of the residual stream's gradient in every block below. ``materialize`` stops that
on the CPU; ``materialize_gradient`` does it for the gradient flowing back through a value.
Both are plain identities elsewhere (the reference form).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskfeat_jax.ops import dispatch


def _fence(x: jax.Array) -> jax.Array:
    # A conditional whose predicate XLA cannot fold: its operand and result are buffers, so
    # nothing fuses across it. (XLA's CPU pipeline expands optimization_barrier before
    # fusion, so a barrier does not do this.) The predicate is true for every bit pattern.
    bits = jax.lax.bitcast_convert_type(x.reshape(-1)[:1].astype(jnp.float32), jnp.int32)
    return jax.lax.cond((bits[0] | 1) != 0, lambda v: v, jnp.zeros_like, x)


def materialize_reference(x: jax.Array) -> jax.Array:
    return x


def materialize(x: jax.Array) -> jax.Array:
    """Identity that, on the CPU, makes XLA compute x into memory once instead of fusing
    its producers into every consumer."""
    return dispatch.select(x, tuned=_fence, reference=materialize_reference)


@jax.custom_vjp
def _materialize_gradient(x: jax.Array) -> jax.Array:
    return x


_materialize_gradient.defvjp(lambda x: (x, None), lambda _, g: (materialize(g),))


def materialize_gradient_reference(x: jax.Array) -> jax.Array:
    return x


def materialize_gradient(x: jax.Array) -> jax.Array:
    """Identity whose backward pass materializes the incoming gradient (on the CPU; see
    ``materialize``)."""
    return dispatch.select(
        x, tuned=_materialize_gradient, reference=materialize_gradient_reference, tuned_on=None
    )
