r"""Import PyTorch weights as an Orbax checkpoint for ``config.init_from``::

    maskfeat-import --source ssl_checkpoint_epoch_00300.pyth --naming slowfast \
        --config configs/in1k_vit_b_pretrain.py --out weights/maskfeat_vit_b

(also ``python -m maskfeat_jax.import_torch``). Sources: SlowFast MaskFeat checkpoints
(``.pyth`` holding ``{"model_state": ...}``), timm ViT and torchvision MViT state dicts
(``.pth``/``.pt``), or ``.safetensors`` files (e.g. from ``maskfeat-export``). The target
model is the one ``--config`` describes (any ``--config.model.*`` override applies);
pretraining weights go into a fine-tuning model and to another resolution as the reference
loaders do (see ``maskfeat_jax.interop.import_torch``). A mismatch is one error listing every
problem, printed without a traceback. Pickled files are read with
``torch.load(weights_only=True)``: one that would run code is refused.
"""

from __future__ import annotations

from absl import app, flags
from ml_collections import config_flags

from maskfeat_jax import cli
from maskfeat_jax.interop import import_torch, torch_names

_SOURCE = flags.DEFINE_string(
    "source", None, ".pyth/.pth/.pt or .safetensors file.", allow_override=True
)
_NAMING = flags.DEFINE_enum(
    "naming", None, list(torch_names.TARGETS), "Key names the file uses.", allow_override=True
)
_OUT = flags.DEFINE_string("out", None, "Directory for the Orbax checkpoint.", allow_override=True)
_SOURCE_FORM = flags.DEFINE_enum(
    "source_form",
    "auto",
    list(import_torch.FORMS),
    "Form of the weights in the file (auto: from its keys).",
)
_CONFIG = config_flags.DEFINE_config_file(
    "config", None, "Config of the target model.", allow_override=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    path, result = import_torch.import_to_checkpoint(
        _SOURCE.value, _CONFIG.value, _NAMING.value, _OUT.value, _SOURCE_FORM.value
    )
    print(import_torch.summary(_SOURCE.value, _NAMING.value, path, result))


def run():
    cli.run_command(main, __name__, required=["source", "naming", "out", "config"])


if __name__ == "__main__":
    run()
