"""Checkpoints survive preemption: a killed run resumes to the same losses and parameters,
unfinished saves never count, restores land on a mesh of another size, the resume order
holds, and weights-only initialization adapts the model form."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint, loop, sharding, tasks
from maskfeat_jax import trainer as trainer_lib
from tests.runs import ROOT, child_env, metric_lines, run_main, start_main
from tests.test_train import random_batch, tiny_config

# A short demo run with a checkpoint every 8 steps and a metrics line every step.
RUN = (
    "--config.total_steps=30",
    "--config.checkpoint.every_steps=8",
    "--config.log_every_steps=1",
    "--config.input.batch_size=8",
)


def _wait_for(predicate, proc, timeout=300, what="condition"):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            raise AssertionError(f"the run ended (code {proc.returncode}) before {what}")
        time.sleep(0.02)
    proc.kill()
    raise AssertionError(f"timed out waiting for {what}")


def _losses(workdir):
    return {line["step"]: line["loss"] for line in metric_lines(workdir)}


def _assert_same_weights(a, b):
    wa, _ = checkpoint.load_weights(str(a))
    wb, _ = checkpoint.load_weights(str(b))
    assert wa.keys() == wb.keys()
    for k in wa:
        np.testing.assert_array_equal(wa[k], wb[k], err_msg=k)


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory):
    workdir = tmp_path_factory.mktemp("uninterrupted")
    proc = run_main(workdir, *RUN, XLA_FLAGS="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


def test_run_killed_mid_training_resumes_to_identical_losses_and_parameters(
    tmp_path, uninterrupted
):
    workdir = tmp_path / "killed"
    proc = start_main(workdir, *RUN, XLA_FLAGS="")
    ckpt8 = workdir / "checkpoints" / "8"
    _wait_for(
        lambda: ckpt8.is_dir() and max(_losses(workdir), default=0) >= 11,
        proc,
        what="step 11",
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = max(_losses(workdir))
    assert killed_at < 30, "the run finished before it could be killed"

    resumed = run_main(workdir, *RUN, XLA_FLAGS="")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resumed from" in resumed.stderr and "continuing at step" in resumed.stderr

    want, got = _losses(uninterrupted), _losses(workdir)
    assert sorted(got) == list(range(1, 31))
    assert got == want  # every step, bit for bit: params, optimizer and data all restored
    _assert_same_weights(uninterrupted / "checkpoints" / "30", workdir / "checkpoints" / "30")


def test_sigterm_saves_at_the_current_step_and_the_rerun_completes(tmp_path, uninterrupted):
    workdir = tmp_path / "preempted"
    log = tmp_path / "preempted.log"
    proc = start_main(workdir, *RUN, log=log, XLA_FLAGS="")
    _wait_for(lambda: max(_losses(workdir), default=0) >= 3, proc, what="step 3")
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    text = log.read_text()
    assert "Stopped at step" in text and "Run the same command again" in text
    saved = checkpoint.resolve(str(workdir))[1]
    assert 3 <= saved < 30 and saved == max(_losses(workdir))

    resumed = run_main(workdir, *RUN, XLA_FLAGS="")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"continuing at step {saved + 1}" in resumed.stderr
    assert _losses(workdir) == _losses(uninterrupted)


def test_a_save_killed_mid_write_is_never_taken_for_a_checkpoint(tmp_path):
    directory = tmp_path / "ckpts"
    # A child saves step 1 (small), then step 2 (large) and is killed while writing it.
    script = textwrap.dedent(
        f"""
        import ml_collections, numpy as np, jax
        from flax import nnx
        from maskfeat_jax import checkpoint

        class Big(nnx.Module):
            def __init__(self, n):
                self.w = nnx.Param(jax.numpy.full((n,), 1.0))

        cfg = ml_collections.ConfigDict(dict(seed=0))
        ckpts = checkpoint.RunCheckpoints({str(directory)!r}, every_steps=1, keep_latest=5)
        opt = nnx.state(Big(1))
        small = nnx.State({{0: nnx.state(Big(4)), 1: opt}})
        ckpts.save(1, small, data=None, rng=jax.random.key(0), config=cfg)
        ckpts.wait_until_finished()
        big = nnx.State({{0: nnx.state(Big(100_000_000)), 1: opt}})
        print("saving", flush=True)
        ckpts.save(2, big, data=None, rng=jax.random.key(0), config=cfg)
        ckpts.wait_until_finished()
        print("done", flush=True)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=child_env(XLA_FLAGS=""),
        stdout=subprocess.PIPE,
        text=True,
    )

    def writing_step_2():
        return any(n.startswith("2.orbax-checkpoint-tmp") for n in os.listdir(directory))

    _wait_for(lambda: directory.is_dir() and writing_step_2(), proc, what="the step-2 save")
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (directory / "2").exists()
    assert any(n.startswith("2.orbax-checkpoint-tmp") for n in os.listdir(directory))

    assert checkpoint.resolve(str(directory)) == (str(directory), 1)
    weights, meta = checkpoint.load_weights(str(directory))
    assert meta["step"] == 1 and weights["w"].shape == (4,)
    # A manager that writes again cleans the leftovers up (in the background).
    checkpoint.RunCheckpoints(str(directory), every_steps=1).close()
    deadline = time.time() + 30
    while sorted(os.listdir(directory)) != ["1"] and time.time() < deadline:
        time.sleep(0.05)
    assert sorted(os.listdir(directory)) == ["1"]


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


def test_weights_only_checkpoint_is_refused_as_resume(tmp_path):
    trainer, _ = _trainer_and_checkpoints(tmp_path, "unused")
    checkpoint.save_weights(str(tmp_path / "w"), trainer.init(jax.random.key(0))[0], {})
    target = sharding.abstract_on_mesh(trainer.abstract_state, trainer.state_shardings)
    with pytest.raises(ValueError, match="goes in config.init_from"):
        checkpoint.restore_run(str(tmp_path / "w"), target)


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
