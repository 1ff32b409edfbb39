"""Multi-host on one machine: two real processes (4 CPU devices each, gloo collectives) join
through ``maskfeat_jax.distributed`` and train on the global 8-device mesh, each feeding only
its half of every global batch. They match one process with 8 devices. (Checkpoints, resumes
and faults of multi-process runs: test_faults.py.) Also: what ``initialize`` does with each
kind of setting, the errors that name the fix, and how a failed process exits."""

import os
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import distributed, sharding
from tests.support.processes import DIST_ENV, free_port, multihost_env
from tests.support.runs import ROOT, run_main
from tests.support.steps import random_batch, run_steps, tiny_config

WORKER = os.path.join(ROOT, "tests", "support", "multihost_worker.py")
PROCESSES = 2
STEPS = 4


def _tail(path, chars=3000):
    lines = [line for line in open(path).read().splitlines() if not line.startswith("[Gloo]")]
    return "\n".join(lines)[-chars:]


def run_processes(out, *, timeout=240):
    """Starts the worker as process 0 and 1 of a run and waits for both; a failure or a hang
    ends both and shows each one's output."""
    address = f"127.0.0.1:{free_port()}"
    command = [
        sys.executable,
        WORKER,
        f"--out={out}",
        f"--steps={STEPS}",
    ]
    procs, logs = [], []
    for i in range(PROCESSES):
        args = [f"--coordinator_address={address}", f"--num_processes={PROCESSES}"]
        args.append(f"--process_id={i}")
        logs.append(out.parent / f"{out.name}_process_{i}.log")
        with open(logs[-1], "w") as log:
            procs.append(
                subprocess.Popen(
                    command + args,
                    cwd=ROOT,
                    env=multihost_env(),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    deadline = time.monotonic() + timeout
    try:
        while any(p.poll() is None for p in procs):
            failed = [p for p in procs if p.poll() not in (None, 0)]
            if failed or time.monotonic() > deadline:
                break
            time.sleep(0.1)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    codes = [p.returncode for p in procs]
    if codes != [0] * PROCESSES:
        what = "timed out" if time.monotonic() > deadline else "failed"
        report = "\n".join(
            f"--- process {i} (exit code {code}), end of its output:\n{_tail(log)}"
            for i, (code, log) in enumerate(zip(codes, logs))
        )
        raise AssertionError(f"the {PROCESSES}-process run {what}:\n{report}")
    return [dict(np.load(out / f"process_{i}.npz")) for i in range(PROCESSES)]


def _section(result, prefix):
    return {k[len(prefix) :]: v for k, v in result.items() if k.startswith(prefix)}


def _assert_equal_trees(got, want, what):
    assert got.keys() == want.keys(), what
    for k in want:
        np.testing.assert_array_equal(got[k], want[k], err_msg=f"{what}: {k}")


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Two processes, STEPS steps from scratch."""
    root = tmp_path_factory.mktemp("two_processes")
    return run_processes(root / "out")


def test_two_processes_train_like_one_process_with_eight_devices(two_processes):
    results = two_processes
    for r in results:
        assert r["counts"].tolist() == [2, 8, 4]  # processes, global and local devices
        assert len(r["losses"]) == STEPS
    # Every host sees the same (replicated) metrics and the same whole arrays.
    np.testing.assert_array_equal(results[0]["losses"], results[1]["losses"])
    _assert_equal_trees(_section(results[1], "final/"), _section(results[0], "final/"), "hosts")

    # One process, all 8 devices in the same mesh shape, fed the whole global batches.
    config = tiny_config()
    batches = [random_batch(config, i) for i in range(STEPS)]
    _, state, losses = run_steps(config, sharding.make_mesh(config.mesh), batches)
    one = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state)}
    two = _section(results[0], "final/")
    assert one.keys() == two.keys()
    assert any(k.startswith("1/") for k in two)  # optimizer moments and count are compared too
    # Identical programs per device, but the cross-process all-reduces go through gloo, whose
    # summation order differs from the in-process one: float32 rounding, not bit equality.
    np.testing.assert_allclose(results[0]["losses"], losses, rtol=1e-6, atol=0)
    for k in one:
        np.testing.assert_allclose(two[k], one[k], rtol=1e-5, atol=1e-7, err_msg=k)


# ---------------------------------------------------------------------------------------------
# initialize(): what each setting does, and the errors that name the fix.
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def clean_env(monkeypatch):
    for name in DIST_ENV + distributed.TPU_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


@pytest.fixture
def jax_initialize_calls(clean_env):
    """Records calls to jax.distributed.initialize instead of making them."""
    calls = []
    clean_env.setattr(jax.distributed, "initialize", lambda **kw: calls.append(kw))
    clean_env.setattr(jax.distributed, "is_initialized", lambda: False)
    clean_env.setattr(distributed, "backends_started", lambda: False)
    return calls


def test_arguments_win_over_the_environment(clean_env):
    clean_env.setenv(distributed.ENV_COORDINATOR, "10.0.0.1:1234")
    clean_env.setenv(distributed.ENV_NUM_PROCESSES, "4")
    clean_env.setenv(distributed.ENV_PROCESS_ID, "3")
    clean_env.setenv(distributed.ENV_TIMEOUT, "60")
    clean_env.setenv(distributed.ENV_HEARTBEAT, "20")
    assert distributed.resolve_settings() == distributed.Settings("10.0.0.1:1234", 4, 3, 60, 20)
    assert distributed.resolve_settings("h:1", 2, 0, 5, heartbeat_seconds=7) == (
        distributed.Settings("h:1", 2, 0, 5, 7)
    )
    clean_env.delenv(distributed.ENV_TIMEOUT)
    clean_env.delenv(distributed.ENV_HEARTBEAT)
    settings = distributed.resolve_settings()
    assert settings.timeout_seconds == distributed.DEFAULT_TIMEOUT_SECONDS
    assert settings.heartbeat_seconds == distributed.DEFAULT_HEARTBEAT_SECONDS


@pytest.mark.parametrize(
    "kwargs,env,match",
    [
        (dict(coordinator_address="h:1", num_processes=2), {}, r"set --process_id \(or MASK"),
        (dict(num_processes=2, process_id=0), {}, r"set --coordinator_address"),
        (dict(process_id=1), {}, r"set --coordinator_address .*, --num_processes"),
        (dict(num_processes=2, process_id=2), {}, r"out of range .* in 0\.\.1"),
        (dict(num_processes=2, process_id=-1), {}, r"negative; fix --process_id"),
        (dict(num_processes=0), {}, r"at least 1 process"),
        (dict(coordinator_address="10.0.0.1"), {}, r"not HOST:PORT"),
        (dict(timeout_seconds=0), {}, r"positive number of seconds.*--distributed_timeout"),
        (dict(heartbeat_seconds=-1), {}, r"heartbeat timeout .*positive.*--heartbeat_timeout"),
        ({}, {"MASKFEAT_NUM_PROCESSES": "two"}, r"MASKFEAT_NUM_PROCESSES='two' is not an int"),
        (dict(num_processes=2), {"MASKFEAT_PROCESS_ID": "5"}, r"process_id=5 is out of range"),
    ],
)
def test_inconsistent_settings_raise_errors_that_name_the_fix(
    jax_initialize_calls, clean_env, kwargs, env, match
):
    for name, value in env.items():
        clean_env.setenv(name, value)
    with pytest.raises(ValueError, match=match):
        distributed.initialize(**kwargs)
    assert jax_initialize_calls == []


def test_single_process_and_already_initialized_are_left_alone(jax_initialize_calls, clean_env):
    assert distributed.initialize() is False  # nothing configured, not on TPU
    assert distributed.initialize(num_processes=1) is False
    assert distributed.initialize("h:1", 1, 0) is False
    clean_env.setattr(jax.distributed, "is_initialized", lambda: True)
    assert distributed.initialize("h:1", 2, 0) is False
    assert jax_initialize_calls == []


def test_on_cloud_tpu_jax_finds_the_rest_within_the_timeout(jax_initialize_calls, clean_env):
    assert distributed.on_cloud_tpu({"TPU_WORKER_HOSTNAMES": "w0,w1"})
    # Set on CPU hosts that compile for TPU ahead of time: not a TPU host by itself.
    assert not distributed.on_cloud_tpu({"TPU_ACCELERATOR_TYPE": "v5litepod-8"})
    clean_env.setattr(distributed, "on_cloud_tpu", lambda: True)
    assert distributed.initialize(timeout_seconds=42) is True
    (call,) = jax_initialize_calls
    assert call["coordinator_address"] is None and call["num_processes"] is None
    assert call["process_id"] is None and call["initialization_timeout"] == 42


def test_explicit_settings_reach_jax_with_gloo_on_cpu(jax_initialize_calls):
    before = jax.config.jax_cpu_collectives_implementation
    jax.config.update("jax_cpu_collectives_implementation", None)  # as on JAX without a default
    try:
        assert (
            distributed.initialize("127.0.0.1:1234", 2, 0, timeout_seconds=9, heartbeat_seconds=30)
            is True
        )
        assert jax.config.jax_cpu_collectives_implementation == "gloo"
    finally:
        jax.config.update("jax_cpu_collectives_implementation", before)
    (call,) = jax_initialize_calls
    assert call == dict(
        coordinator_address="127.0.0.1:1234",
        num_processes=2,
        process_id=0,
        initialization_timeout=9,
        heartbeat_timeout_seconds=30,
    )


def test_called_after_devices_are_in_use_it_says_to_call_it_first(clean_env):
    clean_env.setattr(jax.distributed, "initialize", lambda **kw: pytest.fail("was called"))
    jax.devices()
    with pytest.raises(RuntimeError, match="must run before anything uses JAX devices"):
        distributed.initialize("127.0.0.1:1234", 2, 0)


def test_a_coordinator_that_never_answers_times_out_naming_it(jax_initialize_calls):
    address = f"127.0.0.1:{free_port()}"
    t0 = time.monotonic()
    with pytest.raises(
        TimeoutError, match="process 1 of 2 waited 1 s for the coordinator at "
    ) as e:
        distributed.initialize(address, 2, 1, timeout_seconds=1)
    assert address in str(e.value) and "--distributed_timeout" in str(e.value)
    assert time.monotonic() - t0 < 5
    assert jax_initialize_calls == []


def test_process_0_without_its_peers_says_what_it_waited_for_before_jax_ends_it(tmp_path):
    # JAX aborts the process at its deadline (DEADLINE_EXCEEDED, no Python exception).
    address = f"127.0.0.1:{free_port()}"
    script = (
        "import resource\n"
        "resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # the abort leaves no core file\n"
        "from maskfeat_jax import distributed\n"
        f"distributed.initialize({address!r}, 2, 0, timeout_seconds=1)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=ROOT,
        env=multihost_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0
    assert "process 0 of 2 has waited" in proc.stderr, proc.stderr[-3000:]
    assert f"at the coordinator {address}" in proc.stderr and "DEADLINE_EXCEEDED" in proc.stderr


def test_main_stops_at_a_partial_multi_process_setup_before_jax_starts(tmp_path):
    proc = run_main(tmp_path, "--num_processes=2", "--coordinator_address=127.0.0.1:1")
    assert proc.returncode != 0
    assert "set --process_id (or MASKFEAT_PROCESS_ID)" in proc.stderr, proc.stderr[-3000:]


@pytest.mark.parametrize(
    "error,code,line",
    [
        (
            "errors.DataError(\"no split 'train'\")",
            2,
            "Data error (process 0 of 1): no split 'train'",
        ),
        (
            'RuntimeError("boom")',
            distributed.EXIT_RUN_FAILED,
            "Stopping process 0 of 1: RuntimeError: boom",
        ),
    ],
)
def test_a_failed_process_exits_at_once_with_one_line(error, code, line):
    script = (
        "from maskfeat_jax import distributed, errors\n"
        f"try:\n    raise {error}\n"
        "except Exception as e:\n    distributed.stop_after_failure(e)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], cwd=ROOT, env=multihost_env(), capture_output=True,
        text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == code, proc.stderr[-3000:]
    assert [ln for ln in proc.stderr.splitlines() if line in ln], proc.stderr[-3000:]
    assert ("Traceback" in proc.stderr) == (code != 2)  # a user error is one line only
