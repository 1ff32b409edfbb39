"""The MaskFeat objective: targets, their size, token masks, the masked loss and its outputs.

Inside the jitted step a pretraining batch ``{"image": uint8, "mask": bool}`` is normalized,
its targets are computed from the same augmented view the encoder sees (HOG, or the pixels of
each patch), the mask units become token masks, and the loss is the mean squared error over
the masked output tokens (``objectives.masked_mse``).
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskfeat_jax import errors, hog, masking, objectives

Batch = Mapping[str, Any]
TARGETS = ("hog", "pixels")


def target_kind(config: ml_collections.ConfigDict) -> str:
    kind = config.get("target", "hog")
    if kind not in TARGETS:
        raise errors.ConfigError(
            f"config.target={kind!r} is not one of {TARGETS}; set --config.target=hog or pixels."
        )
    return kind


def hog_input(config: ml_collections.ConfigDict) -> str:
    """What the HOG target is computed on: "pixels", the integer-valued view (exact Sobel
    zeros), or "normalized", the tensor the encoder sees, as SlowFast computes it."""
    source = config.hog.get("input", "pixels")
    if source not in hog.INPUT_KINDS:
        raise errors.ConfigError(
            f"config.hog.input={source!r} is not one of {hog.INPUT_KINDS}; set "
            "--config.hog.input=pixels (uint8 pixel values, the default) or normalized "
            "(the mean/std-normalized input, as SlowFast)."
        )
    return source


def check_config(config: ml_collections.ConfigDict) -> None:
    """Fails on a target setting that cannot work, before anything is built."""
    if target_kind(config) == "hog":
        hog_input(config)


def target_size(config: ml_collections.ConfigDict, patch_size: int, channels: int = 3) -> int:
    """Per-token target size: HOG 3 x nbins x (P / cell)^2 (108 at 16 px), pixels 3 x P^2."""
    if target_kind(config) == "pixels":
        return channels * patch_size * patch_size
    cells = patch_size // config.hog.cell_size
    return channels * config.hog.nbins * cells * cells


def mask_grid(config: ml_collections.ConfigDict, spec) -> tuple[int, ...]:
    """The grid of mask units the host draws: ``config.mask.grid``, else the output tokens."""
    grid = config.mask.get("grid")
    return tuple(grid) if grid else tuple(spec.grid)


def compute_targets(
    pixels: jax.Array, images: jax.Array, spec, config: ml_collections.ConfigDict
) -> jax.Array:
    """HOG of the uint8-valued ``pixels`` (``config.hog.input="pixels"``) or of the normalized
    ``images`` (``"normalized"``), or ``images`` patch by patch (the paper's pixel-colour
    target, each patch normalized to zero mean and unit variance when
    ``config.norm_pixel_target``, SlowFast's ``NORM_PRED_PIXEL``); video targets come from
    frames 0, t, 2t, ... (t = tubelet)."""
    if target_kind(config) == "pixels":
        frames = images[:, :: spec.tubelet] if spec.is_video else images
        return objectives.patch_pixels(
            frames, spec.patch_size, normalize=config.get("norm_pixel_target", True)
        )
    hog_cfg = config.hog
    kind = hog_input(config)
    kwargs = dict(
        patch_size=spec.patch_size,
        nbins=hog_cfg.nbins,
        cell_size=hog_cfg.cell_size,
        gaussian_window=hog_cfg.gaussian_window,
        input_kind=kind,
    )
    source = pixels if kind == "pixels" else images
    if spec.is_video:
        return hog.hog_targets_video(source, temporal_stride=spec.tubelet, **kwargs)
    return hog.hog_targets(source, **kwargs)


def token_mask(mask: jax.Array, token_grid: tuple[int, ...]) -> jax.Array:
    """Mask units [B, *unit_grid] -> token mask [B, N] (nearest upsampling by integer factors)."""
    unit_grid = tuple(mask.shape[1:])
    if len(unit_grid) != len(token_grid) or any(t % u for t, u in zip(token_grid, unit_grid)):
        raise ValueError(
            f"mask grid {unit_grid} does not divide the token grid {token_grid}; "
            "set config.mask.grid to the token grid or an integer fraction of it."
        )
    factors = tuple(t // u for t, u in zip(token_grid, unit_grid))
    if any(f != 1 for f in factors):
        mask = masking.upsample_mask(mask, factors)
    return mask.reshape(mask.shape[0], -1)


def outputs(model: nnx.Module, batch: Batch, config, key: jax.Array | None = None):
    """(predictions [B, N, D], targets [B, N, D], loss mask [B, N]) on the output tokens."""
    spec = model.spec
    images = objectives.normalize(batch["image"], config.input.mean, config.input.std)
    # By default (config.hog.input="pixels") the HOG targets come from the same augmented view
    # before normalizing: integer pixels make every Sobel cancellation exact, so a pixel's bin
    # never depends on float rounding of the normalized values; "normalized" takes `images`.
    pixels = batch["image"].astype(jnp.float32)
    targets = jax.lax.stop_gradient(compute_targets(pixels, images, spec, config))
    # Mask units are upsampled twice: to the input tokens for mask-token replacement and to
    # the output tokens for the loss (the same grid for a ViT; 4x finer input for MViT).
    loss_mask = token_mask(batch["mask"], spec.grid)
    pred = model(images, token_mask(batch["mask"], spec.token_grid), key=key)
    return pred, targets, loss_mask


def loss(
    model: nnx.Module,
    batch: Batch,
    config: ml_collections.ConfigDict,
    key: jax.Array | None = None,
    **_,
):
    """Masked MSE between predictions and the targets of the masked tokens (``key``: drop
    path, off in the reference pretraining recipes)."""
    pred, targets, loss_mask = outputs(model, batch, config, key)
    value = objectives.masked_mse(pred, targets, loss_mask)
    return value, {"mask_ratio": jnp.mean(loss_mask.astype(jnp.float32))}


def batch_fields(
    config: ml_collections.ConfigDict, spec, image_shape: tuple[int, ...]
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-example (shape, dtype) of what a pretraining step takes."""
    return {"image": (image_shape, jnp.uint8), "mask": (mask_grid(config, spec), jnp.bool_)}
