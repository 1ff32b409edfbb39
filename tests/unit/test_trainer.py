"""The sharded train step on a simulated 8-device CPU mesh: equality with one device (images
and video clips), real FSDP and tensor sharding, batch and mesh checks, learning."""

import jax
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import sharding
from maskfeat_jax import trainer as trainer_lib
from tests.support.steps import (
    params_of,
    random_batch,
    random_clips,
    run_steps,
    tiny_config,
    tiny_video_config,
)


@pytest.mark.slow
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


@pytest.mark.slow
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



def _numpy_state(state):
    return {k: np.array(v.get_value()) for k, v in nnx.to_flat_state(state)}


@pytest.mark.slow
def test_a_step_with_a_nonfinite_loss_changes_nothing_but_the_step_counter():
    config = tiny_config(mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
    good = trainer_lib.build_trainer(config, mesh)
    poisoned = config.copy_and_resolve_references()
    poisoned.input.std = (0.0, 0.0, 0.0)  # every input pixel divided by zero: a NaN loss
    bad = trainer_lib.build_trainer(poisoned, mesh)
    batches = [sharding.to_global(random_batch(config, s), good.batch_sharding) for s in (0, 1)]
    rng = jax.random.key(0)
    state, _ = good.step(good.init(jax.random.key(0)), batches[0], rng)
    before = _numpy_state(state)  # the step donates its input state: copied first

    state, metrics = bad.step(state, batches[1], rng)
    assert not np.isfinite(float(metrics["loss"]))
    assert (int(metrics["skips_in_a_row"]), int(metrics["skipped_updates"])) == (1, 1)
    after = _numpy_state(state)
    assert after.keys() == before.keys()
    counters = ("last_finite", "notfinite_count", "total_notfinite")  # the skips' own records
    for key, value in before.items():
        if key == (1, "step"):
            assert after[key] == value + 1  # the schedule moves on
        elif key[-1] not in counters:  # parameters, AdamW moments and its count as they were
            np.testing.assert_array_equal(after[key], value, err_msg=str(key))

    state, metrics = good.step(state, batches[1], rng)  # and training goes on from there
    assert np.isfinite(float(metrics["loss"]))
    assert (int(metrics["skips_in_a_row"]), int(metrics["skipped_updates"])) == (0, 1)
    assert not np.array_equal(params_of(state)[("pos_embed",)], before[(0, "pos_embed")])

def test_fsdp_rules_really_shard_parameters_and_optimizer_state():
    config = tiny_config(mesh=(("data", 1), ("fsdp", 8), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(0))
    qkv = state[0]["blocks"][0]["attn"]["qkv"]["kernel"].get_value()
    assert qkv.sharding.spec == jax.sharding.PartitionSpec("fsdp", None)
    assert qkv.addressable_shards[0].data.shape == (64 // 8, 192)
    adamw = state[1]["opt_state"]["inner_state"][1][0]  # inside the skip of non-finite updates
    mu = adamw["mu"]["blocks"][0]["mlp"]["fc1"]["kernel"].get_value()
    assert mu.addressable_shards[0].data.shape == (8, 128)
    # Nearly everything is split 8 ways; only LayerNorms, small biases and the 108-d head stay
    # whole.
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


@pytest.mark.slow
def test_training_lowers_the_loss_on_a_fixed_batch():
    config = tiny_config()
    config.total_steps = 30
    batch = random_batch(config)
    _, _, losses = run_steps(config, sharding.make_mesh(config.mesh), [batch] * 30)
    assert losses[-1] < 0.7 * losses[0], losses
