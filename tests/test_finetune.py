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
from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import layers, mvit, vit

DATA_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


def _flat(tree):
    return {
        optim._path_name(path): leaf for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def _multipliers(model, decay, depth):
    """The factor the optimizer's layer-decay stage applies to each parameter."""
    params = nnx.state(model, nnx.Param)
    ones = jax.tree.map(jnp.ones_like, params)
    scaled, _ = optim.scale_by_layer_decay(decay, depth).update(ones, None)
    return {k: np.asarray(v) for k, v in _flat(scaled).items()}


# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay.
# ---------------------------------------------------------------------------------------------


def test_layer_decay_matches_timm_param_groups_on_a_vit():
    """timm's ``param_groups_layer_decay`` (the rule MAE/BEiT/SlowFast share) is the reference:
    each torch parameter's ``lr_scale`` must equal our factor for the same weight."""
    timm = pytest.importorskip("timm")
    from timm.optim._param_groups import param_groups_layer_decay

    depth, decay = 3, 0.65
    spec = vit.make_spec("Ti/16", image_size=32, depth=depth, num_classes=5)
    model = vit.ViT(spec, rngs=nnx.Rngs(0))
    ours = _multipliers(model, decay, depth)
    reference = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        depth=depth,
        num_classes=5,
        global_pool="avg",
        fc_norm=True,
        class_token=True,
    )
    groups = param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=decay)
    scale_of = {}
    for group in groups:
        for p in group["params"]:
            scale_of[id(p)] = group["lr_scale"]
    torch_scale = {name: scale_of[id(p)] for name, p in reference.named_parameters()}
    checked = 0
    for path, factor in ours.items():
        name = torch_names.torch_key(path, torch_names.TIMM_VIT)
        assert name in torch_scale, (path, name)
        np.testing.assert_allclose(factor, torch_scale[name], rtol=1e-6, err_msg=path)
        checked += 1
    assert checked == len(torch_scale)  # every timm parameter has its counterpart


def test_layer_decay_rule_on_mvit_and_scanned_vit():
    """SlowFast's rule by name: stem 0, ``blocks.i`` i + 1, the rest depth + 1."""
    depth, decay = 3, 0.75
    spec = mvit.make_spec(
        "MViTv2-S", image_size=32, num_frames=4, depth=depth, stage_starts=(1, 2), num_classes=4
    )
    model = nnx.eval_shape(lambda: mvit.MViT(spec, rngs=nnx.Rngs(0)))
    got = _multipliers(model, decay, depth)
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
    factors = _multipliers(scanned, decay, depth)["blocks/attn/qkv/kernel"]
    np.testing.assert_allclose(factors[:, 0, 0], [decay**3, decay**2, decay**1], rtol=1e-6)


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
    factors = _multipliers(model, 0.5, 2)
    for key, a in _flat(u1).items():
        np.testing.assert_allclose(a, _flat(u0)[key] * factors[key], rtol=1e-6, err_msg=key)
    with pytest.raises(ValueError, match="layer_decay"):
        optim.scale_by_layer_decay(1.5, 2)


# ---------------------------------------------------------------------------------------------
# Drop path.
# ---------------------------------------------------------------------------------------------


def test_drop_path_rates_match_timm_and_drop_whole_examples():
    timm_layers = pytest.importorskip("timm.layers")
    np.testing.assert_allclose(
        layers.drop_path_rates(0.1, 12), timm_layers.calculate_drop_path_rates(0.1, 12), atol=1e-7
    )
    x = jnp.ones((4000, 3, 2))
    y = np.asarray(layers.drop_path(x, 0.25, jax.random.key(0)))
    kept = y[:, 0, 0] > 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # survivors rescaled
    assert (y[~kept] == 0).all()
    assert (np.asarray(layers.drop_path(x, 0.25, None)) == 1).all()  # evaluation: identity


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


