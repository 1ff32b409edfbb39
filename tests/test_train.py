"""Sharded train step on a simulated 8-device CPU mesh: equality with one device, real FSDP
sharding, batch checks; optimizer rules; the loss."""

import numpy as np
import pytest
import jax
import jax.numpy as jnp
from flax import nnx

from maskfeat_jax import defaults
from maskfeat_jax import hog, models, objectives, optim, pretrain, sharding
from maskfeat_jax import trainer as trainer_lib


def tiny_config(batch=8, mesh=(("data", 2), ("fsdp", 4), ("tensor", 1))):
    c = defaults.pretrain_config()
    c.model.update(variant="B/16", image_size=32, width=64, depth=2, num_heads=4, mlp_dim=128)
    c.mask.update(ratio=0.5)
    c.input.batch_size = batch
    c.total_steps = 10
    c.optim.update(warmup_steps=2, base_lr=1e-3, clip_grad_norm=1.0)
    c.mesh = mesh
    return c


def random_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.input.batch_size, config.model.image_size
    grid = s // 16
    return {
        "image": rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8),
        "mask": rng.random((b, grid, grid)) < 0.5,
    }


def run_steps(config, mesh, batches, init_state=None):
    trainer = trainer_lib.build_trainer(config, mesh)
    state = (
        trainer.init(jax.random.key(0))
        if init_state is None
        else jax.device_put(init_state, trainer.state_shardings)
    )
    losses = []
    for b in batches:
        state, metrics = trainer.step(
            state, sharding.to_global(b, trainer.batch_sharding), jax.random.key(0)
        )
        losses.append(float(metrics["loss"]))
    return trainer, state, losses


def params_of(state):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state[0])}


def test_sharded_step_equals_single_device_step():
    config = tiny_config()
    batches = [random_batch(config, s) for s in range(3)]
    one = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    t1, s1, l1 = run_steps(config, one, batches)
    init = jax.device_get(t1.init(jax.random.key(0)))
    eight = sharding.make_mesh(config.mesh)
    assert eight.devices.size == 8
    t8, s8, l8 = run_steps(config, eight, batches, init_state=init)
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    p1, p8 = params_of(s1), params_of(s8)
    assert p1.keys() == p8.keys()
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], atol=2e-5, err_msg=str(k))


def tiny_video_config(family, batch=8, mesh=(("data", 2), ("fsdp", 4), ("tensor", 1))):
    """A small video model on 8-frame clips, with the K400 recipe's cube masks."""
    c = defaults.video_pretrain_config()
    if family == "mvit":
        # 4 x 16 x 16 input tokens, q-pooled at blocks 1 and 2 to 4 x 4 x 4 output tokens of
        # 2 frames x 16 px (block 3's stride removed, as in pretraining); one mask unit =
        # 2 x 2 output tokens = 8 x 8 input tokens.
        c.model.update(image_size=64, num_frames=8, embed_dim=16, depth=4, stage_starts=(1, 2, 3))
        c.mask.grid = (4, 2, 2)
    else:  # the ViT with 2 x 16 x 16 tubelets: 4 x 2 x 2 tokens, one unit per token
        c.model = defaults.pretrain_config().model
        c.model.update(
            variant="B/2x16",
            image_size=32,
            num_frames=8,
            width=64,
            depth=2,
            num_heads=4,
            mlp_dim=128,
        )
        c.mask.grid = (4, 2, 2)
    c.mask.update(min_patches=1, max_patches=4)
    c.input.batch_size = batch
    c.total_steps = 10
    c.optim.update(warmup_steps=2, base_lr=1e-3, lr_batch_reference=batch, clip_grad_norm=1.0)
    c.mesh = mesh
    return c


