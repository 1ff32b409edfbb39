"""Both forms of an op, each traced afresh in its own implementation context."""

import jax

from maskfeat_jax import ops


def tuned_and_reference(fn, args, cotangent=None):
    """{impl: (output, gradients or None)} for the tuned and the reference form. Each form
    is traced afresh inside its context (the choice is made at trace time)."""

    def run(*args):
        if cotangent is None:
            return fn(*args), None
        out, pull = jax.vjp(fn, *args)
        return out, pull(cotangent)

    results = {}
    for impl in ("tuned", "reference"):
        with ops.implementation(impl):
            results[impl] = jax.jit(lambda *a: run(*a))(*args)
    return results
