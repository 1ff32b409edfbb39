"""Our model weights as PyTorch state dicts (the command is ``maskfeat_jax.commands.export``).

Namings (``--naming``):

  timm         ViT encoders for ``timm.create_model('vit_base_patch16_224', ...)``; the
               pretraining form is the encoder (``num_classes=0``) with MaskFeat's head
               LayerNorm as ``norm``; the fine-tuning form is ``global_pool='avg'``.
  slowfast     SlowFast's ``MaskMViT``/``MViT`` keys for ViT and MViTv2, pretraining (with
               ``mask_token``, ``pred_head.*`` and the ``hogs.0.weight_x/y`` buffers) and
               fine-tuning forms; ``write_pyth`` gives ``{"model_state": ...}`` for
               SlowFast's loader (needs torch).
  torchvision  MViTv2 in ``torchvision.models.video.mvit.MViT`` built with the MaskFeat
               block settings.

Each export carries the Python that builds the PyTorch model and what has no place in the
target. ``strict=True`` loading is the check that names and shapes agree. A naming without a
model like this one (timm for video models, torchvision for ViTs) is one error naming those
that have one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
from flax import nnx
from safetensors.numpy import save_file

from maskfeat_jax import checkpoint, models, tasks
from maskfeat_jax.errors import ConfigError
from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import mvit, transfer

# timm entry points for our standard ViT sizes (others are built from vit_base's with overrides).
_TIMM_NAMES = {
    (192, 12, 3): "vit_tiny",
    (384, 12, 6): "vit_small",
    (768, 12, 12): "vit_base",
    (1024, 24, 16): "vit_large",
    (1280, 32, 16): "vit_huge",
}


# The namings that have a model like ours, by kind of model.
_NAMINGS = {
    "image ViT": ("timm", "slowfast"),
    "video ViT": ("slowfast",),
    "MViTv2": ("slowfast", "torchvision"),
}


def family_of(spec) -> str:
    return "mvit" if isinstance(spec, mvit.MViTSpec) else "vit"


def model_kind(spec) -> str:
    if family_of(spec) == "mvit":
        return "MViTv2"
    return "video ViT" if spec.is_video else "image ViT"


def check_naming(target: str, spec) -> None:
    """One line naming the namings to use when ``target`` has no model like this one."""
    kind = model_kind(spec)
    if target not in _NAMINGS[kind]:
        options = " or ".join(f"--naming {n}" for n in _NAMINGS[kind])
        raise ConfigError(f"{target} has no {kind} like this one; use {options}.")


@dataclasses.dataclass
class Export:
    tensors: dict[str, Any]  # torch key -> array in torch layout
    left_out: dict[str, Any]  # our params the target has no place for
    target: str
    pretrain: bool
    build: str  # Python that builds the PyTorch model these tensors load into
    notes: list[str]


def export_params(flat: Mapping[str, Any], spec, target: str) -> Export:
    """Our flat params (``torch_names.flat_params``) of a model with ``spec`` -> the
    tensors of ``target`` ('timm', 'slowfast' or 'torchvision')."""
    check_naming(target, spec)
    family = family_of(spec)
    pretrain = not spec.num_classes
    naming = torch_names.naming_for(target, family, pretrain)
    tensors, left = torch_names.to_torch(transfer.unstack_blocks(flat), naming)
    for buffer in torch_names.buffers_for(naming, pretrain):
        tensors[buffer.key] = buffer.value
    build, notes = _build_instructions(spec, family, target, pretrain)
    if left:
        notes.append(
            f"Not in the {target} model: {', '.join(sorted(left))} (the Orbax checkpoint and "
            "--naming slowfast keep them)."
        )
    return Export(tensors, left, target, pretrain, build, notes)


def export_model(model, target: str) -> Export:
    """A live model (e.g. at the end of training) -> its export."""
    return export_params(torch_names.flat_params(model), model.spec, target)


def _timm_kwargs(spec) -> dict[str, Any]:
    return {
        "pretrained": False,
        "img_size": spec.image_size,
        "patch_size": spec.patch_size,
        "embed_dim": spec.width,
        "depth": spec.depth,
        "num_heads": spec.num_heads,
        "mlp_ratio": spec.mlp_dim / spec.width,
        "num_classes": spec.num_classes,
        "global_pool": "avg" if spec.num_classes else "token",
    }


def timm_model_name(spec) -> str:
    size = _TIMM_NAMES.get((spec.width, spec.depth, spec.num_heads), "vit_base")
    return f"{size}_patch16_224" if size != "vit_huge" else "vit_huge_patch14_224"


def _kwargs_text(kwargs: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kwargs.items())


def _build_instructions(spec, family: str, target: str, pretrain: bool):
    notes: list[str] = []
    if target == "timm":
        build = (
            "import timm\n"
            f"model = timm.create_model({timm_model_name(spec)!r}, "
            f"{_kwargs_text(_timm_kwargs(spec))})\n"
            "model.load_state_dict(safetensors.torch.load_file(PATH), strict=True)"
        )
        if pretrain:
            notes.append(
                "Pretraining encoder: model.forward_features(x) gives the normed tokens that "
                "MaskFeat's prediction Linear reads."
            )
        return build, notes
    if target == "torchvision":
        kwargs = torch_names.torchvision_mvit_kwargs(spec)
        if pretrain:
            kwargs["num_classes"] = spec.target_size
        blocks = kwargs.pop("block_setting")
        build = (
            "from torchvision.models.video.mvit import MViT, MSBlockConfig\n"
            f"blocks = {json.dumps(blocks)}\n"
            "model = MViT(block_setting=[MSBlockConfig(**b) for b in blocks], "
            f"{_kwargs_text(kwargs)})\n"
            "model.load_state_dict(safetensors.torch.load_file(PATH), strict=True)"
        )
        notes.append(
            "torchvision's MViT.forward reads the cls token; MaskFeat's readout is "
            + (
                "head(norm(tokens)) on every patch token (pretraining)."
                if pretrain
                else "head(norm(mean of the patch tokens)) (fine-tuning)."
            )
            + " Take the tokens after the last block (e.g. a forward hook) for it."
        )
        return build, notes
    # slowfast
    kind = "MaskMViT" if pretrain else "MViT"
    if family == "vit":
        settings = (
            f"ViT: EMBED_DIM {spec.width}, DEPTH {spec.depth}, NUM_HEADS {spec.num_heads}, "
            f"MLP_RATIO {spec.mlp_dim / spec.width:g}, patch {spec.patch_size}"
            + (f", tubelet {spec.tubelet} (SEP_POS_EMBED False)" if spec.is_video else "")
            + f", input {spec.image_size}px"
        )
    else:
        settings = (
            f"MViTv2: EMBED_DIM {spec.embed_dim}, DEPTH {spec.depth}, input "
            f"{spec.num_frames}x{spec.image_size}px (the k400_MVITv2_*_MaskFeat yamls)"
        )
    build = (
        f"# SlowFast MODEL.MODEL_NAME {kind}; {settings}\n"
        "model.load_state_dict(safetensors.torch.load_file(PATH), strict=True)"
    )
    if not pretrain:
        notes.append("Fine-tuning form: MODEL.USE_MEAN_POOLING True (mean -> norm -> head).")
    return build, notes


# ---------------------------------------------------------------------------------------------
# Files.
# ---------------------------------------------------------------------------------------------


def write_safetensors(path: str, export: Export, metadata: Mapping[str, str] = ()) -> str:
    """Writes the tensors (and string metadata) atomically: a finished file or none."""
    tensors = {k: np.ascontiguousarray(v) for k, v in export.tensors.items()}
    meta = {
        "naming": export.target,
        "form": "pretrain" if export.pretrain else "finetune",
        "build": export.build,
        **dict(metadata),
    }
    return _atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=meta))


def write_pyth(path: str, export: Export) -> str:
    """SlowFast's checkpoint layout ``{"model_state": state_dict}`` (a torch pickle of plain
    tensors, loadable with ``torch.load(..., weights_only=True)``)."""
    try:
        import torch  # optional: only .pyth files need it
    except ImportError as e:
        raise RuntimeError("Writing a .pyth file needs torch; pip install torch.") from e
    state = {k: torch.from_numpy(np.array(v, copy=True)) for k, v in export.tensors.items()}
    return _atomic_write(path, lambda tmp: torch.save({"model_state": state}, tmp))


def _atomic_write(path: str, write) -> str:
    path = os.path.abspath(path)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


# ---------------------------------------------------------------------------------------------
# Checkpoints.
# ---------------------------------------------------------------------------------------------


def model_for_config(config, rngs):
    """The model ``config`` describes: a pretraining run's has a prediction head sized by its
    target, a classifier's none (fine-tuning configs have no ``hog``/``target`` to size one)."""
    target_size = tasks.from_config(config).target_size
    return models.from_config(config.model, rngs, target_size=target_size)


