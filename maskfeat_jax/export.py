r"""Export model weights to PyTorch: ``python -m maskfeat_jax.export``.

  python -m maskfeat_jax.export --checkpoint runs/demo --naming timm --out demo_vit.safetensors
  python -m maskfeat_jax.export --checkpoint runs/k400 --naming slowfast \
      --out mvit.safetensors --pyth

Reads the ``model`` item of an Orbax checkpoint (a run's workdir, its ``checkpoints``
directory or one step directory) and the config recorded with it, and writes a
``safetensors`` file (no pickle) in one of these namings:

  timm         ViT encoders for ``timm.create_model('vit_base_patch16_224', ...)``; the
               pretraining form is the encoder (``num_classes=0``) with MaskFeat's head
               LayerNorm as ``norm``; the fine-tuning form is ``global_pool='avg'``.
  slowfast     SlowFast's ``MaskMViT``/``MViT`` keys for ViT and MViTv2, pretraining (with
               ``mask_token``, ``pred_head.*`` and the ``hogs.0.weight_x/y`` buffers) and
               fine-tuning forms; ``--pyth`` also writes ``{"model_state": ...}`` for
               SlowFast's loader (needs torch).
  torchvision  MViTv2 in ``torchvision.models.video.mvit.MViT`` built with the MaskFeat
               block settings.

It prints the arguments that build the PyTorch model, and what has no place in the target.
``strict=True`` loading is the check that names and shapes agree. A naming without a model
like this one (timm for video models, torchvision for ViTs) ends with one line naming those
that have one.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Mapping

import numpy as np

from maskfeat_jax import torch_names
from maskfeat_jax.errors import ConfigError
from maskfeat_jax.models import transfer

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
    from maskfeat_jax.models import mvit

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
    return dict(
        pretrained=False,
        img_size=spec.image_size,
        patch_size=spec.patch_size,
        embed_dim=spec.width,
        depth=spec.depth,
        num_heads=spec.num_heads,
        mlp_ratio=spec.mlp_dim / spec.width,
        num_classes=spec.num_classes,
        global_pool="avg" if spec.num_classes else "token",
    )


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
            kwargs["num_classes"] = spec.target_dim
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
    from safetensors.numpy import save_file

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
        import torch
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
# Command line.
# ---------------------------------------------------------------------------------------------


def model_for_config(config, rngs):
    """The model ``config.model`` describes. Only a pretraining config has a prediction head
    sized by its target; fine-tuning configs have no ``hog``/``target`` to size one."""
    from maskfeat_jax import finetune, models, train

    if finetune.is_classification(config):
        return models.build_model(config.model, rngs)
    patch = models.model_spec(config.model).patch_size
    return models.build_model(config.model, rngs, target_dim=train.target_dim(config, patch))


def abstract_params(config) -> tuple[Any, dict[str, Any]]:
    """(spec, flat ``jax.ShapeDtypeStruct`` params) of the model ``config`` describes, without
    allocating it (full-size ViT-L or MViTv2-L included)."""
    from flax import nnx

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
    from maskfeat_jax import checkpoint

    try:
        flat, meta = checkpoint.load_weights(path, step)
        return flat, meta, config or checkpoint.config_from_meta(meta)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"--checkpoint {path}: {e}") from e


def main(argv):
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    flat, meta, config = read_checkpoint(_CHECKPOINT.value, _STEP.value, _CONFIG.value)
    spec = spec_of_checkpoint(config, flat)
    export = export_params(flat, spec, _NAMING.value)
    source = os.path.abspath(_CHECKPOINT.value)
    path = write_safetensors(
        _OUT.value,
        export,
        {"source": source, "step": str(meta.get("step", "")), "model": config.model.to_json()},
    )
    print(f"Wrote {len(export.tensors)} tensors to {path} ({export.target} naming).")
    if _PYTH.value:
        pyth = os.path.splitext(path)[0] + ".pyth"
        print(f"Wrote {write_pyth(pyth, export)} (SlowFast layout {{'model_state': ...}}).")
    print("\nBuild the PyTorch model and load the weights:\n")
    print(export.build.replace("PATH", repr(path)))
    for note in export.notes:
        print(f"\nNote: {note}")


if __name__ == "__main__":
    from absl import app, flags
    from ml_collections import config_flags

    from maskfeat_jax import cli

    _CHECKPOINT = flags.DEFINE_string(
        "checkpoint", None, "A run's workdir, its checkpoints directory, or one step directory."
    )
    _STEP = flags.DEFINE_integer("step", None, "Step to export (default: the latest).")
    _NAMING = flags.DEFINE_enum(
        "naming", None, list(torch_names.TARGETS), "PyTorch code base whose keys to write."
    )
    _OUT = flags.DEFINE_string("out", None, "Output .safetensors file.")
    _PYTH = flags.DEFINE_bool(
        "pyth", False, "Also write SlowFast's {'model_state': ...} .pyth next to it."
    )
    _CONFIG = config_flags.DEFINE_config_file(
        "config", None, "Config of the run, if the checkpoint does not record it."
    )
    flags.mark_flags_as_required(["checkpoint", "naming", "out"])
    app.run(cli.exit_on_config_error(main), flags_parser=cli.parse_flags)
