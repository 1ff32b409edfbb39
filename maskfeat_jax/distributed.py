"""Joins this process to a multi-process JAX run: a Cloud TPU pod slice or a CPU/GPU cluster.

``initialize`` is the one place that knows how (the best recipe has changed between JAX
releases), and it must run before anything uses JAX devices: ``jax.distributed.initialize``
refuses to start once a backend exists, and the CPU settings it makes only reach a backend
created afterwards.

* Already initialized, or one process with nothing configured: nothing to do.
* A Cloud TPU VM: JAX finds the coordinator, the process count and this process's id in the
  TPU environment (the metadata server, or the GKE / multislice variables).
* CPU and GPU clusters: the coordinator ``HOST:PORT`` (process 0 serves there), the process
  count and this process's id come from the arguments or the environment. On CPU the
  cross-process collectives use gloo.

Settings; an argument wins over the environment, and ``maskfeat_jax.main`` has a flag each:

  ===============================  =========================  ===============================
  environment                      flag                       meaning
  ===============================  =========================  ===============================
  ``MASKFEAT_COORDINATOR``         ``--coordinator_address``  ``HOST:PORT`` of process 0
  ``MASKFEAT_NUM_PROCESSES``       ``--num_processes``        processes in the run (1: single)
  ``MASKFEAT_PROCESS_ID``          ``--process_id``           this one, 0 .. num_processes - 1
  ``MASKFEAT_DISTRIBUTED_TIMEOUT`` ``--distributed_timeout``  seconds to wait for all (300)
  ``MASKFEAT_HEARTBEAT_TIMEOUT``   ``--heartbeat_timeout``    seconds of silence before a
                                                              process counts as dead (100)
  ===============================  =========================  ===============================

The devices per CPU process are JAX's own ``JAX_NUM_CPU_DEVICES`` (``cpu_devices`` here).
When its timeout runs out JAX ends the process (no Python exception), so a coordinator that
never answers is reported first, as a ``TimeoutError``, and a process still waiting for its
peers logs what it waited for just before JAX's deadline.

A process that dies mid-run (a lost host) is noticed by the others in one of two ways: a
collective with it fails (gloo on CPU reports the closed connection at once), or JAX's
coordination service misses its heartbeats for the heartbeat timeout and ends every other
process. ``stop_after_failure`` makes the first way quick: it ends this process with one line
instead of waiting at JAX's shutdown barrier for the dead one.
"""

from __future__ import annotations

import dataclasses
import logging as py_logging
import os
import socket
import sys
import threading
import time
import traceback
from typing import Mapping, NoReturn

import jax
from absl import logging

from maskfeat_jax import errors

ENV_COORDINATOR = "MASKFEAT_COORDINATOR"
ENV_NUM_PROCESSES = "MASKFEAT_NUM_PROCESSES"
ENV_PROCESS_ID = "MASKFEAT_PROCESS_ID"
ENV_TIMEOUT = "MASKFEAT_DISTRIBUTED_TIMEOUT"
ENV_HEARTBEAT = "MASKFEAT_HEARTBEAT_TIMEOUT"
DEFAULT_TIMEOUT_SECONDS = 300
# JAX's own default. Shorter notices a lost host sooner; too short ends healthy runs whose
# host is briefly unreachable (a network blip, a VM paused for maintenance). Heartbeats come
# from a background thread, so long compiles and saves do not miss them.
DEFAULT_HEARTBEAT_SECONDS = 100
# Exit code of a process that stopped because the run failed elsewhere or in a collective:
# a launcher restarts the whole run on it (2, a config or data error, is not worth a restart).
EXIT_RUN_FAILED = 3

