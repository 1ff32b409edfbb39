"""Optimizer rules: weight decay only on weights and decoupled, the learning-rate schedule and
steps from epochs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import models, optim
from tests.support.steps import (
    tiny_config,
)


def test_weight_decay_exempts_biases_and_norms_only():
    model = nnx.eval_shape(
        lambda: models.from_config(tiny_config().model, nnx.Rngs(0), target_size=108)
    )
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
