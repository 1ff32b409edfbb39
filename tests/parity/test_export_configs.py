"""Export and import for every config in configs/, at full size: each variant's model (built
abstractly, no memory) exports the keys and shapes of the PyTorch model that the printed
instructions build, and comes back through import into the model its --config describes.
A naming with no such model ends in one line that names the fix, and both command lines run
from a fine-tuning config with a scanned ViT."""

import glob
import json
import os
import subprocess
import sys

import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint, cli, errors, tasks
from maskfeat_jax.interop import export, import_torch, torch_names
from tests.support.random_models import random_params
from tests.support.runs import ROOT, child_env

torch = pytest.importorskip("torch")
pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")

# Each config file with each variant its docstring or get_config documents.
CONFIGS = (
    "demo.py",
    "demo.py:smoke",
    "demo_video.py",
    "demo_video.py:smoke",
    "demo_video.py:vit",
    "digits.py:pretrain",
    "digits.py:pretrain_pixels",
    "digits.py:finetune",
    "digits.py:probe",
    "in1k_vit_b_pretrain.py",
    "in1k_vit_b_pretrain.py:300ep",
    "in1k_vit_l_pretrain.py",
    "in1k_vit_b_finetune.py",
    "in1k_vit_l_finetune.py",
    "k400_mvitv2_s_pretrain.py",
    "k400_mvitv2_l_pretrain.py",
    "k400_mvitv2_s_finetune.py",
    "k400_mvitv2_l_finetune.py",
)
TORCH_BUILT = ("timm", "torchvision")  # namings whose PyTorch code is installed here


def load(name):
    return cli.load_config(os.path.join(ROOT, "configs", name))


def namings_with_a_model(config) -> tuple[str, ...]:
    """timm has image ViTs only, torchvision MViTv2 only, SlowFast both (video ViT too)."""
    if config.model.name == "mvit":
        return ("slowfast", "torchvision")
    if config.model.get("num_frames", 1) > 1:
        return ("slowfast",)
    return ("timm", "slowfast")


def pairs(keep):
    """(config, naming) for the namings that ``keep(naming, has_a_model)`` accepts."""
    out = []
    for name in CONFIGS:
        have = namings_with_a_model(load(name))
        out += [
            pytest.param(name, naming, id=f"{name}-{naming}")
            for naming in torch_names.TARGETS
            if keep(naming, naming in have)
        ]
    return out


_BUILT = {}
_abstract_params = export.abstract_params


def abstract_params_once(config):
    """``export.abstract_params``, each config traced once: MViTv2-L takes seconds."""
    key = config.to_json_best_effort()
    if key not in _BUILT:
        _BUILT[key] = _abstract_params(config)
    spec, flat = _BUILT[key]
    return spec, dict(flat)


def abstract(name):
    config = load(name)
    return (config, *abstract_params_once(config))


def shapes(flat):
    return {k: tuple(v.shape) for k, v in flat.items()}


def test_every_config_file_is_covered():
    files = {os.path.basename(p) for p in glob.glob(os.path.join(ROOT, "configs", "*.py"))}
    assert files - {"__init__.py", "common.py"} == {n.split(":")[0] for n in CONFIGS}
    assert any(load(n).model.get("scan") for n in CONFIGS)  # the stacked-blocks layout


@pytest.mark.slow
@pytest.mark.parametrize("name", CONFIGS)
def test_each_config_describes_the_model_its_checkpoints_hold(name, monkeypatch):
    config, spec, flat = abstract(name)
    monkeypatch.setattr(export, "abstract_params", abstract_params_once)
    assert export.spec_of_checkpoint(config, flat) == spec
    task = tasks.from_config(config)
    if not task.is_pretraining:  # fine-tuning configs have no hog/mask/target
        assert "hog" not in config and flat["head/kernel"].shape[-1] == config.model.num_classes
    else:
        assert flat["pred_head/proj/kernel"].shape[-1] == task.target_size


@pytest.mark.slow
@pytest.mark.parametrize("name,naming", pairs(lambda n, ok: ok and n in TORCH_BUILT))
def test_export_has_the_keys_and_shapes_of_the_printed_torch_model(name, naming):
    config, spec, flat = abstract(name)
    exp = export.export_params(flat, spec, naming)
    build = "\n".join(ln for ln in exp.build.splitlines() if "load_state_dict" not in ln)
    scope = {}
    with torch.device("meta"):  # full-size models without their memory
        exec(build, scope)
    assert shapes(exp.tensors) == shapes(scope["model"].state_dict())


