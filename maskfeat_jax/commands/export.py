r"""Export a checkpoint's model weights to PyTorch (safetensors, optionally SlowFast ``.pyth``)::

    maskfeat-export --checkpoint runs/demo --naming timm --out demo_vit.safetensors
    maskfeat-export --checkpoint runs/k400 --naming slowfast --out mvit.safetensors --pyth

(also ``python -m maskfeat_jax.export``). Reads the ``model`` item of an Orbax checkpoint (a
run's workdir, its ``checkpoints`` directory or one step directory) and the config recorded
with it, writes the weights in the ``--naming`` of timm, SlowFast or torchvision (see
``maskfeat_jax.interop.export``), and prints the Python that builds the PyTorch model and loads
them with ``strict=True``.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from maskfeat_jax import cli
from maskfeat_jax.interop import export, torch_names

_CHECKPOINT = flags.DEFINE_string(
    "checkpoint",
    None,
    "A run's workdir, its checkpoints directory, or one step directory.",
    allow_override=True,
)
_STEP = flags.DEFINE_integer(
    "step", None, "Step to export (default: the latest).", allow_override=True
)
_NAMING = flags.DEFINE_enum(
    "naming",
    None,
    list(torch_names.TARGETS),
    "PyTorch code base whose keys to write.",
    allow_override=True,
)
_OUT = flags.DEFINE_string("out", None, "Output .safetensors file.", allow_override=True)
_PYTH = flags.DEFINE_bool(
    "pyth", False, "Also write SlowFast's {'model_state': ...} .pyth next to it."
)
_CONFIG = config_flags.DEFINE_config_file(
    "config",
    None,
    "Config of the run, if the checkpoint does not record it.",
    allow_override=True,
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    written = export.export_checkpoint(
        _CHECKPOINT.value,
        _NAMING.value,
        _OUT.value,
        step=_STEP.value,
        config=_CONFIG.value,
        pyth=_PYTH.value,
    )
    print(export.summary(written))


def run():
    cli.run_command(main, __name__, required=["checkpoint", "naming", "out"])


if __name__ == "__main__":
    run()
