"""The MaskFeat objective: HOG targets of the normalized view on masked tokens, every second
frame for video, the masked MSE, and pixel targets."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import hog, objectives, pretrain, sharding
from maskfeat_jax import trainer as trainer_lib
from tests.support.random_models import forward
from tests.support.steps import (
    random_batch,
    random_clips,
    tiny_config,
    tiny_video_config,
)


def compiled_loss(model, batch, config):
    """``pretrain.loss`` compiled: op by op, the small MViT's takes about half a minute."""
    loss = nnx.jit(lambda m, b: pretrain.loss(m, b, config))
    return loss(model, jax.tree.map(jnp.asarray, batch))


@pytest.mark.slow
def test_video_loss_uses_targets_of_every_second_frame_on_masked_output_tokens():
    config = tiny_video_config("mvit")
    batch = random_clips(config)
    one = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    trainer = trainer_lib.build_trainer(config, one)
    state = trainer.init(jax.random.key(0))
    model = nnx.merge(trainer.graphdef, state)[0]
    images = objectives.normalize(jnp.asarray(batch["image"]), config.input.mean, config.input.std)
    loss, aux = compiled_loss(model, batch, config)
    # Independent assembly: HOG of frames 0, 2, 4, 6 in (t, h, w) token order; predictions
    # with the units upsampled 8x to the 16 x 16 input grid; mean over masked output tokens.
    targets = np.stack(
        [
            np.asarray(hog.hog_targets(jnp.asarray(batch["image"][:, f], jnp.float32)))
            for f in (0, 2, 4, 6)
        ],
        axis=1,
    ).reshape(8, 64, 108)
    units = batch["mask"]
    input_mask = units.repeat(8, axis=2).repeat(8, axis=3).reshape(8, -1)
    pred = np.asarray(forward(model, images, jnp.asarray(input_mask)))
    out_mask = units.repeat(2, axis=2).repeat(2, axis=3).reshape(8, -1)
    want = np.mean(((pred - targets) ** 2)[out_mask])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["mask_ratio"]), out_mask.mean(), rtol=1e-6)


@pytest.mark.slow
def test_loss_uses_targets_of_the_normalized_view_and_masked_tokens_only():
    config = tiny_config()
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh))
    state = trainer.init(jax.random.key(0))
    model, _ = nnx.merge(trainer.graphdef, state)
    batch = random_batch(config)
    loss, _ = pretrain.loss(model, batch, config)
    images = objectives.normalize(batch["image"], config.input.mean, config.input.std)
    from maskfeat_jax import hog

    targets = np.asarray(hog.hog_targets(jnp.asarray(batch["image"], jnp.float32)))
    mask = batch["mask"].reshape(config.input.batch_size, -1)
    pred = np.asarray(model(images, jnp.asarray(mask)))
    expected = np.mean((pred[mask] - targets[mask]) ** 2)  # gather, then plain mean
    np.testing.assert_allclose(float(loss), expected, rtol=1e-5)


def test_masked_mse_matches_gathered_mean_and_handles_empty_masks():
    rng = np.random.default_rng(0)
    pred, target = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4, 3))
    mask = np.array([[1, 0, 1, 0], [0, 0, 0, 1]], bool)
    expected = np.mean((pred[mask] - target[mask]) ** 2)
    np.testing.assert_allclose(objectives.masked_mse(pred, target, mask), expected, rtol=1e-6)
    assert float(objectives.masked_mse(pred, target, np.zeros_like(mask))) == 0.0


@pytest.mark.slow
def test_pixel_target_is_each_patch_of_the_normalized_view_standardized():
    config = tiny_config()
    config.target = "pixels"
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh))
    assert trainer.spec.target_size == 3 * 16 * 16
    model = nnx.merge(trainer.graphdef, trainer.init(jax.random.key(0)))[0]
    batch = random_batch(config)
    loss, _ = pretrain.loss(model, batch, config)
    images = np.asarray(
        objectives.normalize(batch["image"], config.input.mean, config.input.std), np.float64
    )
    # Token (h, w) of example b is rows 16h..16h+15, columns 16w..16w+15, channels last.
    patches = np.stack(
        [
            images[:, 16 * h : 16 * h + 16, 16 * w : 16 * w + 16].reshape(8, -1)
            for h in range(2)
            for w in range(2)
        ],
        axis=1,
    )
    targets = (patches - patches.mean(-1, keepdims=True)) / np.sqrt(
        patches.var(-1, keepdims=True) + 1e-6
    )
    np.testing.assert_allclose(
        objectives.patch_pixels(jnp.asarray(images, jnp.float32), 16), targets, atol=2e-5
    )
    pred = np.asarray(
        model(jnp.asarray(images, jnp.float32), jnp.asarray(batch["mask"]).reshape(8, -1))
    )
    m = batch["mask"].reshape(8, -1)
    want = ((pred - targets) ** 2).mean(-1)[m].mean()
    np.testing.assert_allclose(float(loss), want, rtol=1e-4)
    config.target = "rgb"
    with pytest.raises(ValueError, match="config.target"):
        trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh))
