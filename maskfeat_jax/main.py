r"""Entry point: ``python -m maskfeat_jax.main --config configs/<experiment>.py[:variant] --workdir DIR``.

Any config value can be overridden on the command line, e.g. ``--config.input.batch_size=64``.
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Experiment config file (configs/*.py), optionally with ':variant'.",
    lock_config=True,
)
_WORKDIR = flags.DEFINE_string("workdir", None, "Where metrics and checkpoints are written.")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    # Imported here so that `--help` and flag errors do not pay for JAX start-up.
    from maskfeat_jax import checkpoint, train

    checkpoint.quiet_orbax_logging()
    config = _CONFIG.value
    workdir = _WORKDIR.value
    os.makedirs(workdir, exist_ok=True)
    logging.info("Config:\n%s", config)
    metrics = train.run(config, workdir)
    logging.info("Finished: %s", {k: round(v, 6) for k, v in metrics.items()})


if __name__ == "__main__":
    app.run(main)
