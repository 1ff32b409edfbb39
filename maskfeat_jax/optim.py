"""Optimizer assembly with optax: AdamW, weight-decay exemptions, clipping and the LR schedule.

Reference recipe (SlowFast solver): AdamW (0.9, 0.999), eps 1e-8, decoupled weight decay 0.05
exempting 1-D parameters and biases (``ZERO_WD_1D_PARAM``; cls/pos/mask tokens keep decay
since ``ZERO_DECAY_POS_CLS`` is False), global-norm clipping, linear warmup from
``warmup_start_lr`` then a half cosine to ``end_lr``, all three learning rates scaled
linearly by global_batch / lr_batch_reference.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import ml_collections
import optax

# Leaf names of 1-D parameters in our models: LayerNorm scale/bias and every bias.
_NO_DECAY_LEAVES = ("bias", "scale")


def lr_scale(optim: ml_collections.ConfigDict, global_batch: int) -> float:
    return global_batch / optim.lr_batch_reference


def learning_rate_schedule(
    optim: ml_collections.ConfigDict, *, global_batch: int, total_steps: int, warmup_steps: int
) -> optax.Schedule:
    if not 0 <= warmup_steps <= total_steps:
        raise ValueError(
            f"warmup ({warmup_steps} steps) must lie within the run ({total_steps} steps); "
            "lower config.optim.warmup_epochs or raise the number of epochs/steps."
        )
    scale = lr_scale(optim, global_batch)
    return optax.warmup_cosine_decay_schedule(
        init_value=optim.warmup_start_lr * scale,
        peak_value=optim.base_lr * scale,
        warmup_steps=warmup_steps,
        decay_steps=max(total_steps, 1),
        end_value=optim.end_lr * scale,
    )


def _path_name(path: tuple[Any, ...]) -> str:
    """'blocks/0/norm1/bias' from a tree path; attribute steps (an nnx Variable's ``.value``)
    are not part of the parameter's name."""
    parts = []
    for key in path:
        if isinstance(key, jax.tree_util.DictKey):
            parts.append(str(key.key))
        elif isinstance(key, jax.tree_util.SequenceKey):
            parts.append(str(key.idx))
    return "/".join(parts)


def decay_mask_fn(extra_no_decay: tuple[str, ...] = ()):
    """True where weight decay applies. ``extra_no_decay`` holds regexes of parameter paths
    to exempt as well (e.g. ``('mask_token',)`` for mmpretrain's variant)."""
    patterns = [re.compile(p) for p in extra_no_decay]

    def mask(params):
        def leaf(path, _):
            name = _path_name(path)
            last = name.rsplit("/", 1)[-1]
            if last in _NO_DECAY_LEAVES:
                return False
            return not any(p.search(name) for p in patterns)

        return jax.tree_util.tree_map_with_path(leaf, params)

    return mask


def make_optimizer(
    optim: ml_collections.ConfigDict, schedule: optax.Schedule
) -> optax.GradientTransformation:
    parts = []
    if optim.clip_grad_norm:
        parts.append(optax.clip_by_global_norm(optim.clip_grad_norm))
    parts.append(
        optax.adamw(
            schedule,
            b1=optim.b1,
            b2=optim.b2,
            eps=optim.eps,
            weight_decay=optim.weight_decay,
            mask=decay_mask_fn(tuple(optim.get("extra_no_decay", ()))),
        )
    )
    return optax.chain(*parts)
