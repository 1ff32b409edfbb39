"""Fine-tuning: layer decay, drop path, the classification step, EMA, loading pretrained
weights, and the recipe configs."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from configs import (
    in1k_vit_b_finetune,
    in1k_vit_l_finetune,
    k400_mvitv2_l_finetune,
    k400_mvitv2_s_finetune,
)
from maskfeat_jax import checkpoint, defaults, finetune, loop, optim, sharding
from maskfeat_jax import trainer as trainer_lib
from maskfeat_jax.experiments import digits_configs
from maskfeat_jax.models import mvit, vit
from tests.support.layer_decay import flat, multipliers

DATA_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay.
# ---------------------------------------------------------------------------------------------


def test_layer_decay_rule_on_mvit_and_scanned_vit():
    """SlowFast's rule by name: stem 0, ``blocks.i`` i + 1, the rest depth + 1."""
    depth, decay = 3, 0.75
    spec = mvit.make_spec(
        "MViTv2-S", image_size=32, num_frames=4, depth=depth, stage_starts=(1, 2), num_classes=4
    )
    model = nnx.eval_shape(lambda: mvit.MViT(spec, rngs=nnx.Rngs(0)))
    got = multipliers(model, decay, depth)
    for path, factor in got.items():
        if path.startswith(("cls_token", "patch_embed")):
            want = decay ** (depth + 1)
        elif path.startswith("blocks/"):
            want = decay ** (depth - int(path.split("/")[1]))
        else:
            assert path.startswith(("norm/", "head/")), path
            want = 1.0
        np.testing.assert_allclose(factor, want, rtol=1e-6, err_msg=path)
    # Scanned blocks: one factor per layer along the stacked axis.
    scanned = nnx.eval_shape(
        lambda: vit.ViT(
            vit.make_spec("Ti/16", image_size=32, depth=depth), scan=True, rngs=nnx.Rngs(0)
        )
    )
    factors = multipliers(scanned, decay, depth)["blocks/attn/qkv/kernel"]
    np.testing.assert_allclose(factors[:, 0, 0], [decay**3, decay**2, decay**1], rtol=1e-6)


@pytest.mark.slow
def test_layer_decay_scales_the_whole_adamw_update_including_weight_decay():
    spec = vit.make_spec("Ti/16", image_size=32, depth=2, num_classes=3)
    model = vit.ViT(spec, rngs=nnx.Rngs(0))
    params = nnx.state(model, nnx.Param)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    cfg = ml_collections.ConfigDict(defaults.finetune_config().optim.to_dict())
    cfg.update(layer_decay=0.5, clip_grad_norm=0.0)
    plain_cfg = ml_collections.ConfigDict(cfg.to_dict())
    plain_cfg.layer_decay = None
    sched = optax.constant_schedule(1e-3)
    with_decay = optim.make_optimizer(cfg, sched, depth=2)
    without = optim.make_optimizer(plain_cfg, sched, depth=2)
    u1, _ = with_decay.update(grads, with_decay.init(params), params)
    u0, _ = without.update(grads, without.init(params), params)
    factors = multipliers(model, 0.5, 2)
    for key, a in flat(u1).items():
        np.testing.assert_allclose(a, flat(u0)[key] * factors[key], rtol=1e-6, err_msg=key)
    with pytest.raises(ValueError, match="layer_decay"):
        optim.scale_by_layer_decay(1.5, 2)


# ---------------------------------------------------------------------------------------------
# Drop path.
# ---------------------------------------------------------------------------------------------


def test_drop_path_is_active_only_with_a_key():
    spec = vit.make_spec("Ti/16", image_size=32, depth=2, num_classes=3)
    model = vit.ViT(spec, drop_path_rate=0.5, rngs=nnx.Rngs(0))
    plain = vit.ViT(spec, rngs=nnx.Rngs(0))  # same weights, no drop path
    x = jax.random.normal(jax.random.key(1), (8, 32, 32, 3))
    np.testing.assert_array_equal(model(x), plain(x))
    assert not np.allclose(model(x, key=jax.random.key(2)), plain(x))
    np.testing.assert_array_equal(model(x, key=jax.random.key(2)), model(x, key=jax.random.key(2)))


# ---------------------------------------------------------------------------------------------
# The classification step and the EMA.
# ---------------------------------------------------------------------------------------------


def tiny_finetune_config(**optim):
    c = digits_configs.finetune()
    c.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    c.input.batch_size = 16
    c.total_steps = 4
    c.optim.update(warmup_steps=1, **optim)
    c.mesh = DATA_MESH
    return c


def labelled_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.input.batch_size, config.model.image_size
    return {
        "image": rng.integers(0, 256, (b, s, s, 3), dtype=np.uint8),
        "label": rng.integers(0, config.model.num_classes, (b,)).astype(np.int32),
    }


@pytest.mark.slow
def test_classification_loss_without_mixing_is_smoothed_cross_entropy():
    config = tiny_finetune_config()
    trainer = trainer_lib.build_trainer(config)
    model = nnx.merge(trainer.graphdef, trainer.init(jax.random.key(0)))[0]
    model.drop_rates = (0.0,) * len(model.drop_rates)  # deterministic logits
    batch = jax.tree.map(jnp.asarray, labelled_batch(config))
    loss, aux = finetune.classification_loss(model, batch, config, jax.random.key(3))
    images = (batch["image"] / 255.0 - np.asarray(config.input.mean)) / np.asarray(config.input.std)
    logits = np.asarray(model(jnp.asarray(images, jnp.float32)), np.float64)
    logp = logits - np.log(np.exp(logits - logits.max(1, keepdims=True)).sum(1, keepdims=True))
    logp -= logits.max(1, keepdims=True)
    n = config.model.num_classes
    target = np.full((len(logits), n), 0.1 / n)
    target[np.arange(len(logits)), np.asarray(batch["label"])] += 0.9
    np.testing.assert_allclose(float(loss), -(target * logp).sum(1).mean(), rtol=1e-5)
    assert float(aux["mix_lambda"]) == 1.0