# Set on GKE TPU node pools and multislice jobs. TPU_ACCELERATOR_TYPE alone is no sign of a
# TPU host: it is also set on CPU machines that compile for a TPU topology ahead of time.
TPU_ENV_VARS = ("TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "MEGASCALE_COORDINATOR_ADDRESS")

_FLAG_AND_ENV = {
    "coordinator_address": f"--coordinator_address (or {ENV_COORDINATOR})",
    "num_processes": f"--num_processes (or {ENV_NUM_PROCESSES})",
    "process_id": f"--process_id (or {ENV_PROCESS_ID})",
    "timeout_seconds": f"--distributed_timeout (or {ENV_TIMEOUT})",
    "heartbeat_seconds": f"--heartbeat_timeout (or {ENV_HEARTBEAT})",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    coordinator_address: str | None
    num_processes: int | None
    process_id: int | None
    timeout_seconds: int
    heartbeat_seconds: int = DEFAULT_HEARTBEAT_SECONDS

    @property
    def configured(self) -> bool:
        return any(
            v is not None for v in (self.coordinator_address, self.num_processes, self.process_id)
        )

    def describe(self) -> str:
        who = "this process" if self.process_id is None else f"process {self.process_id}"
        of = "" if self.num_processes is None else f" of {self.num_processes}"
        return f"{who}{of}"


def _env_int(environ: Mapping[str, str], name: str) -> int | None:
    text = environ.get(name, "").strip()
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        raise ValueError(f"{name}={text!r} is not an integer.") from None


def _split_address(address: str) -> tuple[str, int]:
    host, _, port = address.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(
            f"The coordinator address {address!r} is not HOST:PORT; give process 0's address "
            f"and a free port, e.g. 10.0.0.1:1234, in {_FLAG_AND_ENV['coordinator_address']}."
        )
    return host.strip("[]"), int(port)  # [::1]:1234 -> ::1


def resolve_settings(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    timeout_seconds: float | None = None,
    environ: Mapping[str, str] | None = None,
    heartbeat_seconds: float | None = None,
) -> Settings:
    """The arguments, else the environment, checked for what is wrong on its own (a missing
    piece is only an error off TPU, where JAX cannot find it; see ``initialize``)."""
    env = os.environ if environ is None else environ
    coordinator = coordinator_address or env.get(ENV_COORDINATOR, "").strip() or None
    if num_processes is None:
        num_processes = _env_int(env, ENV_NUM_PROCESSES)
    if process_id is None:
        process_id = _env_int(env, ENV_PROCESS_ID)
    if timeout_seconds is None:
        timeout_seconds = _env_int(env, ENV_TIMEOUT) or DEFAULT_TIMEOUT_SECONDS
    if heartbeat_seconds is None:
        heartbeat_seconds = _env_int(env, ENV_HEARTBEAT) or DEFAULT_HEARTBEAT_SECONDS
    for name, value in (
        ("timeout_seconds", timeout_seconds),
        ("heartbeat_seconds", heartbeat_seconds),
    ):
        if value <= 0:
            what = "distributed" if name == "timeout_seconds" else "heartbeat"
            raise ValueError(
                f"The {what} timeout must be a positive number of seconds, got {value}; set "
                f"{_FLAG_AND_ENV[name]}."
            )
    if num_processes is not None and num_processes < 1:
        raise ValueError(
            f"num_processes={num_processes}: a run has at least 1 process; fix "
            f"{_FLAG_AND_ENV['num_processes']}."
        )
    if process_id is not None and process_id < 0:
        raise ValueError(f"process_id={process_id} is negative; fix {_FLAG_AND_ENV['process_id']}.")
    if num_processes is not None and process_id is not None and process_id >= num_processes:
        raise ValueError(
            f"process_id={process_id} is out of range for num_processes={num_processes}: give "
            f"each process a different id in 0..{num_processes - 1} "
            f"({_FLAG_AND_ENV['process_id']})."
        )
    if coordinator is not None:
        _split_address(coordinator)
    return Settings(
        coordinator, num_processes, process_id, int(timeout_seconds), int(heartbeat_seconds)
    )


def on_cloud_tpu(environ: Mapping[str, str] | None = None) -> bool:
    """Whether this is a Cloud TPU host, decided without starting a JAX backend."""
    env = os.environ if environ is None else environ
    if any(env.get(name) for name in TPU_ENV_VARS):
        return True
    try:  # what `import jax` found: libtpu installed and TPU chips on the PCI bus
        from jax._src import cloud_tpu_init
    except ImportError:
        return False
    return bool(getattr(cloud_tpu_init, "running_in_cloud_tpu_vm", False))


def backends_started() -> bool:
    try:
        from jax._src import xla_bridge
    except ImportError:  # then jax.distributed.initialize makes the same check
        return False
    return bool(xla_bridge.backends_are_initialized())


def wait_for_coordinator(address: str, timeout_seconds: float, who: str = "this process") -> None:
    """Waits until something listens at ``address``. JAX aborts the whole process (no Python
    exception) when its own connection times out, so a coordinator that never comes up is
    reported here instead, as a ``TimeoutError``."""
    host, port = _split_address(address)
    deadline = time.monotonic() + timeout_seconds
    while True:
        remaining = deadline - time.monotonic()
        try:
            with socket.create_connection((host, port), timeout=max(0.1, min(5.0, remaining))):
                return
        except OSError as e:
            reason = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"{who} waited {timeout_seconds:g} s for the coordinator at {address} "
                f"({reason}). Start process 0 with the same coordinator address, check that "
                f"this host reaches it (host name, port, firewall), or raise "
                f"{_FLAG_AND_ENV['timeout_seconds']}."
            )
        time.sleep(min(0.2, max(remaining, 0)))


def _warn_before_deadline(settings: Settings, seconds: float) -> threading.Timer:
    """Logs what is missing just before JAX's deadline, since JAX then ends the process."""

    def warn():
        address = settings.coordinator_address
        if address is None:  # found by JAX from the TPU environment
            from jax._src import distributed as jax_distributed

            state = getattr(jax_distributed, "global_state", None)
            address = getattr(state, "coordinator_address", None) or "(from the TPU environment)"
        logging.error(
            "%s has waited %.0f s at the coordinator %s for all processes to join; JAX ends "
            "this process with DEADLINE_EXCEEDED when its %d s run out. Start every process "
            "with the same coordinator address and number of processes and a different "
            "process id, or raise %s.",
            settings.describe(),
            warn_at,
            address,
            seconds,
            _FLAG_AND_ENV["timeout_seconds"],
        )

    warn_at = max(seconds - min(5.0, 0.2 * seconds), 0.0)
    timer = threading.Timer(warn_at, warn)
    timer.daemon = True
    timer.start()
    return timer


def _set_cpu_devices(cpu_devices: int | None) -> None:
    if cpu_devices is not None:
        jax.config.update("jax_num_cpu_devices", int(cpu_devices))


def initialize(
    coordinator_address: str | None = None,
    num_processes: int | None = None,
    process_id: int | None = None,
    *,
    timeout_seconds: float | None = None,
    heartbeat_seconds: float | None = None,
    cpu_devices: int | None = None,
) -> bool:
    """Joins the multi-process run if there is one; returns whether this call joined it.

    ``heartbeat_seconds``: silence after which the coordination service counts a process as
    dead and ends the others. ``cpu_devices``: devices of this process's CPU backend
    (simulated hosts, tests)."""
    settings = resolve_settings(
        coordinator_address,
        num_processes,
        process_id,
        timeout_seconds,
        heartbeat_seconds=heartbeat_seconds,
    )
    if jax.distributed.is_initialized():
        logging.info("JAX distributed system already initialized; leaving it as it is.")
        return False
    tpu = on_cloud_tpu()
    if settings.num_processes == 1 or not (tpu or settings.configured):
        _set_cpu_devices(cpu_devices)
        return False
    if not tpu:
        missing = [
            _FLAG_AND_ENV[name]
            for name in ("coordinator_address", "num_processes", "process_id")
            if getattr(settings, name) is None
        ]
        if missing:
            raise ValueError(
                f"A multi-process run off Cloud TPU needs the coordinator address, the number "
                f"of processes and this process's id (got {settings.describe()}, coordinator "
                f"{settings.coordinator_address}); set {', '.join(missing)}."
            )
    if backends_started():
        raise RuntimeError(
            "distributed.initialize must run before anything uses JAX devices (jax.devices(), "
            "device_put, meshes, jitted calls): call it first thing in main."
        )
    _set_cpu_devices(cpu_devices)
    if not tpu and jax.config.jax_cpu_collectives_implementation is None:
        jax.config.update("jax_cpu_collectives_implementation", "gloo")

    start = time.monotonic()
    if not tpu and settings.process_id != 0:
        wait_for_coordinator(
            settings.coordinator_address, settings.timeout_seconds, settings.describe()
        )
    # JAX takes whole seconds; what the probe used up is not given twice.
    remaining = max(1, round(settings.timeout_seconds - (time.monotonic() - start)))
    logging.info(
        "Joining the distributed run as %s (coordinator %s, waiting up to %d s).",
        settings.describe() if settings.configured else "found from the TPU environment",
        settings.coordinator_address or "from the TPU environment",
        remaining,
    )
    timer = _warn_before_deadline(settings, remaining)
    try:
        jax.distributed.initialize(
            coordinator_address=settings.coordinator_address,
            num_processes=settings.num_processes,
            process_id=settings.process_id,
            initialization_timeout=remaining,
            heartbeat_timeout_seconds=settings.heartbeat_seconds,
        )
    except Exception as e:
        raise RuntimeError(
            f"jax.distributed.initialize failed for {settings.describe()} (coordinator "
            f"{settings.coordinator_address or 'from the TPU environment'}): {e}"
        ) from e
    finally:
        timer.cancel()
    logging.info("Joined the distributed run as %s.", settings.describe())
    return True


def stop_after_failure(error: Exception) -> NoReturn:
    """Ends this process of a multi-process run at once, after ``error`` left its work.

    At exit JAX waits at a shutdown barrier for every process, and one that died (or is stuck
    in a collective with a dead one) never arrives: this process would wait there until the
    heartbeat timeout and then abort. A failure on one host is a failure of the run, so the
    reason goes to the log in one line (after the traceback, unless it is a user error) and the
    process exits at once, with code 2 for a user error and ``EXIT_RUN_FAILED`` otherwise; its
    peers then fail their next collective with it and do the same. Checkpoints already
    committed are complete; a save still being written is left as a temporary directory that
    the restarted run removes."""
    who = f"process {jax.process_index()} of {jax.process_count()}"
    if isinstance(error, errors.UserError):
        reason, exit_code = f"{error.label} ({who}): {error}", 2
    else:
        logging.error("%s failed:\n%s", who, "".join(traceback.format_exception(error)))
        first_line = (str(error).strip().splitlines() or [""])[0][:300]
        reason, exit_code = f"Stopping {who}: {type(error).__name__}: {first_line}", EXIT_RUN_FAILED
        if isinstance(error, jax.errors.JaxRuntimeError):
            reason += (
                ". If another process of the run died (a lost host), restart every process "
                "with the same command: the run resumes from its newest complete checkpoint."
            )
    logging.error("%s", reason)
    for handler in py_logging.getLogger().handlers:
        handler.flush()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