def test_finetune_steps_train_and_keep_an_exact_ema():
    config = tiny_finetune_config(ema_decay=0.9)
    config.input.erase_prob = 0.25
    config.mixup.update(mixup_alpha=0.8, cutmix_alpha=1.0)
    trainer = trainer_lib.build_trainer(config)
    assert set(trainer.abstract_batch()) == {"image", "label", "erase_boxes"}
    state = trainer.init(jax.random.key(0))
    ema0 = {k: np.asarray(v) for k, v in _flat(nnx.to_pure_dict(state[2])).items()}
    model0 = {k: np.asarray(v) for k, v in _flat(nnx.to_pure_dict(state[0])).items()}
    assert ema0.keys() == model0.keys()
    for k in ema0:
        np.testing.assert_array_equal(ema0[k], model0[k])
    batch = labelled_batch(config)
    batch["erase_boxes"] = np.tile(np.asarray([[[2, 3, 5, 6]]], np.int32), (16, 1, 1))
    device_batch = sharding.to_global(batch, trainer.batch_sharding)
    state, metrics = trainer.step(state, device_batch, jax.random.key(1))
    assert np.isfinite(float(metrics["loss"])) and 0 < float(metrics["mix_lambda"]) <= 1
    ema1 = _flat(nnx.to_pure_dict(state[2]))
    model1 = _flat(nnx.to_pure_dict(state[0]))
    for k in ema0:
        want = 0.9 * ema0[k] + 0.1 * np.asarray(model1[k])
        np.testing.assert_allclose(np.asarray(ema1[k]), want, rtol=1e-6, atol=1e-7, err_msg=k)
    assert any(not np.array_equal(model0[k], np.asarray(model1[k])) for k in model0)


def test_finetuning_starts_from_the_pretrained_encoder_exactly(tmp_path):
    pre = digits_configs.pretrain()
    pre.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    pre.mesh = DATA_MESH
    pt = trainer_lib.build_trainer(pre)
    pt_state = pt.init(jax.random.key(7))
    checkpoint.save_weights(str(tmp_path / "pt"), pt_state[0], {"config": {}})
    source = {k: np.asarray(v) for k, v in _flat(nnx.to_pure_dict(pt_state[0])).items()}

    config = tiny_finetune_config()
    config.init_from = str(tmp_path / "pt")
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh))
    ckpts = checkpoint.RunCheckpoints(str(tmp_path / "ft"), every_steps=100)
    state, _, step, origin = loop.initial_state(trainer, ckpts, data=None)
    ckpts.close()
    assert (step, origin) == (0, "init_from")
    loaded = {k: np.asarray(v) for k, v in _flat(nnx.to_pure_dict(state[0])).items()}
    encoder = [k for k in loaded if not k.startswith(("norm/", "head/"))]
    assert len(encoder) == len(loaded) - 4
    for k in encoder:
        np.testing.assert_array_equal(loaded[k], source[k], err_msg=k)
    # The new head: zero bias and weights at 1e-3 of the usual scale.
    assert np.abs(loaded["head/kernel"]).max() < 1e-3 and not loaded["head/bias"].any()


# ---------------------------------------------------------------------------------------------
# The recipes.
# ---------------------------------------------------------------------------------------------


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


def test_digits_finetune_command_trains_evaluates_and_writes_results(tmp_path):
    import json

    from tests.runs import run_main

    workdir = tmp_path / "ft"
    proc = run_main(
        workdir,
        "--config.model.depth=2",
        "--config.total_epochs=4",
        "--config.optim.warmup_epochs=1",
        "--config.eval.every_steps=6",
        config="configs/digits.py:finetune",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == 12 and results["num_examples"] == 539 and results["split"] == "test"
    assert (workdir / "eval" / "test_step6.json").exists()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval_top1" in line]
    assert [line["step"] for line in evals] == [6, 12]
    assert 0.0 <= evals[-1]["eval_top1"] <= 1.0


def test_video_finetune_with_multi_view_testing(tmp_path):
    """A small MViT fine-tuned on the embedded videos, then tested with 2 clips x 3 crops."""
    from configs import demo_video

    c = demo_video.get_config("smoke")
    c.model.update(num_classes=21, drop_path_rate=0.1, image_size=64, num_frames=4)
    c.model.update(embed_dim=16, depth=3, stage_starts=(1, 2))
    c.input.update(
        batch_size=8,
        scale=(0.08, 1.0),
        rand_augment="rand-m7-mstd0.5-inc1",
        erase_prob=0.25,
        repeats=2,
        examples_per_epoch=21,
    )
    c.mixup = defaults.finetune_config().mixup
    c.optim.update(layer_decay=0.75, ema_decay=0.99, warmup_steps=1)
    c.total_steps = 2
    c.eval = defaults.finetune_config().eval
    c.eval.update(split="validation", batch_size=16, num_clips=2, num_crops=3, short_side=64)
    del c.mask
    last = loop.run(c, str(tmp_path))
    assert np.isfinite(last["loss"])
    assert (last["eval_num_examples"], last["eval_num_views"]) == (21, 126)
    assert last["eval_views_per_example_min"] == last["eval_views_per_example_max"] == 6
    assert last["eval_invalid_views"] == 128 - 126
    assert 0 <= last["eval_ema_top1"] <= 1  # the EMA model is evaluated too
