r"""Does MaskFeat pretraining help? The digits study (``experiments/digits.py``)::

    maskfeat-digits --workdir runs/digits [--seeds 0,1,2] [--rows random,hog,pixels] \
        [--hog_inputs pixels,normalized] [--noprobe]

(also ``python -m maskfeat_jax.experiments.digits``). Prints the results table and writes
``WORKDIR/results.md`` and ``WORKDIR/results.json``; rerunning reads finished pieces back.
"""

from __future__ import annotations

from absl import app, flags

from maskfeat_jax import cli
from maskfeat_jax.experiments import digits

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Where runs and the results go.", allow_override=True
)
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each one is a full repeat).")
_PRETRAIN_EPOCHS = flags.DEFINE_integer(
    "pretrain_epochs", None, "Override (default: config); warmup keeps its share."
)
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs", None, "Override (default: config); warmup keeps its share."
)
_ROWS = flags.DEFINE_list(
    "rows", ["random", "hog", "pixels"], "Initial weights to compare: random, hog, pixels."
)
_HOG_INPUTS = flags.DEFINE_list(
    "hog_inputs", ["pixels"], "config.hog.input of the HOG-target rows (pixels, normalized)."
)
_PROBE = flags.DEFINE_bool("probe", True, "Also train a linear probe for every row.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    study = digits.Study(
        workdir=_WORKDIR.value,
        seeds=tuple(int(s) for s in _SEEDS.value),
        rows=tuple(_ROWS.value),
        hog_inputs=tuple(_HOG_INPUTS.value),
        probe=_PROBE.value,
        pretrain_epochs=_PRETRAIN_EPOCHS.value,
        finetune_epochs=_FINETUNE_EPOCHS.value,
    )
    print(digits.run(study))


def run():
    cli.run_command(main, __name__, required=["workdir"])


if __name__ == "__main__":
    run()
