r"""Plan a TPU pod run from any machine: compile the real train step for a TPU topology.

    python -m maskfeat_jax.plan --config configs/in1k_vit_l_pretrain.py --topology v5e:16x16 \
        [--config.model.dtype=bfloat16 --config.model.remat=True ...] [--num_slices 2] \
        [--json plan.json] [--dump_hlo step.hlo]

(``maskfeat-plan`` once installed, ``python -m maskfeat_jax.commands.plan`` too.) With
``libtpu`` installed (``pip install -r requirements-plan.txt``), JAX describes the topology's
chips without having them; the config's mesh and sharding rules are laid over those chips and
the same jitted step that training runs is compiled for them (ahead of time). The report gives,
per chip: HBM for arguments (parameters, optimizer state, the batch shard), temporaries and
code against the chip's capacity; FLOPs per step; the collectives in the compiled program and
their bytes; and a projected step time with the implied MFU, examples/s and the wall-clock time
of the config's whole schedule. How far each number can be trusted: ``planning/roofline.py``.
A config that does not fit stops (exit code 2) with a message naming the knobs.
"""

from __future__ import annotations

import json
import sys

from absl import flags
from ml_collections import config_flags

from maskfeat_jax import cli
from maskfeat_jax.planning import chips, report

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Experiment config file.", allow_override=True
)
_TOPOLOGY = flags.DEFINE_string("topology", None, "TPU topology, e.g. v5e:16x16.")
_JSON = flags.DEFINE_string(
    "json", None, "Also write the figures to this JSON file.", allow_override=True
)
_SLICES = flags.DEFINE_integer(
    "num_slices", 1, "Slices joined over the data-centre network (multi-slice)."
)
_HLO = flags.DEFINE_string("dump_hlo", None, "Write the compiled program's HLO text here.")


def main(argv):
    del argv
    # Lazy: JAX and orbax start-up (seconds) that --help must not pay for.
    from maskfeat_jax import checkpoint
    from maskfeat_jax.planning import roofline

    checkpoint.quiet_orbax_logging()
    try:
        result = roofline.plan(
            _CONFIG.value, _TOPOLOGY.value, hlo_path=_HLO.value, num_slices=_SLICES.value
        )
    except chips.PlanError as e:
        print(f"Does not plan: {e}", file=sys.stderr)
        sys.exit(2)
    print(report.format_report(result))
    if _JSON.value:
        with open(_JSON.value, "w") as f:
            json.dump(result, f, indent=2)


def run():
    cli.run_command(main, __name__, required=["config", "topology"])


if __name__ == "__main__":
    run()