def random_clips(config, seed=0):
    """Smooth random clips (a moving gradient plus noise) and cube masks from the generator."""
    from maskfeat_jax import masking

    rng = np.random.default_rng(seed)
    b, t, s = config.input.batch_size, config.model.num_frames, config.model.image_size
    gen = masking.from_config(config.mask, grid=config.mask.grid)
    yy, xx = np.mgrid[:s, :s]
    frames = [
        [(xx * np.cos(a + 0.1 * f) + yy * np.sin(a + 0.1 * f)) * 4 for f in range(t)]
        for a in rng.uniform(0, np.pi, b)
    ]
    clips = np.asarray(frames)[..., None] + rng.normal(0, 8, (b, t, s, s, 3))
    return {
        "image": np.clip(clips + 128, 0, 255).astype(np.uint8),
        "mask": np.stack([gen(rng) for _ in range(b)]),
    }


@pytest.mark.parametrize("family", ["mvit", "vit"])
def test_video_batches_go_through_the_sharded_step_unchanged(family):
    config = tiny_video_config(family)
    batches = [random_clips(config, s) for s in range(3)]
    one = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    t1, s1, l1 = run_steps(config, one, batches)
    assert t1.spec.is_video and t1.spec.grid == ((4, 4, 4) if family == "mvit" else (4, 2, 2))
    init = jax.device_get(t1.init(jax.random.key(0)))
    eight = sharding.make_mesh(config.mesh)
    t8, s8, l8 = run_steps(config, eight, batches, init_state=init)
    assert all(np.isfinite(l1)) and 0.02 < l1[0] < 1.0
    np.testing.assert_allclose(l8, l1, rtol=2e-5)
    p1, p8 = params_of(s1), params_of(s8)
    for k in p1:
        np.testing.assert_allclose(p8[k], p1[k], atol=2e-5, err_msg=str(k))


def test_video_loss_uses_targets_of_every_second_frame_on_masked_output_tokens():
    config = tiny_video_config("mvit")
    batch = random_clips(config)
    one = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    trainer = trainer_lib.build_trainer(config, one)
    state = trainer.init(jax.random.key(0))
    model = nnx.merge(trainer.graphdef, state)[0]
    images = objectives.normalize(jnp.asarray(batch["image"]), config.input.mean, config.input.std)
    loss, aux = pretrain.loss(model, jax.tree.map(jnp.asarray, batch), config)
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
    pred = np.asarray(model(images, jnp.asarray(input_mask)))
    out_mask = units.repeat(2, axis=2).repeat(2, axis=3).reshape(8, -1)
    want = np.mean(((pred - targets) ** 2)[out_mask])
    np.testing.assert_allclose(float(loss), want, rtol=1e-5)
    np.testing.assert_allclose(float(aux["mask_ratio"]), out_mask.mean(), rtol=1e-6)


