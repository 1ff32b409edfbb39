"""Batches and meshes that do not fit the devices are refused with a message that names a
setting that works."""

import jax
import pytest

from maskfeat_jax import defaults, errors, sharding


def test_batch_not_divisible_by_devices_names_a_batch_that_works():
    mesh = sharding.make_mesh(defaults.FSDP_MESH)  # the 8 simulated devices
    rules = sharding.rules_from_config(defaults.SHARDING_RULES)
    with pytest.raises(
        errors.ConfigError, match=r"not divisible by the 8 batch shards.*multiple of 8, e.g. 8"
    ):
        sharding.check_global_batch(12, mesh, rules)
    assert len(jax.devices()) == 8


def test_mesh_that_does_not_match_the_devices():
    with pytest.raises(errors.ConfigError, match="set one size to -1"):
        sharding.make_mesh((("data", 2), ("fsdp", 3)))
