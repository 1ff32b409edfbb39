"""Test session set-up: 8 simulated CPU devices for the sharded tests (before JAX starts), the
shared fixtures, and markers by folder: tests/unit -> unit, parity -> parity, integration ->
integration + slow, multihost -> multihost + slow. A unit or parity test that takes more than
a few seconds carries its own ``@pytest.mark.slow``; the rest is the fast tier."""

import os
import pathlib
import shutil
import tempfile

import pytest

from tests.support.runs import xla_flags

# The tests run on CPU; with libtpu installed (for the planner) JAX would otherwise try to start
# a TPU backend in every process and take libtpu's machine-wide lock.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", xla_flags("--xla_force_host_platform_device_count=8"))

# One persistent compilation cache for the whole run, set before the workers start so that
# both workers and every process a test starts share it: a program already compiled in this
# run (a demo step, a resumed run's step) is loaded instead of compiled again. The size limit
# makes JAX lock the folder around each read and write, so parallel processes never read an
# entry half written. The process that made the folder removes it at the end.
_CACHE_OWNER = "TESTS_COMPILATION_CACHE_OWNER"
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="maskfeat-jax-tests-xla-")
    os.environ[_CACHE_OWNER] = str(os.getpid())
    os.environ.setdefault("JAX_COMPILATION_CACHE_MAX_SIZE", str(16 << 30))
    os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.5")

import jax  # noqa: E402

jax.config.update("jax_num_cpu_devices", 8)

pytest_plugins = [
    "tests.support.augment_cases",
    "tests.support.hog_reference",
    "tests.support.video_data",
    "tests.support.video_folders",
    "tests.support.video_paths",
]

_TESTS = pathlib.Path(__file__).parent
_FOLDER_MARKS = {
    "unit": ("unit",),
    "parity": ("parity",),
    "integration": ("integration", "slow"),
    "multihost": ("multihost", "slow"),
}


def pytest_unconfigure(config):
    if os.environ.get(_CACHE_OWNER) == str(os.getpid()):
        shutil.rmtree(os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = pathlib.Path(item.fspath).relative_to(_TESTS).parts[0]
        for name in _FOLDER_MARKS.get(folder, ()):
            item.add_marker(getattr(pytest.mark, name))
