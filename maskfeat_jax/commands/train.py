r"""Trains (pretraining or fine-tuning, as the config says)::

    maskfeat-train --config configs/<experiment>.py[:variant] --workdir DIR

(also ``python -m maskfeat_jax.main``). Any config value can be overridden on the command
line, e.g. ``--config.input.batch_size=64``. Rerunning the same command resumes from the
workdir's last checkpoint.

Multi-host: on a Cloud TPU pod slice run the same command on every host. On CPU/GPU clusters
also give each process ``--coordinator_address=HOST:PORT`` (of process 0), ``--num_processes``
and its ``--process_id``, or the ``MASKFEAT_*`` variables of ``maskfeat_jax.distributed``.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from maskfeat_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py), optionally with ':variant'.",
    lock_config=True,
    allow_override=True,
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where metrics and checkpoints are written.", allow_override=True
)
# Multi-process runs off Cloud TPU; unset flags fall back to maskfeat_jax.distributed's
# environment variables.
_COORDINATOR = flags.DEFINE_string(
    "coordinator_address", None, "HOST:PORT of process 0 ($MASKFEAT_COORDINATOR)."
)
_NUM_PROCESSES = flags.DEFINE_integer(
    "num_processes", None, "Processes in the run; 1 = single ($MASKFEAT_NUM_PROCESSES)."
)
_PROCESS_ID = flags.DEFINE_integer(
    "process_id", None, "This process, 0..num_processes-1 ($MASKFEAT_PROCESS_ID)."
)
_DISTRIBUTED_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout",
    None,
    "Seconds to wait for all processes to join ($MASKFEAT_DISTRIBUTED_TIMEOUT; default 300).",
)
_HEARTBEAT_TIMEOUT = flags.DEFINE_integer(
    "heartbeat_timeout",
    None,
    "Seconds without a heartbeat after which a process counts as dead and the others stop "
    "($MASKFEAT_HEARTBEAT_TIMEOUT; default 100).",
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` and flag errors do not pay for JAX start-up.
    from maskfeat_jax import distributed

    # Before anything uses JAX devices: joining a multi-process run must come first.
    distributed.initialize(
        _COORDINATOR.value,
        _NUM_PROCESSES.value,
        _PROCESS_ID.value,
        timeout_seconds=_DISTRIBUTED_TIMEOUT.value,
        heartbeat_seconds=_HEARTBEAT_TIMEOUT.value,
    )
    import jax

    from maskfeat_jax import checkpoint, loop  # after joining, as above

    checkpoint.quiet_orbax_logging()
    try:
        metrics = loop.run(_CONFIG.value, _WORKDIR.value)
    except Exception as e:
        if jax.process_count() > 1:  # not a wait at JAX's exit barrier for a dead peer
            distributed.stop_after_failure(e)
        raise
    logging.info("Finished: %s", {k: round(v, 6) for k, v in metrics.items()})


def run():
    cli.run_command(main, __name__, required=["config", "workdir"])


if __name__ == "__main__":
    run()
