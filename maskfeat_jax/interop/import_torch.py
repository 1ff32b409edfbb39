"""PyTorch weights as an Orbax checkpoint for ``config.init_from`` (the command is
``maskfeat_jax.commands.import_torch``).

Sources: SlowFast MaskFeat checkpoints (``.pyth`` holding ``{"model_state": ...}``), timm
ViT and torchvision MViT state dicts (``.pth``/``.pt``), or ``.safetensors`` files (e.g. from
``maskfeat_jax.interop.export``). The target model is the one ``--config`` describes (any
``--config.model.*`` override applies), so weights can move to another form on the way:

  * pretraining -> fine-tuning: ``mask_token``/``pred_head`` are left out, the new ``norm``
    and ``head`` keep their fresh initialization (as the reference fine-tuning loaders do);
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
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import load_file

from maskfeat_jax import checkpoint, models
from maskfeat_jax.errors import ConfigError
from maskfeat_jax.interop import export, torch_names
from maskfeat_jax.models import mvit, transfer, vit

# --source_form: whether the file holds the pretraining form (auto: from its keys).
FORMS = {"auto": None, "pretrain": True, "finetune": False}


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
        return load_file(path)
    try:
        import torch  # optional: only pickled checkpoints need it
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


HOG_TARGET_SIZE = 108


def source_is_pretrain(state_dict: Mapping[str, Any], target: str, spec) -> bool:
    """Whether the file holds the pretraining form (by the keys each naming uses for it)."""
    if target == "slowfast":
        return "pred_head.projections.0.weight" in state_dict or "mask_token" in state_dict
    if target == "timm":
        return "fc_norm.weight" not in state_dict
    head = state_dict.get("head.1.weight")  # torchvision: both forms have the same keys
    if head is None:
        return False
    # A classifier's spec records no target size; MaskFeat's pretraining head predicts HOG:
    # 3 channels x 9 bins x 2 x 2 cells of a 16-px token.
    return head.shape[0] == (spec.target_size or HOG_TARGET_SIZE)


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
    if source_pretrain == (not spec.num_classes):
        return list(transfer.unstack_blocks(template))
    if source_pretrain:  # any head size will do: only the names are read
        source_spec = dataclasses.replace(spec, num_classes=0, target_size=spec.target_size or 1)
    else:
        source_spec = dataclasses.replace(spec, num_classes=max(spec.num_classes, 1))
    abstract = nnx.eval_shape(lambda: _build(source_spec, nnx.Rngs(0)))
    return list(torch_names.flat_params(abstract))


def _build(spec, rngs):
    if export.family_of(spec) == "mvit":
        return mvit.MViT(spec, rngs=rngs)
    return vit.ViT(spec, rngs=rngs)


def import_to_checkpoint(
    source: str, config, target: str, out: str, source_form: str = "auto"
) -> tuple[str, Imported]:
    """Reads ``source``, fits it to ``config.model`` and writes a weights-only checkpoint."""
    state_dict = load_state_dict(source)  # a wrong --source fails before any model is built
    model = export.model_for_config(config, nnx.Rngs(config.seed))
    template = torch_names.flat_params(model)
    result = import_params(state_dict, model.spec, template, target, FORMS[source_form])
    torch_names.load_flat_params(model, result.params)
    meta = {
        "config": json.loads(config.to_json_best_effort()),
        "source": os.path.abspath(source),
        "naming": target,
    }
    path = checkpoint.save_weights(out, nnx.state(model), meta)
    return path, result


def summary(source: str, target: str, path: str, result: Imported) -> str:
    """What was read and written, what was left out or kept fresh, and how to use it."""
    form = "pretraining" if result.source_pretrain else "fine-tuning"
    lines = [
        f"Read {source} ({target} naming, {form} form).",
        f"Wrote {len(result.params)} arrays to {path}.",
    ]
    if result.ignored:
        lines.append(f"Not used from the file: {', '.join(result.ignored)}")
    if result.fresh:
        lines.append(f"Freshly initialized (not in the file): {', '.join(result.fresh)}")
    lines.append(f"\nFine-tune or continue from it with --config.init_from={os.path.dirname(path)}")
    return "\n".join(lines)