def test_fsdp_rules_really_shard_parameters_and_optimizer_state():
    config = tiny_config(mesh=(("data", 1), ("fsdp", 8), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(0))
    qkv = state[0]["blocks"][0]["attn"]["qkv"]["kernel"].get_value()
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert qkv.addressable_shards[0].data.shape == (64 // 8, 192)
    mu = state[1]["opt_state"][1][0]["mu"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert mu.addressable_shards[0].data.shape == (8, 128)
    # Nearly everything is split 8 ways; only LayerNorms, small biases and the 108-d head stay whole.
    assert sharding.sharded_fraction(state) < 0.2


def test_tensor_axis_splits_mlp_and_heads():
    config = tiny_config(mesh=(("data", 1), ("fsdp", 4), ("tensor", 2)))
    trainer = trainer_lib.build_trainer(config)
    specs = {
        "/".join(map(str, k)): v.get_value().spec
        for k, v in nnx.to_flat_state(trainer.state_shardings[0])
    }
    assert specs["blocks/0/mlp/fc1/kernel"] == jax.sharding.PartitionSpec("fsdp", "tensor")
    assert specs["blocks/0/attn/proj/kernel"] == jax.sharding.PartitionSpec("tensor", "fsdp")
    assert specs["pred_head/proj/kernel"] == jax.sharding.PartitionSpec("fsdp", None)
    assert specs["blocks/0/norm1/scale"] == jax.sharding.PartitionSpec(None)


def test_batch_not_divisible_by_data_axes_is_refused():
    with pytest.raises(ValueError, match="not divisible by the 8 batch shards"):
        trainer_lib.build_trainer(tiny_config(batch=12))


def test_unknown_logical_axis_and_bad_mesh_are_refused():
    mesh = sharding.make_mesh((("data", 2), ("fsdp", 4)))
    rules = {"embed": "fsdp"}
    with pytest.raises(ValueError, match="No sharding rule for logical axis 'mlp'"):
        sharding.logical_to_spec(("embed", "mlp"), (64, 128), rules, mesh)
    with pytest.raises(ValueError, match="needs 16 devices but 8 are available"):
        sharding.make_mesh((("data", 2), ("fsdp", 8)))
    # Undividable dimensions fall back to replication rather than failing.
    assert sharding.logical_to_spec(("embed",), (54,), rules, mesh) == jax.sharding.PartitionSpec(
        None
    )


def test_training_lowers_the_loss_on_a_fixed_batch():
    config = tiny_config()
    config.total_steps = 30
    batch = random_batch(config)
    _, _, losses = run_steps(config, sharding.make_mesh(config.mesh), [batch] * 30)
    assert losses[-1] < 0.7 * losses[0], losses


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


def test_weight_decay_exempts_biases_and_norms_only():
    model = nnx.eval_shape(lambda: models.from_config(tiny_config().model, nnx.Rngs(0), target_size=108))
    params = nnx.state(model, nnx.Param)
    mask = optim.decay_mask_fn()(params)
    flat = {"/".join(map(str, k)): v for k, v in nnx.to_flat_state(mask)}
    flat = {k: (v.get_value() if hasattr(v, "get_value") else v) for k, v in flat.items()}
    decayed = {k for k, v in flat.items() if v}
    assert "cls_token" in decayed and "pos_embed" in decayed and "mask_token" in decayed
    assert "blocks/0/attn/qkv/kernel" in decayed and "patch_embed/proj/kernel" in decayed
    for k, v in flat.items():
        if k.endswith("bias") or k.endswith("scale"):
            assert not v, k
    extra = optim.decay_mask_fn(("mask_token",))(params)
    assert (
        not extra["mask_token"].get_value()
        if hasattr(extra["mask_token"], "get_value")
        else not extra["mask_token"]
    )


def test_weight_decay_is_decoupled_and_masked_in_the_update():
    c = tiny_config().optim
    c.update(clip_grad_norm=0.0, weight_decay=0.5)
    tx = optim.make_optimizer(c, lambda step: 0.1)
    params = {"w": jnp.ones((2, 2)), "bias": jnp.ones((2,))}
    updates, _ = tx.update(jax.tree.map(jnp.zeros_like, params), tx.init(params), params)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.5 * np.ones((2, 2)))  # lr * wd * p
    np.testing.assert_allclose(updates["bias"], 0.0)


def test_learning_rate_schedule_scales_with_batch_and_follows_warmup_cosine():
    c = tiny_config().optim
    c.update(base_lr=2e-4, warmup_start_lr=1e-6, end_lr=1e-6)
    sched = optim.learning_rate_schedule(c, global_batch=2048, total_steps=100, warmup_steps=10)
    np.testing.assert_allclose(sched(0), 8e-6, rtol=1e-5)
    np.testing.assert_allclose(sched(5), 8e-6 + 0.5 * (1.6e-3 - 8e-6), rtol=1e-5)
    np.testing.assert_allclose(sched(10), 1.6e-3, rtol=1e-5)
    mid = 8e-6 + (1.6e-3 - 8e-6) * 0.5 * (1 + np.cos(np.pi * 45 / 90))
    np.testing.assert_allclose(sched(55), mid, rtol=1e-5)
    np.testing.assert_allclose(sched(100), 8e-6, rtol=1e-5)
    with pytest.raises(ValueError, match="warmup"):
        optim.learning_rate_schedule(c, global_batch=256, total_steps=5, warmup_steps=10)


def test_schedule_steps_from_epochs():
    c = tiny_config()
    c.total_steps = 0
    c.input.batch_size = 2048
    total, warmup = optim.schedule_steps(c)
    assert total == 1600 * (1_281_167 // 2048) and warmup == 30 * (1_281_167 // 2048)


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
