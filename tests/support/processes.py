"""Child processes of a multi-host run on this machine: a free port for the coordinator and
an environment without the tests' 8-device flag or any MASKFEAT_* setting."""

import os
import socket

from maskfeat_jax import distributed
from tests.support.runs import ROOT, xla_flags

DIST_ENV = (
    distributed.ENV_COORDINATOR,
    distributed.ENV_NUM_PROCESSES,
    distributed.ENV_PROCESS_ID,
    distributed.ENV_TIMEOUT,
    distributed.ENV_HEARTBEAT,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def multihost_env(**env):
    """The test's environment without its 8-device XLA flag or any MASKFEAT_* setting."""
    base = {k: v for k, v in os.environ.items() if k not in DIST_ENV}
    return dict(base, PYTHONPATH=ROOT, XLA_FLAGS=xla_flags(), JAX_PLATFORMS="cpu", **env)
