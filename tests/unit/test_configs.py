"""Experiment configs carry the reference recipe and build on a mesh."""

import jax
import numpy as np
import pytest
from flax import nnx

from configs import (
    demo,
    demo_video,
    in1k_vit_b_pretrain,
    in1k_vit_l_pretrain,
    k400_mvitv2_l_pretrain,
    k400_mvitv2_s_pretrain,
)
from maskfeat_jax import trainer as trainer_lib


@pytest.mark.parametrize(
    "module,variant,params",
    [
        (in1k_vit_b_pretrain, "B/16", 85_882_476),
        (in1k_vit_l_pretrain, "L/16", 303_413_356),
    ],
)
def test_in1k_configs_carry_the_reference_recipe(module, variant, params):
    c = module.get_config()
    assert c.model.variant == variant and c.model.image_size == 224
    assert c.input.batch_size == 2048 and c.total_epochs == 1600
    assert c.input.scale == (0.5, 1.0) and c.mask.ratio == 0.4 and c.mask.kind == "block"
    o = c.optim
    assert (o.base_lr, o.warmup_start_lr, o.end_lr, o.lr_batch_reference) == (2e-4, 1e-6, 1e-6, 256)
    assert (o.b1, o.b2, o.eps, o.weight_decay, o.clip_grad_norm, o.warmup_epochs) == (
        0.9,
        0.999,
        1e-8,
        0.05,
        0.02,
        30,
    )
    assert c.hog.gaussian_window == 0
    trainer = trainer_lib.build_trainer(c)  # abstract only: shapes, shardings, schedule
    n = sum(int(np.prod(x.shape)) for x in jax.tree.leaves(trainer.abstract_state[0]))
    assert n == params
    steps_per_epoch = 1_281_167 // 2048
    assert trainer.total_steps == 1600 * steps_per_epoch
    np.testing.assert_allclose(trainer.schedule(30 * steps_per_epoch), 1.6e-3, rtol=1e-5)
    assert module.get_config("300ep").total_epochs == 300
    with pytest.raises(ValueError, match="Unknown variant"):
        module.get_config("nope")


def test_vit_l_config_is_sharded_over_eight_devices():
    trainer = trainer_lib.build_trainer(in1k_vit_l_pretrain.get_config())
    assert dict(trainer.mesh.shape) == {"data": 1, "fsdp": 8, "tensor": 1}
    specs = {
        "/".join(map(str, k)): v.get_value().spec
        for k, v in nnx.to_flat_state(trainer.state_shardings[0])
    }
    # Scanned blocks: the leading layer axis stays whole, the embed axis is split.
    assert specs["blocks/attn/qkv/kernel"] == jax.sharding.PartitionSpec(None, "fsdp", None)


def test_missing_data_dir_names_the_flag():
    from maskfeat_jax.data import sources

    c = in1k_vit_b_pretrain.get_config()
    with pytest.raises(ValueError, match="--config.input.data_dir"):
        sources.open_image_source(c, "train")


def test_demo_config_is_small_and_uses_the_embedded_photos():
    c = demo.get_config()
    assert c.input.dataset == "embedded" and c.total_steps == 300
    assert c.model.image_size % 16 == 0


@pytest.mark.slow
@pytest.mark.parametrize(
    "module,variant,params,epochs",
    [
        (k400_mvitv2_s_pretrain, "MViTv2-S", 36_253_356, 300),
        (k400_mvitv2_l_pretrain, "MViTv2-L", 217_247_580, 800),
    ],
)
def test_k400_configs_carry_the_reference_recipe(module, variant, params, epochs):
    c = module.get_config()
    assert (c.model.name, c.model.variant, c.model.image_size, c.model.num_frames) == (
        "mvit",
        variant,
        224,
        16,
    )
    assert c.input.batch_size == 512 and c.total_epochs == epochs
    assert c.input.scale == (0.5, 1.0) and c.input.ratio == (3 / 4, 4 / 3) and c.input.hflip
    assert tuple(c.input.mean) == (0.45,) * 3 and tuple(c.input.std) == (0.225,) * 3
    assert (c.mask.kind, tuple(c.mask.grid), c.mask.ratio) == ("cube", (8, 7, 7), 0.4)
    o = c.optim
    assert (o.base_lr, o.lr_batch_reference, o.warmup_epochs, o.warmup_start_lr, o.end_lr) == (
        1e-4,
        32,
        10,
        1e-6,
        1e-6,
    )
    assert (o.weight_decay, o.clip_grad_norm) == (0.05, 0.02)
    trainer = trainer_lib.build_trainer(c)  # abstract only
    assert trainer.spec.grid == (8, 14, 14) and trainer.spec.token_grid == (8, 56, 56)
    assert trainer_lib.count_params(trainer.abstract_state) == params
    steps_per_epoch = c.input.examples_per_epoch // 512
    assert trainer.total_steps == epochs * steps_per_epoch
    # 1e-4 per 32 clips at 512 clips: 1.6e-3 after warmup (mmpretrain's value).
    np.testing.assert_allclose(trainer.schedule(10 * steps_per_epoch), 1.6e-3, rtol=1e-5)
    batch = trainer.abstract_batch()
    assert batch["image"].shape == (512, 16, 224, 224, 3) and batch["mask"].shape == (512, 8, 7, 7)


def test_video_demo_is_an_mvit_with_cube_masks_on_the_embedded_videos():
    c = demo_video.get_config()
    assert c.model.name == "mvit" and c.mask.kind == "cube" and c.input.dataset == "embedded"
    assert demo_video.get_config("smoke").total_steps == 10


def test_video_demo_vit_variant_builds_the_tubelet_model():
    trainer = trainer_lib.build_trainer(demo_video.get_config("vit"))
    spec = trainer.spec
    assert (spec.tubelet, spec.patch_size, spec.grid, spec.token_grid) == (
        2,
        16,
        (4, 8, 8),
        (4, 8, 8),
    )
    assert trainer.abstract_batch()["mask"].shape[1:] == (4, 4, 4)
