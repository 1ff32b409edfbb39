"""Scaled dot-product attention core: softmax(q @ k^T) @ v over [B, heads, N, d].

q comes already scaled, and a logit bias can ride in extra q/k channels; the softmax runs
in at least float32. The reference is that formula under autodiff. The tuned form (on
every backend) writes the backward out so that the two matmuls that contract over the
query axis produce dk^T and dv^T ('bhqd,bhqk->bhdk'): XLA's CPU backend otherwise copies
the [Nq, Nk] matrices transposed or runs those matmuls markedly slower.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from maskfeat_jax.ops import dispatch


def _at_least_f32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _weights(q, k, dtype):
    logits = jnp.einsum("bhqd,bhkd->bhqk", q, k)
    return jax.nn.softmax(_at_least_f32(logits), axis=-1).astype(dtype)


def attend_reference(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    return jnp.einsum("bhqk,bhkd->bhqd", _weights(q, k, v.dtype), v)


@jax.custom_vjp
def _attend(q, k, v):
    return _attend_fwd(q, k, v)[0]


def _attend_fwd(q, k, v):
    weights = _weights(q, k, v.dtype)
    return jnp.einsum("bhqk,bhkd->bhqd", weights, v), (q, k, v, weights)


def _attend_bwd(residuals, g):
    q, k, v, weights = residuals
    p = _at_least_f32(weights)
    dp = _at_least_f32(jnp.einsum("bhqd,bhkd->bhqk", g, v))
    dlogits = (p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))).astype(q.dtype)
    dq = jnp.einsum("bhqk,bhkd->bhqd", dlogits, k)
    dk = jnp.swapaxes(jnp.einsum("bhqd,bhqk->bhdk", q, dlogits), -1, -2)
    dv = jnp.swapaxes(jnp.einsum("bhqd,bhqk->bhdk", g, weights), -1, -2)
    return dq, dk, dv


_attend.defvjp(_attend_fwd, _attend_bwd)


def attend(q: jax.Array, k: jax.Array, v: jax.Array) -> jax.Array:
    """softmax(q @ k^T) @ v: [B, heads, Nq, d] x [B, heads, Nk, d] x [B, heads, Nk, dv]."""
    return dispatch.select(q, k, v, tuned=_attend, reference=attend_reference, tuned_on=None)
