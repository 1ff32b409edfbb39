r"""Import PyTorch weights as an Orbax checkpoint for ``config.init_from``.

  python -m maskfeat_jax.import_torch --source ssl_checkpoint_epoch_00300.pyth \
      --naming slowfast --config configs/in1k_vit_b_pretrain.py --out weights/maskfeat_vit_b

Sources: SlowFast MaskFeat checkpoints (``.pyth`` holding ``{"model_state": ...}``), timm
ViT and torchvision MViT state dicts (``.pth``/``.pt``), or ``.safetensors`` files (e.g. from
``maskfeat_jax.export``). The target model is the one ``--config`` describes (any
``--config.model.*`` override applies), so weights can move to another form on the way:

  * pretraining -> fine-tuning: ``mask_token``/``pred_head`` are left out, the new ``norm``
    and ``head`` keep their fresh initialisation (as the reference fine-tuning loaders do);
  * another resolution: the ViT ``pos_embed`` is resampled bicubically over the patch grid;
    MViT ``rel_pos_*`` tables are interpolated linearly when their length changes.

Anything that does not fit is reported in one error that lists every mismatch, and a naming
without a model like the target (timm for video models, torchvision for ViTs) in one line
that names those with one; the command line prints them without a traceback. Pickled
files are read with ``torch.load(weights_only=True)``: a file that would need arbitrary
code to unpickle is refused.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
from typing import Any, Mapping

import numpy as np

from maskfeat_jax import export, torch_names
from maskfeat_jax.errors import ConfigError
from maskfeat_jax.models import transfer

_FORMS = {"auto": None, "pretrain": True, "finetune": False}


class SourceError(ConfigError):
    """``--source`` is not a readable state dict (missing, corrupt, or without tensors)."""


class UnsafeCheckpointError(SourceError):
    """The file needs arbitrary unpickling (it could run code); it is not loaded."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    """Tensors of a ``.safetensors`` file or a torch checkpoint as numpy arrays.

    Wrappers are opened: SlowFast's ``model_state``, and ``state_dict``/``model``/``module``
    as other trainers write them. Non-tensor entries (epoch, cfg) are dropped."""
    if not os.path.isfile(path):
        raise SourceError(f"No such file: {path}")
    if path.endswith(".safetensors"):
        from safetensors.numpy import load_file

        return load_file(path)
    try:
        import torch
    except ImportError as e:
        raise RuntimeError(
            f"Reading {os.path.basename(path)} needs torch (pip install torch), or convert it "
            "to .safetensors first."
        ) from e
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        reason = next(
            (ln.strip() for ln in str(e).splitlines() if "WeightsUnpickler" in ln),
            str(e).splitlines()[0] if str(e) else "unpickling failed",
        )
        if "Unsupported global" not in reason:
            raise SourceError(f"{path} is not a readable torch checkpoint (corrupt?): {reason}")
        raise UnsafeCheckpointError(
            f"Refusing to load {path}: besides tensors and plain containers it holds objects "
            "whose unpickling would run code from the file (torch.load with "
            f"weights_only=True: {reason}). If you trust its origin, re-save just its "
            "tensors, e.g. torch.save(ckpt['model_state'], 'clean.pth'), or as .safetensors."
        ) from e
    except (RuntimeError, EOFError, OSError) as e:
        raise SourceError(f"{path} is not a readable torch checkpoint (corrupt?): {e}") from e
    for wrapper in ("model_state", "state_dict", "model", "module"):
        if isinstance(obj, Mapping) and isinstance(obj.get(wrapper), Mapping):
            obj = obj[wrapper]
            break
    if not isinstance(obj, Mapping):
        raise SourceError(f"{path} holds a {type(obj).__name__}, not a state dict.")
    tensors = {k: v.detach().cpu().numpy() for k, v in obj.items() if hasattr(v, "detach")}
    if not tensors:
        raise SourceError(f"{path} has no tensors (keys: {sorted(obj)[:10]}).")
    return tensors


def source_is_pretrain(state_dict: Mapping[str, Any], target: str, spec) -> bool:
    """Whether the file holds the pretraining form (by the keys each naming uses for it)."""
    if target == "slowfast":
        return "pred_head.projections.0.weight" in state_dict or "mask_token" in state_dict
    if target == "timm":
        return "fc_norm.weight" not in state_dict
    head = state_dict.get("head.1.weight")  # torchvision: the head's size tells
    return head is not None and head.shape[0] == spec.target_dim


@dataclasses.dataclass
class Imported:
    params: dict[str, np.ndarray]  # flat, shaped for the target model
    source_pretrain: bool
    ignored: list[str]  # file keys with no place in the target (e.g. hogs.*, mask_token)
    fresh: list[str]  # target params that keep their initial values (e.g. a new head)


def import_params(
    state_dict: Mapping[str, Any],
    spec,
    template: Mapping[str, Any],
    target: str,
    source_pretrain: bool | None = None,
) -> Imported:
    """A ``target``-named state dict -> flat params for the model with ``spec`` whose
    current (initial) flat params are ``template``. The names are our per-layer paths in the
    source's form; ``models.transfer_params`` then fits shapes and forms. Abstract tensors and
    template (``jax.ShapeDtypeStruct``) check names and shapes of a full-size model."""
    from maskfeat_jax import models

    export.check_naming(target, spec)
    if source_pretrain is None:
        source_pretrain = source_is_pretrain(state_dict, target, spec)
    naming = torch_names.naming_for(target, export.family_of(spec), source_pretrain)
    paths = _source_paths(spec, template, source_pretrain)
    found, absent, unused = torch_names.rename_from_torch(state_dict, paths, naming)
    if absent:
        raise torch_names.MappingError(
            f"{len(absent)} parameter(s) missing from the {target} state dict "
            f"({'pretraining' if source_pretrain else 'fine-tuning'} form); check --naming and "
            "that --config describes the file's model:\n  "
            + "\n  ".join(f"{torch_names.torch_key(p, naming)} (for {p})" for p in absent)
        )
    params, not_used, fresh = models.transfer_params(spec, found, template)
    return Imported(params, source_pretrain, sorted(unused + not_used), fresh)


def _source_paths(spec, template: Mapping[str, Any], source_pretrain: bool) -> list[str]:
    """Our per-layer parameter paths in the source's form: the template's own when the forms
    agree, else those of an abstract model in the source's form (sizes do not matter for
    names; tracing one costs seconds for MViTv2-L, hence not when the template has them)."""
    from flax import nnx

    if source_pretrain == (not spec.num_classes):
        return list(transfer.unstack_blocks(template))
    source_spec = dataclasses.replace(
        spec, num_classes=0 if source_pretrain else max(spec.num_classes, 1)
    )
    abstract = nnx.eval_shape(lambda: _build(source_spec, nnx.Rngs(0)))
    return list(torch_names.flat_params(abstract))


def _build(spec, rngs):
    from maskfeat_jax.models import mvit, vit

    if export.family_of(spec) == "mvit":
        return mvit.MViT(spec, rngs=rngs)
    return vit.ViT(spec, rngs=rngs)


def import_to_checkpoint(
    source: str, config, target: str, out: str, source_form: str = "auto"
) -> tuple[str, Imported]:
    """Reads ``source``, fits it to ``config.model`` and writes a weights-only checkpoint."""
    from flax import nnx

    from maskfeat_jax import checkpoint

    state_dict = load_state_dict(source)  # a wrong --source fails before any model is built
    model = export.model_for_config(config, nnx.Rngs(config.seed))
    template = torch_names.flat_params(model)
    result = import_params(state_dict, model.spec, template, target, _FORMS[source_form])
    torch_names.load_flat_params(model, result.params)
    meta = {
        "config": json.loads(config.to_json_best_effort()),
        "source": os.path.abspath(source),
        "naming": target,
    }
    path = checkpoint.save_weights(out, nnx.state(model), meta)
    return path, result


def main(argv):
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    config = _CONFIG.value
    path, result = import_to_checkpoint(
        _SOURCE.value, config, _NAMING.value, _OUT.value, _SOURCE_FORM.value
    )
    form = "pretraining" if result.source_pretrain else "fine-tuning"
    print(f"Read {_SOURCE.value} ({_NAMING.value} naming, {form} form).")
    print(f"Wrote {len(result.params)} arrays to {path}.")
    if result.ignored:
        print(f"Not used from the file: {', '.join(result.ignored)}")
    if result.fresh:
        print(f"Freshly initialised (not in the file): {', '.join(result.fresh)}")
    print(f"\nFine-tune or continue from it with --config.init_from={os.path.dirname(path)}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from maskfeat_jax import cli

    _SOURCE = flags.DEFINE_string("source", None, ".pyth/.pth/.pt or .safetensors file.")
    _NAMING = flags.DEFINE_enum(
        "naming", None, list(torch_names.TARGETS), "Key names the file uses."
    )
    _OUT = flags.DEFINE_string("out", None, "Directory for the Orbax checkpoint.")
    _SOURCE_FORM = flags.DEFINE_enum(
        "source_form",
        "auto",
        list(_FORMS),
        "Form of the weights in the file (auto: from its keys).",
    )
    _CONFIG = config_flags.DEFINE_config_file("config", None, "Config of the target model.")
    flags.mark_flags_as_required(["source", "naming", "out", "config"])
    app.run(cli.exit_on_config_error(main), flags_parser=cli.parse_flags)
