"""The MaskFeat objective: mean squared error on masked tokens only, with static shapes."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def masked_mse(pred: jax.Array, target: jax.Array, mask: jax.Array) -> jax.Array:
    """sum_i m_i * mean_d (p_id - t_id)^2 / sum_i m_i over every token of the batch.

    pred, target: [B, N, D]; mask: [B, N] (True = masked, predicted). This equals the
    reference's ``MSELoss(reduction='mean')`` over the gathered masked tokens x D. The mean is
    over the whole global batch (the reference averages per GPU, then averages gradients; the
    two agree when every device masks the same number of tokens). A batch without any masked
    token gives 0, not NaN.
    """
    if pred.shape != target.shape:
        raise ValueError(
            f"prediction {pred.shape} and target {target.shape} differ; the head's "
            "output size must equal the target size (108 for RGB HOG at 16-px tokens)."
        )
    if mask.shape != pred.shape[:2]:
        raise ValueError(f"mask {mask.shape} must be [batch, tokens] = {pred.shape[:2]}.")
    per_token = jnp.mean(jnp.square(pred.astype(jnp.float32) - target.astype(jnp.float32)), axis=-1)
    m = mask.astype(jnp.float32)
    return jnp.sum(per_token * m) / jnp.maximum(jnp.sum(m), 1.0)


def normalize(images: jax.Array, mean, std) -> jax.Array:
    """uint8 pixels -> float32 (x/255 - mean) / std, per channel (last axis)."""
    x = images.astype(jnp.float32) / 255.0
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def patch_pixels(images: jax.Array, patch_size: int, normalize: bool = True) -> jax.Array:
    """Pixel-colour targets: [B, (T,) H, W, C] -> [B, N, P*P*C], one row per P x P patch in
    (t, h, w) token order; each row standardized over its own values (eps 1e-6 on the
    variance) when ``normalize``."""
    p = patch_size
    *lead, h, w, c = images.shape
    if h % p or w % p:
        raise ValueError(f"image {h}x{w} is not a multiple of the {p}-px patch size.")
    x = images.astype(jnp.float32).reshape(*lead, h // p, p, w // p, p, c)
    x = jnp.moveaxis(x, -3, -4)  # [..., H/P, W/P, P, P, C]
    x = x.reshape(lead[0], -1, p * p * c)
    if normalize:
        mean = x.mean(axis=-1, keepdims=True)
        var = x.var(axis=-1, keepdims=True)
        x = (x - mean) / jnp.sqrt(var + 1e-6)
    return x