@pytest.mark.parametrize("name,naming", pairs(lambda n, ok: ok))
def test_export_then_import_round_trips_names_and_shapes(name, naming):
    config, spec, flat = abstract(name)
    exp = export.export_params(flat, spec, naming)
    got = import_torch.import_params(exp.tensors, spec, flat, naming)
    assert got.source_pretrain == (not config.model.num_classes)
    assert shapes(got.params) == shapes(flat)  # stacked blocks stay stacked
    assert got.fresh == sorted(exp.left_out)
    hogs = ["hogs.0.weight_x", "hogs.0.weight_y"]
    assert got.ignored == (hogs if naming == "slowfast" and exp.pretrain else [])
    again = export.export_params(got.params, spec, naming)
    assert shapes(again.tensors) == shapes(exp.tensors)


@pytest.mark.parametrize("name,naming", pairs(lambda n, ok: not ok))
def test_a_naming_without_such_a_model_is_one_line_naming_the_fix(name, naming):
    config, spec, flat = abstract(name)
    fix = " or ".join(f"--naming {n}" for n in namings_with_a_model(config))
    with pytest.raises(errors.ConfigError) as exported:
        export.export_params(flat, spec, naming)
    with pytest.raises(errors.ConfigError) as imported:
        import_torch.import_params({}, spec, flat, naming)
    for err in (exported, imported):
        message = str(err.value)
        assert "\n" not in message and message.startswith(f"{naming} has no ")
        assert message.endswith(f"use {fix}.")


# A scanned ViT-L fine-tuning config, shrunk on the command line.
SMALL = ("depth=2", "width=64", "num_heads=4", "mlp_dim=128", "image_size=32")


def run_module(module, *args):
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        cwd=ROOT, env=child_env(XLA_FLAGS=""), capture_output=True, text=True, timeout=300,
    )  # fmt: skip


@pytest.mark.slow
def test_command_lines_from_a_scanned_fine_tuning_config(tmp_path):
    config = load("in1k_vit_l_finetune.py")
    config.model.update({k: int(v) for k, v in (o.split("=") for o in SMALL)})
    model = nnx.eval_shape(lambda: export.model_for_config(config, nnx.Rngs(0)))
    torch_names.load_flat_params(model, random_params(torch_names.flat_params(model)))
    flat = torch_names.flat_params(model)
    assert flat["blocks/attn/qkv/kernel"].shape[0] == 2  # scanned: one stacked array
    meta = {"config": json.loads(config.to_json_best_effort())}
    ckpt = checkpoint.save_weights(str(tmp_path / "ft"), nnx.state(model), meta)

    out = tmp_path / "vit_l.safetensors"
    proc = run_module(
        "maskfeat_jax.export", "--checkpoint", ckpt, "--naming", "timm", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    tensors = safetensors_torch.load_file(str(out))
    np.testing.assert_array_equal(
        tensors["blocks.1.attn.qkv.weight"].numpy(), flat["blocks/attn/qkv/kernel"][1].T
    )

    imported = tmp_path / "imported"
    overrides = [f"--config.model.{o}" for o in SMALL]
    proc = run_module(
        "maskfeat_jax.import_torch", "--source", str(out), "--naming", "timm",
        "--config", "configs/in1k_vit_l_finetune.py", *overrides, "--out", str(imported),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "fine-tuning form" in proc.stdout and "Freshly initialized" not in proc.stdout
    weights, _ = checkpoint.load_weights(str(imported))
    assert weights.keys() == flat.keys()
    for key, value in flat.items():
        np.testing.assert_array_equal(weights[key], value, err_msg=key)

    wrong = run_module(
        "maskfeat_jax.export", "--checkpoint", ckpt, "--naming", "torchvision",
        "--out", str(tmp_path / "x.safetensors"),
    )  # fmt: skip
    assert wrong.returncode == 2 and "Traceback" not in wrong.stderr
    assert (
        wrong.stderr.strip()
        .splitlines()[-1]
        .endswith(
            "torchvision has no image ViT like this one; use --naming timm or --naming slowfast."
        )
    )