def abstract_params(config) -> tuple[Any, dict[str, Any]]:
    """(spec, flat ``jax.ShapeDtypeStruct`` params) of the model ``config`` describes, without
    allocating it (full-size ViT-L or MViTv2-L included)."""
    abstract = nnx.eval_shape(lambda: model_for_config(config, nnx.Rngs(0)))
    return abstract.spec, torch_names.flat_params(abstract)


def spec_of_checkpoint(config, flat: Mapping[str, Any]):
    """The model spec the checkpoint's config describes, checked against the saved shapes."""
    spec, abstract = abstract_params(config)
    want = {k: tuple(v.shape) for k, v in abstract.items()}
    got = {k: tuple(np.shape(v)) for k, v in flat.items()}
    problems = [f"missing {k} {s}" for k, s in want.items() if k not in got]
    problems += [f"unexpected {k} {s}" for k, s in got.items() if k not in want]
    problems += [
        f"{k}: saved {got[k]}, config wants {s}"
        for k, s in want.items()
        if k in got and got[k] != s
    ]
    if problems:
        raise ConfigError(
            f"The checkpoint's weights do not fit config.model ({len(problems)} problem(s)); "
            "pass the --config that trained it:\n  " + "\n  ".join(problems[:20])
        )
    return spec


def read_checkpoint(path: str, step: int | None, config=None):
    """(weights, meta, config) of a checkpoint, the config from its meta unless given. A wrong
    --checkpoint or --step, or no recorded config without --config, is a flag mistake."""
    try:
        flat, meta = checkpoint.load_weights(path, step)
        return flat, meta, config or checkpoint.config_from_meta(meta)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--checkpoint {path}: {e}") from e


