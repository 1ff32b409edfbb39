"""Optimizer assembly with optax: AdamW, weight-decay exemptions, clipping and the LR schedule.

Reference recipe (SlowFast solver): AdamW (0.9, 0.999), eps 1e-8, decoupled weight decay 0.05
exempting 1-D parameters and biases (``ZERO_WD_1D_PARAM``; cls/pos/mask tokens keep decay
since ``ZERO_DECAY_POS_CLS`` is False), global-norm clipping, linear warmup from
``warmup_start_lr`` then a half cosine to ``end_lr``, all three learning rates scaled
linearly by global_batch / lr_batch_reference.

Fine-tuning adds layer-wise LR decay (``layer_decay``): every update, weight decay included,
is multiplied by ``layer_decay ** (depth + 1 - layer_id)`` (see ``layer_id``), as SlowFast's
per-group ``lr * layer_decay``.
"""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from maskfeat_jax import errors

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


def steps_per_epoch(config: ml_collections.ConfigDict) -> int:
    """Steps per pass over the data; with repeated augmentation a step reads batch / repeats
    records."""
    repeats = int(config.input.get("repeats", 1) or 1)
    return config.input.examples_per_epoch * repeats // config.input.batch_size


def schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(total_steps, warmup_steps) from explicit steps or from epochs of the dataset."""
    total, warmup = _schedule_steps(config)
    if total <= warmup:
        raise errors.ConfigError(
            f"the schedule has {total} steps, not more than its {warmup} warmup steps; raise "
            "--config.total_steps (or total_epochs) or lower --config.optim.warmup_steps "
            "(or warmup_epochs)."
        )
    return total, warmup


def _schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
    batch = config.input.batch_size
    if config.get("total_steps"):
        total = int(config.total_steps)
        warmup = int(config.optim.get("warmup_steps") or 0)
        if not warmup and config.optim.get("warmup_epochs") and config.get("total_epochs"):
            warmup = round(total * config.optim.warmup_epochs / config.total_epochs)
        return total, warmup
    epoch = steps_per_epoch(config)
    if epoch < 1:
        raise errors.ConfigError(
            f"config.input.batch_size={batch} exceeds the dataset's "
            f"{config.input.examples_per_epoch} examples per epoch; set config.total_steps."
        )
    return round(config.total_epochs * epoch), round(config.optim.warmup_epochs * epoch)


def schedule_from_config(config: ml_collections.ConfigDict) -> tuple[optax.Schedule, int]:
    """The learning-rate schedule of the run and its total steps."""
    total_steps, warmup_steps = schedule_steps(config)
    schedule = learning_rate_schedule(
        config.optim,
        global_batch=config.input.batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    return schedule, total_steps


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


_STEM = re.compile(r"^(cls_token|mask_token|pos_embed|patch_embed)")
_BLOCK = re.compile(r"^blocks/(\d+)/")
_STACKED_BLOCK = re.compile(r"^blocks/(?!\d+/)")


def layer_id(name: str, depth: int) -> int | None:
    """SlowFast's layer id for layer-wise LR decay: 0 for the stem (cls/mask token, position
    embedding, patch embedding), i + 1 for ``blocks/i``, depth + 1 for the rest (final norm,
    heads). None for a stacked (scanned) block parameter, whose ids are 1..depth."""
    if _STEM.match(name):
        return 0
    if m := _BLOCK.match(name):
        return int(m.group(1)) + 1
    if _STACKED_BLOCK.match(name):
        return None
    return depth + 1


def layer_decay_scale(name: str, shape: tuple[int, ...], depth: int, decay: float):
    """The LR multiplier ``decay ** (depth + 1 - layer_id)`` of one parameter; for stacked
    blocks an array broadcasting over the leading layer axis."""
    lid = layer_id(name, depth)
    if lid is not None:
        return decay ** (depth + 1 - lid)
    ids = np.arange(1, depth + 1, dtype=np.float64)
    return (decay ** (depth + 1 - ids)).reshape((depth,) + (1,) * (len(shape) - 1))


def scale_by_layer_decay(decay: float, depth: int) -> optax.GradientTransformation:
    """Multiplies each parameter's update (Adam step and decoupled weight decay, both already
    times the LR) by its layer-decay factor, as SlowFast's per-group ``lr * layer_decay``."""
    if not 0.0 < decay <= 1.0:
        raise ValueError(f"config.optim.layer_decay must be in (0, 1], got {decay}.")

    def scale(updates, params=None):
        del params

        def leaf(path, u):
            factor = layer_decay_scale(_path_name(path), u.shape, depth, decay)
            return u * jnp.asarray(factor, u.dtype)

        return jax.tree_util.tree_map_with_path(leaf, updates)

    return optax.stateless(scale)


def make_optimizer(
    optim: ml_collections.ConfigDict, schedule: optax.Schedule, depth: int | None = None
) -> optax.GradientTransformation:
    """Clipping (optional) -> AdamW with the decay mask -> layer-wise LR decay (fine-tuning,
    ``optim.layer_decay``; needs the model's ``depth``)."""
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
    decay = optim.get("layer_decay")
    if decay is not None and decay != 1.0:
        if depth is None:
            raise ValueError("layer decay needs the model depth; pass depth=.")
        parts.append(scale_by_layer_decay(float(decay), depth))
    return optax.chain(*parts)


def skipping_nonfinite(tx: optax.GradientTransformation) -> optax.GradientTransformation:
    """``tx`` whose update is skipped (a zero update; ``tx``'s state unchanged) when any
    gradient is not finite. The state counts skips in a row (``notfinite_count``) and in all
    (``total_notfinite``). optax would let an update through after ``max_consecutive_errors``
    skips; the training loop stops the run long before (``optim.max_consecutive_skips``), so
    that count is set beyond reach."""
    return optax.apply_if_finite(tx, max_consecutive_errors=np.iinfo(np.int32).max)
