r"""Evaluates a fine-tuned checkpoint on the config's eval split::

    maskfeat-eval --config configs/<finetune>.py[:variant] --workdir DIR [--checkpoint PATH]

(also ``python -m maskfeat_jax.evaluate``). Top-1/top-5 go to ``DIR/results.json`` and
``DIR/eval/<split>_step<N>.json`` and are printed as JSON.
"""

from __future__ import annotations

import json

from absl import app, flags
from ml_collections import config_flags

from maskfeat_jax import checkpoint, cli, files, loop, trainer

_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Fine-tuning config.", allow_override=True
)
_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (results are written here).", allow_override=True
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint (default: the workdir's).", allow_override=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    config, workdir = _CONFIG.value, _WORKDIR.value
    path = _CHECKPOINT.value or files.join(workdir, "checkpoints")
    if not files.exists(path):
        raise app.UsageError(f"no checkpoint at {path}; pass --checkpoint PATH")
    built = trainer.build_trainer(config)
    restored = checkpoint.restore_run(path, built.abstract_state_on_mesh())
    result = loop.evaluator_for(built, workdir)(restored.state, restored.step)
    print(json.dumps(result, indent=2, sort_keys=True))


def run():
    cli.run_command(main, __name__, required=["config", "workdir"])


if __name__ == "__main__":
    run()
