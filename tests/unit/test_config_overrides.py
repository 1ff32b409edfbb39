"""Every field of every config can be set from the command line with a value of its type,
through the real ml_collections flag parser (``--config.input.data_dir=DIR`` included)."""

import glob
import os
import re
import sys
from unittest import mock

import pytest
from absl import flags
from ml_collections import config_dict, config_flags

from tests.support.runs import ROOT

# Each config file with the variants its docstring documents (None: no variant).
CONFIG_VARIANTS = {
    "demo.py": [None, "smoke"],
    "demo_video.py": [None, "smoke", "vit"],
    "digits.py": ["pretrain", "pretrain_pixels", "finetune", "probe"],
    "in1k_vit_b_pretrain.py": [None, "300ep"],
    "in1k_vit_l_pretrain.py": [None, "300ep"],
    "in1k_vit_b_finetune.py": [None],
    "in1k_vit_l_finetune.py": [None],
    "k400_mvitv2_s_pretrain.py": [None],
    "k400_mvitv2_l_pretrain.py": [None, "300ep"],
    "k400_mvitv2_s_finetune.py": [None],
    "k400_mvitv2_l_finetune.py": [None],
}
CASES = [(name, v) for name, variants in CONFIG_VARIANTS.items() for v in variants]


def config_files():
    paths = glob.glob(os.path.join(ROOT, "configs", "*.py"))
    return sorted(
        os.path.basename(p) for p in paths if not p.endswith(("__init__.py", "common.py"))
    )


def test_every_config_file_and_documented_variant_is_covered():
    assert config_files() == sorted(CONFIG_VARIANTS)
    for name, variants in CONFIG_VARIANTS.items():
        with open(os.path.join(ROOT, "configs", name)) as f:
            docstring = f.read().split('"""')[1]
        documented = set(re.findall(r"`:(\w+)`|^\s+:(\w+)\s", docstring, re.M))
        documented = {a or b for a, b in documented}
        assert documented <= set(variants), (name, documented)


def leaves(config, prefix=""):
    """(dotted path, type, value) of every leaf; placeholders report their declared type."""
    for key in config.keys():
        value = config[key]
        path = f"{prefix}{key}"
        if isinstance(value, config_dict.ConfigDict):
            yield from leaves(value, path + ".")
        elif isinstance(config._fields[key], config_dict.FieldReference):  # a placeholder
            yield path, config._fields[key].get_type(), value
        else:
            yield path, type(value), value


def other_value(kind, value):
    """A value of ``kind`` that differs from ``value`` (None: any value of the kind)."""
    if value is None:
        return {int: 3, float: 0.375, str: "/tmp/somewhere", tuple: (2, 3, 3), bool: True}[kind]
    if kind is bool:
        return not value
    if kind is int:
        return value + 1
    if kind is float:
        return value * 0.5 + 0.125
    if kind is str:
        return value + "_x" if value else "x"
    if kind is tuple:
        changed = tuple(
            other_value(type(v), v) if isinstance(v, (bool, int, float, str, tuple)) else v
            for v in value
        )
        return changed or ("bias",)
    raise AssertionError(f"no command-line form for a {kind.__name__}")


def command_line(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (tuple, float)):
        return repr(value)
    return str(value)


def parse(path, variant, *args):
    """The config as `python -m maskfeat_jax.main --config path[:variant] args...` sees it."""
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values, lock_config=True)
    spec = f"{path}:{variant}" if variant else path
    argv = ["main", f"--config={spec}", *args]
    # The config flag finds its overrides in sys.argv, as in a real run.
    with mock.patch.object(sys, "argv", argv):
        flag_values(argv)
    return flag_values.config


@pytest.mark.parametrize("name,variant", CASES, ids=[f"{n}:{v}" for n, v in CASES])
def test_every_leaf_field_overrides_with_a_value_of_its_type(name, variant):
    path = os.path.join(ROOT, "configs", name)
    defaults = parse(path, variant)
    fields = list(leaves(defaults))
    untyped = [p for p, kind, _ in fields if kind is type(None)]
    assert not untyped, f"None without a type (use config_dict.placeholder): {untyped}"
    wanted = {p: other_value(kind, value) for p, kind, value in fields}
    args = [f"--config.{p}={command_line(v)}" for p, v in wanted.items()]
    overridden = parse(path, variant, *args)
    got = {p: value for p, _, value in leaves(overridden)}
    for p, value in wanted.items():
        assert got[p] == value, (p, got[p], value)
    # Placeholders stay unset unless overridden.
    assert parse(path, variant).to_dict() == defaults.to_dict()


def test_data_dir_as_the_readme_writes_it():
    config = parse(
        os.path.join(ROOT, "configs", "k400_mvitv2_s_pretrain.py"),
        None,
        "--config.input.data_dir=/data",
        "--config.input.min_frames=8",
        "--config.model.depth=4",
        "--config.mask.grid=(2,2,2)",
    )
    assert config.input.data_dir == "/data" and config.input.min_frames == 8
    assert config.model.depth == 4 and config.mask.grid == (2, 2, 2)
    assert config.model.embed_dim is None  # untouched placeholders stay unset
