"""Checkpoints: a step without its commit is ignored, restores land on a mesh of another
size, the keep policy, the resume order, weights-only checkpoints and the data position."""

import shutil

import jax
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint, loop, sharding, tasks
from maskfeat_jax import trainer as trainer_lib
from tests.support.steps import random_batch, tiny_config


@pytest.mark.slow
def test_a_copied_step_without_its_commit_is_ignored(tmp_path):
    config = tiny_config(mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
    state = trainer.init(jax.random.key(0))
    with checkpoint.RunCheckpoints(str(tmp_path), every_steps=4) as ckpts:
        assert ckpts.save(4, state, data=None, rng=jax.random.key(0), config=config)
    # What an interrupted rename or copy leaves behind.
    shutil.copytree(tmp_path / "4", tmp_path / "8.orbax-checkpoint-tmp-1700000000")
    assert checkpoint.resolve(str(tmp_path)) == (str(tmp_path), 4)
    with pytest.raises(FileNotFoundError, match="Step 8 is not in"):
        checkpoint.resolve(str(tmp_path), step=8)
    only_unfinished = tmp_path / "only_unfinished"
    shutil.copytree(tmp_path / "4", only_unfinished / "4.orbax-checkpoint-tmp-1700000000")
    with pytest.raises(FileNotFoundError, match="unfinished saves and never count"):
        checkpoint.resolve(str(only_unfinished))


def _mesh(n, axes=(("data", 1), ("fsdp", -1), ("tensor", 1))):
    return sharding.make_mesh(axes, devices=jax.devices()[:n])



@pytest.mark.slow
def test_small_replicated_arrays_are_saved_without_a_slice_program_each(tmp_path, monkeypatch):
    """On a mesh with data replicas, Orbax would split each replicated array's write across
    them through an eager slice per shape; below MIN_REPLICA_SLICE_BYTES it does not."""
    config = tiny_config(mesh=(("data", 2), ("fsdp", 4), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(0))
    slices = []
    real_slice = jax.lax.slice_in_dim
    monkeypatch.setattr(
        jax.lax, "slice_in_dim", lambda *a, **k: slices.append(a[0].shape) or real_slice(*a, **k)
    )
    for name, min_bytes in (("default", checkpoint.MIN_REPLICA_SLICE_BYTES), ("every", 0)):
        monkeypatch.setattr(checkpoint, "MIN_REPLICA_SLICE_BYTES", min_bytes)
        slices.clear()
        with checkpoint.RunCheckpoints(str(tmp_path / name), every_steps=1) as ckpts:
            ckpts.save(1, state, data=None, rng=jax.random.key(0), config=config)
        if min_bytes:
            assert slices == []
        else:  # the rule is what stops it: with no minimum every array is split
            assert len(slices) > 20
        restored = checkpoint.restore_run(
            str(tmp_path / name),
            sharding.abstract_on_mesh(trainer.abstract_state, trainer.state_shardings),
        )
        for (path, var), (_, back) in zip(
            nnx.to_flat_state(state), nnx.to_flat_state(restored.state), strict=True
        ):
            np.testing.assert_array_equal(back.get_value(), var.get_value(), err_msg=str(path))

@pytest.mark.slow
def test_restore_onto_a_mesh_of_another_size_gives_identical_values(tmp_path):
    config = tiny_config(mesh=(("data", 1), ("fsdp", -1), ("tensor", 1)))
    big = trainer_lib.build_trainer(config, _mesh(8))
    state = big.init(jax.random.key(1))
    state, _ = big.step(
        state, sharding.to_global(random_batch(config), big.batch_sharding), jax.random.key(0)
    )
    saved = {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state)}
    with checkpoint.RunCheckpoints(str(tmp_path), every_steps=1) as ckpts:
        ckpts.save(1, state, data=None, rng=jax.random.key(5), config=config)

    small = trainer_lib.build_trainer(config, _mesh(4))
    target = sharding.abstract_on_mesh(small.abstract_state, small.state_shardings)
    restored = checkpoint.restore_run(str(tmp_path), target)
    assert restored.step == 1
    np.testing.assert_array_equal(
        jax.random.key_data(restored.rng), jax.random.key_data(jax.random.key(5))
    )
    flat = dict(nnx.to_flat_state(restored.state))
    assert flat.keys() == dict(nnx.to_flat_state(state)).keys()
    for path, var in flat.items():
        np.testing.assert_array_equal(np.asarray(var.get_value()), saved[path], err_msg=path)
        want = dict(nnx.to_flat_state(small.state_shardings))[path].get_value()
        assert var.get_value().sharding == want, path
    assert len(var.get_value().sharding.device_set) == 4
    # ...and training goes on from there on the smaller mesh.
    _, metrics = small.step(
        restored.state,
        sharding.to_global(random_batch(config, 1), small.batch_sharding),
        restored.rng,
    )
    assert np.isfinite(float(metrics["loss"]))


@pytest.mark.slow
def test_keeps_the_latest_k_and_every_mth_step(tmp_path):
    config = tiny_config(mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config, _mesh(1))
    state = trainer.init(jax.random.key(0))
    saved = []
    with checkpoint.RunCheckpoints(
        str(tmp_path), every_steps=2, keep_latest=2, keep_every=4, async_save=False
    ) as ckpts:
        for step in range(1, 12):
            if ckpts.save(step, state, data=None, rng=jax.random.key(0), config=config):
                saved.append(step)
        ckpts.save(11, state, data=None, rng=jax.random.key(0), config=config, force=True)
        kept = ckpts.all_steps()
    assert saved == [2, 4, 6, 8, 10]
    assert kept == [4, 8, 10, 11]


def _trainer_and_checkpoints(tmp_path, name, config=None):
    config = config or tiny_config(mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    trainer = trainer_lib.build_trainer(config, _mesh(1))
    return trainer, checkpoint.RunCheckpoints(str(tmp_path / name), every_steps=1)


def _params(state):
    return {
        "/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state[0])
    }


@pytest.mark.slow
def test_resume_order_workdir_then_resume_then_init_from_then_scratch(tmp_path):
    base = tiny_config(mesh=(("data", 1), ("fsdp", 1), ("tensor", 1)))
    trainer, other = _trainer_and_checkpoints(tmp_path, "other_run")
    other_state = trainer.init(jax.random.key(11))
    other.save(7, other_state, data=None, rng=jax.random.key(3), config=base)
    other.close()
    weights = trainer.init(jax.random.key(12))
    checkpoint.save_weights(str(tmp_path / "weights"), weights[0], {"source": "test"})

    def start(workdir_name, **overrides):
        config = base.copy_and_resolve_references()
        config.update(overrides)
        trainer, ckpts = _trainer_and_checkpoints(tmp_path, workdir_name, config)
        with ckpts:
            return loop.initial_state(trainer, ckpts, data=None)

    state, _, step, source = start("a")
    assert (step, source) == (0, "from scratch")

    state, rng, step, source = start("b", init_from=str(tmp_path / "weights"))
    assert (step, source) == (0, "init_from")
    assert _params(state).keys() == _params(weights).keys()
    for k, v in _params(weights).items():
        np.testing.assert_array_equal(_params(state)[k], v, err_msg=k)
    assert int(state[1]["step"].get_value()) == 0  # optimizer starts fresh

    state, rng, step, source = start(
        "c", resume=str(tmp_path / "other_run"), init_from=str(tmp_path / "weights")
    )
    assert step == 7 and "config.resume" in source
    np.testing.assert_array_equal(jax.random.key_data(rng), jax.random.key_data(jax.random.key(3)))
    for k, v in _params(other_state).items():
        np.testing.assert_array_equal(_params(state)[k], v, err_msg=k)

    own_trainer, own = _trainer_and_checkpoints(tmp_path, "d")
    own.save(2, weights, data=None, rng=jax.random.key(4), config=base)
    own.close()
    state, rng, step, source = start("d", resume=str(tmp_path / "other_run"))
    assert step == 2 and source.startswith("resumed from") and "config.resume" not in source


@pytest.mark.slow
def test_weights_only_checkpoint_is_refused_as_resume(tmp_path):
    trainer, _ = _trainer_and_checkpoints(tmp_path, "unused")
    checkpoint.save_weights(str(tmp_path / "w"), trainer.init(jax.random.key(0))[0], {})
    target = sharding.abstract_on_mesh(trainer.abstract_state, trainer.state_shardings)
    with pytest.raises(ValueError, match="goes in config.init_from"):
        checkpoint.restore_run(str(tmp_path / "w"), target)


@pytest.mark.slow
def test_data_iterator_state_restores_the_following_batches(tmp_path):
    from configs import demo

    config = demo.get_config("smoke")
    config.input.batch_size = 4
    trainer = trainer_lib.build_trainer(config, _mesh(1, config.mesh))
    data = tasks.from_config(config).train_stream()
    for _ in range(3):
        next(data)
    state = trainer.init(jax.random.key(0))
    with checkpoint.RunCheckpoints(str(tmp_path), every_steps=1) as ckpts:
        ckpts.save(3, state, data=data, rng=jax.random.key(0), config=config)
        following = [next(data) for _ in range(2)]  # while the async save is in flight
    fresh = tasks.from_config(config).train_stream()
    target = sharding.abstract_on_mesh(trainer.abstract_state, trainer.state_shardings)
    checkpoint.restore_run(str(tmp_path), target, data=fresh)
    for want in following:
        got = next(fresh)
        np.testing.assert_array_equal(got["image"], want["image"])
        np.testing.assert_array_equal(got["mask"], want["mask"])
