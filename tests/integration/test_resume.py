"""Checkpoints survive preemption: a run killed with SIGKILL resumes to the same losses and
parameters, SIGTERM saves the current step, and a save killed mid-write never counts."""

import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import numpy as np
import pytest

from maskfeat_jax import checkpoint
from tests.support.runs import ROOT, child_env, metric_lines, run_main, start_main

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


def test_updates_that_stay_nonfinite_stop_the_run_and_keep_the_last_good_weights(
    tmp_path, uninterrupted
):
    """The finished run's step-24 checkpoint, continued with every input pixel divided by
    zero: each loss is NaN, three skipped updates in a row stop the run with one line."""
    workdir = tmp_path / "nonfinite"
    shutil.copytree(uninterrupted / "checkpoints" / "24", workdir / "checkpoints" / "24")
    good, _ = checkpoint.load_weights(str(workdir))
    proc = run_main(
        workdir,
        *RUN,
        "--config.checkpoint.every_steps=2",
        "--config.input.std=0.,0.,0.",
        "--config.optim.max_consecutive_skips=3",
        XLA_FLAGS="",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    last_line = proc.stderr.strip().splitlines()[-1]
    assert last_line.startswith("Training stopped: 3 updates in a row had a non-finite loss")
    assert "steps 25-27; the weights are those of step 24" in last_line, last_line
    assert proc.stderr.count("the update was skipped") == 3
    lines = _losses(workdir)
    assert sorted(lines) == [25, 26, 27] and not any(np.isfinite(v) for v in lines.values())
    # The checkpoint written during the skipped steps holds the step-24 weights, bit for bit.
    assert (workdir / "checkpoints" / "26").is_dir()
    _assert_same_weights(workdir / "checkpoints" / "24", workdir / "checkpoints" / "26")
    saved, _ = checkpoint.load_weights(str(workdir), step=26)
    assert saved.keys() == good.keys()
