"""The one backend switch behind every op in ``maskfeat_jax.ops``.

Each op has a reference form (the plain JAX formula, which accelerators run) and a tuned
form (written for XLA's CPU backend, or for every backend where that is stated). An op
calls ``select`` once; ``select`` picks the form, normally per platform at lowering time.

``implementation`` overrides the choice while a function is traced, so tests can run
either form on any machine. Its value is part of jit's cache key (a JAX user context), so a
function jitted under one choice is traced again under another.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import Literal

import jax

Impl = Literal["auto", "reference", "tuned"]
IMPLS: tuple[str, ...] = ("auto", "reference", "tuned")

_IMPL = jax.make_user_context(default_value="auto")


@contextlib.contextmanager
def implementation(impl: Impl):
    """Within this context every op traces its ``impl`` form: 'reference', 'tuned', or
    'auto' (the per-backend choice)."""
    if impl not in IMPLS:
        raise ValueError(f"impl={impl!r} is not one of {IMPLS}.")
    with _IMPL(impl):
        yield


def select(*args, tuned: Callable, reference: Callable, tuned_on: str | None = "cpu"):
    """``tuned(*args)`` on the platform ``tuned_on`` (every platform when None),
    ``reference(*args)`` elsewhere; ``implementation`` overrides both."""
    impl = _IMPL.value
    if impl == "reference":
        return reference(*args)
    if impl == "tuned" or tuned_on is None:
        return tuned(*args)
    return jax.lax.platform_dependent(*args, **{tuned_on: tuned}, default=reference)
