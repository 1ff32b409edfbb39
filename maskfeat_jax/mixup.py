"""Mixup / CutMix batch mixing and the soft-target loss for fine-tuning, as jittable JAX.

The reference fine-tuning recipe (SlowFast's ``datasets/mixup.py``, a copy of timm's ``Mixup``
in mode 'batch') draws one lam and one choice per batch: with probability ``prob`` the batch is
mixed, by CutMix with probability ``switch_prob`` (when both alphas are > 0) and otherwise by
mixup, with lam ~ Beta(alpha, alpha) of the chosen kind. Mixup blends every example with its
partner in the reversed batch; CutMix pastes a box of the partner (side ``sqrt(1 - lam)`` of
the image's, uniform centre, clipped at the border) and resets lam to the kept area fraction.
Targets are label-smoothed one-hots mixed with the same lam. Here this runs inside the jitted
training step: static shapes, randomness from a ``jax.random`` key, the choices made by selects.

Layout is channels-last: images ``[B, H, W, C]`` or videos ``[B, T, H, W, C]`` (one box for
every frame), labels int ``[B]``.

Partners and sharding: the reference reverses each GPU's local batch. ``groups=G`` treats the
batch as G equal contiguous chunks, each reversed on its own. G = the number of batch shards
reproduces the per-device pairing and needs no cross-device traffic; G = 1 reverses the global
batch, pairing examples across devices (XLA then exchanges data between them).

Public API: ``MixupConfig``, ``mix_batch`` (= ``sample_mix_params`` then ``apply_mix``),
``cutmix_box``, ``flip_within_groups``, ``one_hot_smoothed``, ``soft_target_cross_entropy``,
``cross_entropy_with_smoothing``.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True, kw_only=True)
class MixupConfig:
    """Mixing settings, named as in timm; hashable, so it can be a static ``jax.jit`` argument.

    mixup_alpha, cutmix_alpha: Beta parameters; 0 disables that kind. With both 0 nothing is
      mixed and the targets are only label-smoothed.
    prob: probability that a batch is mixed at all (otherwise lam = 1).
    switch_prob: probability of CutMix instead of mixup when both alphas are > 0.
    label_smoothing: eps; off value = eps / num_classes, on value = 1 - eps + off value.
    correct_lam: after CutMix, lam = 1 - box area / image area (the clipped box's true share).
    slowfast_box: SlowFast's copy of ``rand_bbox`` extends the box ``cut // 2`` past the centre
      where timm uses ``(cut + 1) // 2``, so an odd cut loses one row or column; True
      reproduces SlowFast, False (default) timm.
    cutmix_minmax, mode: only timm's None and 'batch' are implemented; other values raise.
    """

    num_classes: int
    mixup_alpha: float = 0.8
    cutmix_alpha: float = 1.0
    prob: float = 1.0
    switch_prob: float = 0.5
    label_smoothing: float = 0.1
    correct_lam: bool = True
    slowfast_box: bool = False
    cutmix_minmax: Any = None
    mode: str = "batch"

    def __post_init__(self):
        if self.cutmix_minmax is not None:
            raise ValueError(
                f"cutmix_minmax={self.cutmix_minmax!r} is not supported; only None (box size "
                "from lam, as in the reference recipe)."
            )
        if self.mode != "batch":
            raise ValueError(
                f"mode={self.mode!r} is not supported; only 'batch' (one lam per batch)."
            )
        if not isinstance(self.num_classes, int) or self.num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer, got {self.num_classes!r}.")
        if self.mixup_alpha < 0 or self.cutmix_alpha < 0:
            raise ValueError(
                f"alphas must be >= 0 (0 disables), got mixup_alpha={self.mixup_alpha}, "
                f"cutmix_alpha={self.cutmix_alpha}."
            )
        for name in ("prob", "switch_prob"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be in [0, 1], got {getattr(self, name)}.")
        if not 0.0 <= self.label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}.")

    @property
    def mixes(self) -> bool:
        """False when no batch can ever be mixed (then only label smoothing applies)."""
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0)

    @classmethod
    def from_config(cls, cfg: Any, num_classes: int) -> MixupConfig:
        """From an ``ml_collections.ConfigDict`` (or dict) whose keys are field names.

        Unknown keys raise, so that a misspelt setting cannot silently fall back to a default.
        """
        names = {f.name for f in dataclasses.fields(cls)} - {"num_classes"}
        unknown = sorted(set(cfg.keys()) - names)
        if unknown:
            raise ValueError(f"unknown mixup settings {unknown}; known: {sorted(names)}.")
        casts = {"correct_lam": bool, "slowfast_box": bool, "mode": str, "cutmix_minmax": None}
        values = {}
        for key in cfg.keys():
            cast = casts.get(key, float)
            values[key] = cfg[key] if cast is None else cast(cfg[key])
        return cls(num_classes=int(num_classes), **values)


class MixParams(NamedTuple):
    """The random choices for one batch (scalars)."""

    lam: jax.Array  # float32 Beta draw; 1.0 when the batch is not mixed
    use_cutmix: jax.Array  # bool
    center_y: jax.Array  # int32 box centre row, uniform in [0, H)
    center_x: jax.Array  # int32 box centre column, uniform in [0, W)


def one_hot_smoothed(labels: jax.Array, num_classes: int, smoothing: float) -> jax.Array:
    """float32 [B, num_classes]: ``1 - smoothing + off`` at the label, ``off`` elsewhere, with
    ``off = smoothing / num_classes``."""
    off_value = smoothing / num_classes
    on_value = 1.0 - smoothing + off_value
    hits = jnp.asarray(labels, jnp.int32)[:, None] == jnp.arange(num_classes, dtype=jnp.int32)
    return jnp.where(hits, jnp.float32(on_value), jnp.float32(off_value))


def flip_within_groups(x: jax.Array, groups: int = 1) -> jax.Array:
    """Reverse the leading (batch) axis within each of ``groups`` equal contiguous chunks."""
    x = jnp.asarray(x)
    if groups < 1 or x.shape[0] % groups:
        raise ValueError(f"batch {x.shape[0]} must split into groups={groups} equal chunks.")
    if groups == 1:
        return jnp.flip(x, axis=0)
    split_shape = (groups, x.shape[0] // groups, *x.shape[1:])
    # Auto-sharded arrays reshape freely; under explicit sharding the batch shards must be
    # told to follow the group axis (each device then holds whole groups).
    spec = jax.typeof(x).sharding.spec
    batch_axes = spec[0] if len(spec) else None
    if batch_axes is None:
        return jnp.flip(x.reshape(split_shape), axis=1).reshape(x.shape)
    mesh = jax.typeof(x).sharding.mesh
    axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes)
    num_shards = math.prod(mesh.shape[a] for a in axes)
    if groups % num_shards:
        raise ValueError(
            f"groups={groups} must be a multiple of the {num_shards} batch shards under "
            "explicit sharding (or 1)."
        )
    split_sharding = jax.sharding.NamedSharding(
        mesh, jax.sharding.PartitionSpec(batch_axes, None, *spec[1:])
    )
    split = jax.lax.reshape(x, split_shape, out_sharding=split_sharding)
    flipped = jnp.flip(split, axis=1)
    return jax.lax.reshape(flipped, x.shape, out_sharding=jax.typeof(x).sharding)


def cutmix_box(
    lam: jax.Array | float,
    height: int,
    width: int,
    center_y: jax.Array | int,
    center_x: jax.Array | int,
    slowfast: bool = False,
) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
    """The CutMix box ``(y_lo, y_hi, x_lo, x_hi)`` (int32, half-open) for a given centre.

    Cut size ``int(side * sqrt(1 - lam))`` per axis, centred, clipped to the image (timm's
    ``rand_bbox`` with margin 0; ``slowfast=True``: SlowFast's rounding, see ``MixupConfig``).
    """
    ratio = jnp.sqrt(1.0 - jnp.asarray(lam, jnp.float32))
    cut_h = jnp.floor(height * ratio).astype(jnp.int32)
    cut_w = jnp.floor(width * ratio).astype(jnp.int32)
    center_y = jnp.asarray(center_y, jnp.int32)
    center_x = jnp.asarray(center_x, jnp.int32)
    after_h = cut_h // 2 if slowfast else (cut_h + 1) // 2
    after_w = cut_w // 2 if slowfast else (cut_w + 1) // 2
    y_lo = jnp.clip(center_y - cut_h // 2, 0, height)
    y_hi = jnp.clip(center_y + after_h, 0, height)
    x_lo = jnp.clip(center_x - cut_w // 2, 0, width)
    x_hi = jnp.clip(center_x + after_w, 0, width)
    return y_lo, y_hi, x_lo, x_hi


def sample_mix_params(key: jax.Array, cfg: MixupConfig, height: int, width: int) -> MixParams:
    """Draw whether and how to mix one batch (the reference's per-batch draws)."""
    k_apply, k_switch, k_mixup, k_cutmix, k_y, k_x = jax.random.split(key, 6)
    lam_mixup = lam_cutmix = jnp.float32(1.0)
    if cfg.mixup_alpha > 0:
        lam_mixup = jax.random.beta(k_mixup, cfg.mixup_alpha, cfg.mixup_alpha, dtype=jnp.float32)
    if cfg.cutmix_alpha > 0:
        lam_cutmix = jax.random.beta(
            k_cutmix, cfg.cutmix_alpha, cfg.cutmix_alpha, dtype=jnp.float32
        )
    if cfg.mixup_alpha > 0 and cfg.cutmix_alpha > 0:
        use_cutmix = jax.random.uniform(k_switch) < cfg.switch_prob
    else:
        use_cutmix = jnp.asarray(cfg.cutmix_alpha > 0)
    mixes = jnp.asarray(cfg.mixes) & (jax.random.uniform(k_apply) < cfg.prob)
    lam = jnp.where(mixes, jnp.where(use_cutmix, lam_cutmix, lam_mixup), jnp.float32(1.0))
    return MixParams(
        lam=lam,
        use_cutmix=mixes & use_cutmix,
        center_y=jax.random.randint(k_y, (), 0, height, dtype=jnp.int32),
        center_x=jax.random.randint(k_x, (), 0, width, dtype=jnp.int32),
    )


def _check_batch(images: jax.Array, labels: jax.Array, groups: int) -> None:
    if images.ndim not in (4, 5):
        raise ValueError(f"images must be [B, H, W, C] or [B, T, H, W, C], got {images.shape}.")
    if not jnp.issubdtype(images.dtype, jnp.floating):
        raise ValueError(f"images must be floating point to be blended, got {images.dtype}.")
    if labels.shape != images.shape[:1]:
        raise ValueError(f"labels {labels.shape} must be [B] for images {images.shape}.")
    if groups < 1 or images.shape[0] % groups:
        raise ValueError(f"batch {images.shape[0]} must split into groups={groups} equal chunks.")


def apply_mix(
    images: jax.Array, labels: jax.Array, params: MixParams, cfg: MixupConfig, groups: int = 1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mix a batch with given draws; returns (images, soft targets [B, K] float32, lam).

    lam is the weight of each example's own label: the Beta draw for mixup, the kept area
    fraction for CutMix (``correct_lam``), 1 when not mixed.
    """
    _check_batch(images, labels, groups)
    height, width = images.shape[-3], images.shape[-2]
    partners = flip_within_groups(images, groups)

    y_lo, y_hi, x_lo, x_hi = cutmix_box(
        params.lam, height, width, params.center_y, params.center_x, cfg.slowfast_box
    )
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= y_lo) & (rows < y_hi) & (cols >= x_lo) & (cols < x_hi)
    # [H, W] -> broadcastable over batch, frames and channels: the same box on every frame.
    inside = inside.reshape((1,) * (images.ndim - 3) + (height, width, 1))
    pasted = jnp.where(inside, partners, images)

    lam = params.lam.astype(jnp.float32)
    blended = lam * images.astype(jnp.float32) + (1.0 - lam) * partners.astype(jnp.float32)
    mixed = jnp.where(params.use_cutmix, pasted, blended.astype(images.dtype))

    if cfg.correct_lam:
        box_area = ((y_hi - y_lo) * (x_hi - x_lo)).astype(jnp.float32)
        kept_fraction = 1.0 - box_area / jnp.float32(height * width)
        lam = jnp.where(params.use_cutmix, kept_fraction, lam)

    targets = one_hot_smoothed(labels, cfg.num_classes, cfg.label_smoothing)
    targets = targets * lam + flip_within_groups(targets, groups) * (1.0 - lam)
    return mixed, targets, lam


def mix_batch(
    key: jax.Array, images: jax.Array, labels: jax.Array, cfg: MixupConfig, groups: int = 1
) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Mixup/CutMix one batch as the reference does; returns (images, soft targets, lam).

    images: float [B, H, W, C] or [B, T, H, W, C]; labels: int [B]; soft targets: float32
    [B, cfg.num_classes], rows summing to 1; lam: float32 scalar. ``groups``: see the module
    docstring (use the number of batch shards to pair examples within each device). Jit with
    ``static_argnames=("cfg", "groups")``.
    """
    _check_batch(images, labels, groups)
    if not cfg.mixes:
        targets = one_hot_smoothed(labels, cfg.num_classes, cfg.label_smoothing)
        return images, targets, jnp.float32(1.0)
    params = sample_mix_params(key, cfg, images.shape[-3], images.shape[-2])
    return apply_mix(images, labels, params, cfg, groups)


def soft_target_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
    """Mean over the batch of ``-sum_k targets_k * log_softmax(logits)_k``, in float32."""
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.mean(-jnp.sum(targets.astype(jnp.float32) * log_probs, axis=-1))


def cross_entropy_with_smoothing(
    logits: jax.Array, labels: jax.Array, smoothing: float = 0.0
) -> jax.Array:
    """Cross-entropy against label-smoothed one-hots (plain cross-entropy for smoothing 0)."""
    targets = one_hot_smoothed(labels, logits.shape[-1], smoothing)
    return soft_target_cross_entropy(logits, targets)
