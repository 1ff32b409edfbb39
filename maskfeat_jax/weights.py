"""Flat weights into a model: the one loader behind ``init_from``, the linear probe and the
pictures of a checkpoint.

Weights travel as flat host dicts ``{'blocks/0/attn/qkv/kernel': array}`` (what
``checkpoint.load_weights`` and the PyTorch importer produce). ``assign`` writes them into a
model state in place, each array into its variable's sharding; with ``adapt`` they are first
shaped for this model's form (pretraining -> fine-tuning, resampled position tables, scanned
<-> per-layer blocks, ``models.transfer_params``), without it they must match exactly.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Mapping

import jax
import numpy as np
from flax import nnx

from maskfeat_jax import models


@dataclasses.dataclass(frozen=True)
class Assigned:
    loaded: int  # arrays of the model written from the source
    total: int  # arrays of the model
    unused: list[str]  # source entries the model has no place for
    kept: list[str]  # model arrays left at their current values


def flat_variables(model_state: nnx.State) -> dict[str, nnx.Variable]:
    """The model's variables by flat name."""
    return {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(model_state)}


def assign(
    model_state: nnx.State,
    source: Mapping[str, Any],
    spec: Any = None,
    *,
    adapt: bool = True,
    exclude: str | None = None,
) -> Assigned:
    """Writes ``source`` into ``model_state`` (its variables keep dtype and sharding).
    Entries whose name matches the regex ``exclude`` are left out (e.g. another target's
    head). ``adapt`` needs the model's ``spec``."""
    if exclude:
        source = {k: v for k, v in source.items() if not re.match(exclude, k)}
    current = flat_variables(model_state)
    if adapt:
        template = {k: np.asarray(jax.device_get(v.get_value())) for k, v in current.items()}
        params, unused, kept = models.transfer_params(spec, dict(source), template)
    else:
        missing = sorted(set(current) - set(source))
        if missing:
            raise ValueError(
                f"the weights lack {missing[:5]}{' ...' if len(missing) > 5 else ''} of the "
                "model; they were saved by another model form."
            )
        params, unused, kept = source, sorted(set(source) - set(current)), []
    for key, var in current.items():
        if key in kept:
            continue
        old = var.get_value()
        value = np.asarray(params[key], old.dtype)
        if value.shape != old.shape:
            raise ValueError(f"{key}: the weights are {value.shape}, the model {old.shape}.")
        var.set_value(jax.device_put(value, getattr(old, "sharding", None)))
    return Assigned(len(current) - len(kept), len(current), list(unused), list(kept))