@pytest.mark.slow
def test_finetune_steps_train_and_keep_an_exact_ema():
    config = tiny_finetune_config(ema_decay=0.9)
    config.input.erase_prob = 0.25
    config.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0)
    trainer = trainer_lib.build_trainer(config)
    assert set(trainer.abstract_batch()) == {"image", "label", "erase_boxes"}
    state = trainer.init(jax.random.key(0))
    ema0 = {k: np.asarray(v) for k, v in flat(nnx.to_pure_dict(state[2])).items()}
    model0 = {k: np.asarray(v) for k, v in flat(nnx.to_pure_dict(state[0])).items()}
    assert ema0.keys() == model0.keys()
    for k in ema0:
        np.testing.assert_array_equal(ema0[k], model0[k])
    batch = labelled_batch(config)
    batch["erase_boxes"] = np.tile(np.asarray([[[2, 3, 5, 6]]], np.int32), (16, 1, 1))
    device_batch = sharding.to_global(batch, trainer.batch_sharding)
    state, metrics = trainer.step(state, device_batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and 0 < float(metrics["mix_lambda"]) <= 1
    ema1 = flat(nnx.to_pure_dict(state[2]))
    model1 = flat(nnx.to_pure_dict(state[0]))
    for k in ema0:
        want = 0.9 * ema0[k] + 0.1 * np.asarray(model1[k])
        np.testing.assert_allclose(np.asarray(ema1[k]), want, rtol=1e-6, atol=1e-7, err_msg=k)
    assert any(not np.array_equal(model0[k], np.asarray(model1[k])) for k in model0)


@pytest.mark.slow
def test_finetuning_starts_from_the_pretrained_encoder_exactly(tmp_path):
    pre = digits_configs.pretrain()
    pre.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    pre.mesh = DATA_MESH
    pt = trainer_lib.build_trainer(pre)
    pt_state = pt.init(jax.random.key(7))
    checkpoint.save_weights(str(tmp_path / "pt"), pt_state[0], {"config": {}})
    source = {k: np.asarray(v) for k, v in flat(nnx.to_pure_dict(pt_state[0])).items()}

    config = tiny_finetune_config()
    config.init_from = str(tmp_path / "pt")
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh))
    ckpts = checkpoint.RunCheckpoints(str(tmp_path / "ft"), every_steps=100)
    state, _, step, origin = loop.initial_state(trainer, ckpts, data=None)
    ckpts.close()
    assert (step, origin) == (0, "init_from")
    loaded = {k: np.asarray(v) for k, v in flat(nnx.to_pure_dict(state[0])).items()}
    encoder = [k for k in loaded if not k.startswith(("norm/", "head/"))]
    assert len(encoder) == len(loaded) - 4
    for k in encoder:
        np.testing.assert_array_equal(loaded[k], source[k], err_msg=k)
    # The new head: zero bias and weights at 1e-3 of the usual scale.
    assert np.abs(loaded["head/kernel"]).max() < 1e-3 and not loaded["head/bias"].any()


# ---------------------------------------------------------------------------------------------
# The recipes.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,variant,lr,decay,drop,epochs,warmup,classes",
    [
        (in1k_vit_b_finetune, "B/16", 2e-3 * 2048 / 512, 0.65, 0.1, 100, 20, 1000),
        (in1k_vit_l_finetune, "L/16", 1e-3 * 1024 / 256, 0.75, 0.1, 50, 5, 1000),
        (k400_mvitv2_s_finetune, "MViTv2-S", 6e-4 * 128 / 32, 0.75, 0.1, 100, 20, 400),
        (k400_mvitv2_l_finetune, "MViTv2-L", 6e-4 * 128 / 16, 0.875, 0.2, 75, 5, 400),
    ],
)
def test_finetune_configs_carry_the_reference_recipe(
    module, variant, lr, decay, drop, epochs, warmup, classes
):
    c = module.get_config()
    assert (c.model.variant, c.model.num_classes, c.model.drop_path_rate) == (
        variant,
        classes,
        drop,
    )
    assert c.total_epochs == epochs and c.optim.warmup_epochs == warmup
    assert c.optim.layer_decay == decay and c.optim.weight_decay == 0.05
    assert c.input.scale == (0.08, 1.0) and c.input.erase_prob == 0.25
    assert (c.mixup.mixup_alpha, c.mixup.cutmix_alpha, c.mixup.label_smoothing) == (0.8, 1.0, 0.1)
    video = c.model.name == "mvit"
    assert c.input.rand_augment == ("rand-m7-mstd0.5-inc1" if video else "rand-m9-mstd0.5-inc1")
    assert c.optim.clip_grad_norm == (5.0 if video else 0.0)
    trainer = trainer_lib.build_trainer(c)  # abstract: shapes, shardings and the schedule
    steps_per_epoch = c.input.examples_per_epoch * c.input.get("repeats", 1) // c.input.batch_size
    np.testing.assert_allclose(trainer.schedule(warmup * steps_per_epoch), lr, rtol=1e-4)
    if video:
        assert trainer.spec.grid == (8, 7, 7)  # the fine-tuning form: block-14 q stride back
        assert (c.eval.num_clips, c.eval.num_crops, c.eval.short_side) == (10, 1, 256)
    assert "mask" not in trainer.abstract_batch()
    assert loop.eval_interval(c) == c.eval.every_epochs * steps_per_epoch


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------