@dataclasses.dataclass
class Written:
    export: Export
    paths: list[str]  # the .safetensors file, then the .pyth when asked for


def export_checkpoint(
    path: str, target: str, out: str, *, step: int | None = None, config=None, pyth=False
) -> Written:
    """A checkpoint's model -> ``out`` (safetensors, ``target`` naming) and, with ``pyth``,
    SlowFast's ``.pyth`` next to it. ``config`` is needed only when the checkpoint does not
    record one."""
    flat, meta, config = read_checkpoint(path, step, config)
    spec = spec_of_checkpoint(config, flat)
    export = export_params(flat, spec, target)
    source = os.path.abspath(path)
    meta = {"source": source, "step": str(meta.get("step", "")), "model": config.model.to_json()}
    paths = [write_safetensors(out, export, meta)]
    if pyth:
        paths.append(write_pyth(os.path.splitext(paths[0])[0] + ".pyth", export))
    return Written(export, paths)


def summary(written: Written) -> str:
    """What was written, the Python that loads it, and the notes."""
    export, path = written.export, written.paths[0]
    lines = [f"Wrote {len(export.tensors)} tensors to {path} ({export.target} naming)."]
    lines += [f"Wrote {p} (SlowFast layout {{'model_state': ...}})." for p in written.paths[1:]]
    lines += ["", "Build the PyTorch model and load the weights:", ""]
    lines.append(export.build.replace("PATH", repr(path)))
    lines += [f"\nNote: {note}" for note in export.notes]
    return "\n".join(lines)
