r"""Linear probe of a pretrained encoder::

    maskfeat-probe --config configs/digits.py:probe \
        --config.init_from=runs/digits/pretrain --workdir runs/digits/probe

(also ``python -m maskfeat_jax.linear_probe``). Top-1/top-5 go to
``WORKDIR/linear_probe.json`` and are printed as JSON.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from maskfeat_jax import checkpoint, cli, linear_probe

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config with a `probe` section.", allow_override=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where linear_probe.json is written.", allow_override=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    result = linear_probe.run(_CONFIG.value, _WORKDIR.value)
    print(json.dumps(result, indent=2, sort_keys=True))


def run():
    cli.run_command(main, __name__, required=["config", "workdir"])


if __name__ == "__main__":
    run()
