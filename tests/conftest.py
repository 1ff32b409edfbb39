"""Test session set-up: 8 simulated CPU devices for the sharded tests (before JAX starts), the
shared fixtures, and markers by folder: tests/unit -> unit, parity -> parity, integration ->
integration + slow, multihost -> multihost + slow. A unit or parity test that takes more than
a few seconds carries its own ``@pytest.mark.slow``; the rest is the fast tier."""

import os
import pathlib

import pytest

# The tests run on CPU; with libtpu installed (for the planner) JAX would otherwise try to start
# a TPU backend in every process and take libtpu's machine-wide lock.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")

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


def pytest_collection_modifyitems(config, items):
    for item in items:
        folder = pathlib.Path(item.fspath).relative_to(_TESTS).parts[0]
        for name in _FOLDER_MARKS.get(folder, ()):
            item.add_marker(getattr(pytest.mark, name))
