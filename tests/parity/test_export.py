"""Export to PyTorch: strict loads into timm, torchvision and SlowFast's key sets, equal
outputs (float64 1e-9, float32 1e-4), timm's own JAX loader agrees, and the CLI works."""

import json
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint
from maskfeat_jax.interop import export, torch_names
from maskfeat_jax.models import mvit, vit
from tests.support.random_models import forward, random_model
from tests.support.runs import ROOT, child_env
from tests.support.torch_inputs import clips, images, mvit_spec, to_nchw, vit_spec

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
safetensors_torch = pytest.importorskip("safetensors.torch")
from safetensors import safe_open  # noqa: E402

from benchmarks import torch_reference  # noqa: E402

timm.layers.set_fused_attn(False)  # the reference attention path: (q*scale) @ k^T -> softmax


def build_from_printed(exp, path, dtype=torch.float32):
    """Runs the exporter's printed build-and-load instructions (strict), as a user would;
    then loads the file again at ``dtype`` (a float32 model would round float64 weights)."""
    scope = {"safetensors": sys.modules["safetensors"]}
    exec(exp.build.replace("PATH", repr(str(path))), scope)
    model = scope["model"].eval().to(dtype)
    model.load_state_dict(safetensors_torch.load_file(str(path)), strict=True)
    return model


def exported_file(model, target, tmp_path, name="model.safetensors"):
    exp = export.export_model(model, target)
    path = export.write_safetensors(str(tmp_path / name), exp)
    return exp, path


# ---------------------------------------------------------------------------------------------
# timm ViT
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_timm_vit_pretraining_encoder_loads_strictly_and_matches(tmp_path, precision):
    spec = vit_spec()
    f64 = precision == "float64"
    jdtype, tdtype, atol = (
        (jnp.float64, torch.float64, 1e-9) if f64 else (jnp.float32, torch.float32, 1e-4)
    )
    x = images(spec)
    with jax.enable_x64(f64):
        model = random_model(spec, seed=1, dtype=jdtype)
        exp, path = exported_file(model, "timm", tmp_path)
        tokens = model.pred_head.norm(model.encode(jnp.asarray(x, jdtype)))
        preds = model(jnp.asarray(x, jdtype))
    assert sorted(exp.left_out) == ["mask_token", "pred_head/proj/bias", "pred_head/proj/kernel"]
    tm = build_from_printed(exp, path, tdtype)  # strict=True inside
    with torch.no_grad():
        features = tm.forward_features(to_nchw(x, tdtype)).numpy()
    np.testing.assert_allclose(features, np.asarray(tokens), atol=atol, rtol=0)
    # The prediction Linear the timm encoder leaves out, applied to its tokens.
    w, b = exp.left_out["pred_head/proj/kernel"], exp.left_out["pred_head/proj/bias"]
    np.testing.assert_allclose(features[:, 1:] @ w + b, np.asarray(preds), atol=atol, rtol=0)


@pytest.mark.parametrize("precision", ["float64", "float32"])
def test_timm_vit_finetuning_form_gives_the_same_logits(tmp_path, precision):
    spec = vit_spec(num_classes=7)
    f64 = precision == "float64"
    jdtype, tdtype, atol = (
        (jnp.float64, torch.float64, 1e-9) if f64 else (jnp.float32, torch.float32, 1e-4)
    )
    x = images(spec, seed=2)
    with jax.enable_x64(f64):
        model = random_model(spec, seed=3, dtype=jdtype)
        exp, path = exported_file(model, "timm", tmp_path)
        logits = np.asarray(model(jnp.asarray(x, jdtype)))
    assert exp.left_out == {} and "global_pool='avg'" in exp.build
    tm = build_from_printed(exp, path, tdtype)
    with torch.no_grad():
        np.testing.assert_allclose(tm(to_nchw(x, tdtype)).numpy(), logits, atol=atol, rtol=0)


def _vit_jax_npz(flat, spec, path):
    """Our ViT in the classic ``vit_jax`` checkpoint layout (query/key/value/out kernels per
    head), written independently of the exporter for timm's own ``_load_weights``."""
    d, h = spec.width, spec.num_heads
    hd = d // h
    out = {
        "embedding/kernel": flat["patch_embed/proj/kernel"],
        "embedding/bias": flat["patch_embed/proj/bias"],
        "cls": flat["cls_token"],
        "Transformer/posembed_input/pos_embedding": flat["pos_embed"],
    }
    final = "norm" if spec.num_classes else "pred_head/norm"
    out["Transformer/encoder_norm/scale"] = flat[f"{final}/scale"]
    out["Transformer/encoder_norm/bias"] = flat[f"{final}/bias"]
    for i in range(spec.depth):
        src, dst = f"blocks/{i}/", f"Transformer/encoderblock_{i}/"
        out[dst + "LayerNorm_0/scale"] = flat[src + "norm1/scale"]
        out[dst + "LayerNorm_0/bias"] = flat[src + "norm1/bias"]
        out[dst + "LayerNorm_2/scale"] = flat[src + "norm2/scale"]
        out[dst + "LayerNorm_2/bias"] = flat[src + "norm2/bias"]
        qkv_k = flat[src + "attn/qkv/kernel"].reshape(d, 3, h, hd)
        qkv_b = flat[src + "attn/qkv/bias"].reshape(3, h, hd)
        for j, name in enumerate(("query", "key", "value")):
            out[dst + f"MultiHeadDotProductAttention_1/{name}/kernel"] = qkv_k[:, j]
            out[dst + f"MultiHeadDotProductAttention_1/{name}/bias"] = qkv_b[j]
        att = dst + "MultiHeadDotProductAttention_1/out/"
        out[att + "kernel"] = flat[src + "attn/proj/kernel"].reshape(h, hd, d)
        out[att + "bias"] = flat[src + "attn/proj/bias"]
        for j, fc in enumerate(("fc1", "fc2")):
            out[dst + f"MlpBlock_3/Dense_{j}/kernel"] = flat[src + f"mlp/{fc}/kernel"]
            out[dst + f"MlpBlock_3/Dense_{j}/bias"] = flat[src + f"mlp/{fc}/bias"]
    np.savez(path, **out)


def test_timm_own_jax_loader_agrees_with_the_exporter(tmp_path):
    from timm.models.vision_transformer import _load_weights

    spec = vit_spec()
    model = random_model(spec, seed=4)
    flat = torch_names.flat_params(model)
    exp = export.export_params(flat, spec, "timm")
    npz = tmp_path / "vit.npz"
    _vit_jax_npz(flat, spec, npz)
    tm = timm.create_model(export.timm_model_name(spec), **export._timm_kwargs(spec))
    _load_weights(tm, str(npz))
    theirs = tm.state_dict()
    assert theirs.keys() == exp.tensors.keys()
    for k, v in theirs.items():
        np.testing.assert_array_equal(v.numpy(), exp.tensors[k], err_msg=k)


@pytest.mark.parametrize("size", ["B", "L", "H"])
@pytest.mark.parametrize("num_classes", [0, 1000])
def test_full_size_vit_names_and_shapes_equal_timm(size, num_classes):
    spec = vit.make_spec(f"{size}/16", num_classes=num_classes)
    abstract = nnx.eval_shape(lambda: vit.ViT(spec, rngs=nnx.Rngs(0)))
    exp = export.export_params(torch_names.flat_params(abstract), spec, "timm")
    with torch.device("meta"):
        tm = timm.create_model(export.timm_model_name(spec), **export._timm_kwargs(spec))
    want = {k: tuple(v.shape) for k, v in tm.state_dict().items()}
    assert {k: tuple(v.shape) for k, v in exp.tensors.items()} == want


def test_scanned_vit_exports_like_the_per_layer_one():
    spec = vit_spec(depth=3)
    per_layer = torch_names.flat_params(random_model(spec, seed=5))
    stacked = {k: v for k, v in per_layer.items() if not k.startswith("blocks/")}
    for name in {k.split("/", 2)[2] for k in per_layer if k.startswith("blocks/")}:
        stacked[f"blocks/{name}"] = np.stack([per_layer[f"blocks/{i}/{name}"] for i in range(3)])
    a = export.export_params(per_layer, spec, "timm").tensors
    b = export.export_params(stacked, spec, "timm").tensors
    assert a.keys() == b.keys()
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])


def test_video_vit_is_refused_for_timm_and_torchvision():
    spec = vit.make_spec("B/2x16", image_size=32, num_frames=4, width=64, depth=1, num_heads=4)
    abstract = nnx.eval_shape(lambda: vit.ViT(spec, rngs=nnx.Rngs(0)))
    flat = torch_names.flat_params(abstract)
    for target in ("timm", "torchvision"):
        with pytest.raises(ValueError, match=f"{target} has no video ViT.*use --naming slowfast"):
            export.export_params(flat, spec, target)


# ---------------------------------------------------------------------------------------------
# SlowFast key sets (maskfeat.md E1, E2)
# ---------------------------------------------------------------------------------------------


def _slowfast_shapes(spec, cls):
    abstract = nnx.eval_shape(lambda: cls(spec, rngs=nnx.Rngs(0)))
    exp = export.export_params(torch_names.flat_params(abstract), spec, "slowfast")
    assert exp.left_out == {}
    return {k: tuple(v.shape) for k, v in exp.tensors.items()}


def test_slowfast_vit_b_pretraining_and_finetuning_keys():
    pt = _slowfast_shapes(vit.make_spec("B/16"), vit.ViT)
    assert len(pt) == 155
    assert pt["cls_token"] == pt["mask_token"] == (1, 1, 768)
    assert pt["pos_embed"] == (1, 197, 768)
    assert pt["patch_embed.proj.weight"] == (768, 3, 16, 16)
    assert pt["blocks.11.attn.qkv.weight"] == (2304, 768)
    assert pt["blocks.0.mlp.fc1.weight"] == (3072, 768)
    assert pt["pred_head.transforms.0.0.weight"] == (768,)
    assert pt["pred_head.projections.0.weight"] == (108, 768)
    assert pt["hogs.0.weight_x"] == pt["hogs.0.weight_y"] == (3, 1, 3, 3)
    ft = _slowfast_shapes(vit.make_spec("B/16", num_classes=1000), vit.ViT)
    assert len(ft) == 152
    assert ft["norm.weight"] == (768,) and ft["head.projection.weight"] == (1000, 768)
    assert not any(k.startswith(("mask_token", "hogs", "pred_head")) for k in ft)


def test_slowfast_mvit_s_pretraining_and_finetuning_keys():
    pt = _slowfast_shapes(mvit.make_spec("MViTv2-S"), mvit.MViT)
    assert len(pt) == 400
    assert pt["patch_embed.proj.weight"] == (96, 3, 3, 7, 7)
    assert pt["blocks.0.attn.qkv.weight"] == (288, 96)
    assert pt["blocks.0.mlp.fc2.weight"] == (192, 384)
    assert pt["blocks.0.proj.weight"] == (192, 96)
    assert pt["blocks.13.attn.qkv.weight"] == (1152, 384)
    assert pt["blocks.14.attn.qkv.weight"] == (2304, 768)
    assert pt["blocks.1.attn.pool_q.weight"] == (96, 1, 3, 3, 3)
    assert pt["blocks.1.attn.norm_q.weight"] == (96,)
    assert pt["blocks.5.attn.rel_pos_t"] == (15, 96)
    projected = {k.split(".")[1] for k in pt if re.fullmatch(r"blocks\.\d+\.proj\.weight", k)}
    assert projected == {"0", "2", "13"}
    assert pt["pred_head.projections.0.weight"] == (108, 768)
    ft = _slowfast_shapes(mvit.make_spec("MViTv2-S", num_classes=400), mvit.MViT)
    assert ft["blocks.15.attn.rel_pos_h"] == (13, 96)
    assert ft["head.projection.weight"] == (400, 768) and ft["norm.weight"] == (768,)
    assert len(ft) == 397  # 398 parameters less mask_token, pred_head's 4 for norm + head


def test_slowfast_hog_buffers_are_the_reference_sobel_filters():
    spec = vit_spec()
    exp = export.export_params(torch_names.flat_params(random_model(spec)), spec, "slowfast")
    sobel = np.array([[1, 0, -1], [2, 0, -2], [1, 0, -1]], np.float32)
    for c in range(3):
        np.testing.assert_array_equal(exp.tensors["hogs.0.weight_x"][c, 0], sobel)
        np.testing.assert_array_equal(exp.tensors["hogs.0.weight_y"][c, 0], sobel.T)


def test_pyth_file_loads_with_weights_only(tmp_path):
    spec = vit_spec()
    exp = export.export_model(random_model(spec, seed=6), "slowfast")
    path = export.write_pyth(str(tmp_path / "ssl_checkpoint_epoch_00001.pyth"), exp)
    loaded = torch.load(path, weights_only=True)
    assert list(loaded) == ["model_state"]
    assert loaded["model_state"].keys() == exp.tensors.keys()
    for k, v in loaded["model_state"].items():
        np.testing.assert_array_equal(v.numpy(), exp.tensors[k])


# ---------------------------------------------------------------------------------------------
# torchvision MViT
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("num_classes", [0, 5])
def test_torchvision_mvit_loads_strictly_and_matches_in_float64(tmp_path, num_classes):
    spec = mvit_spec(num_classes=num_classes)
    x, xt = clips(spec)
    with jax.enable_x64(True):
        model = random_model(spec, seed=7, dtype=jnp.float64)
        exp, path = exported_file(model, "torchvision", tmp_path)
        ours = np.asarray(forward(model, jnp.asarray(x)))
    tv = build_from_printed(exp, path, torch.float64)
    with torch.no_grad():
        tokens = torch_reference.torchvision_mvit_tokens(tv, xt.double())
        if num_classes:
            theirs = torch_reference.torchvision_mvit_mean_pool_logits(tv, tokens)
        else:  # per-token predictions: head(norm(patch tokens))
            theirs = tv.head(tv.norm(tokens)[:, 1:])
    np.testing.assert_allclose(theirs.numpy(), ours, atol=1e-9, rtol=0)
    assert sorted(exp.left_out) == (["mask_token"] if not num_classes else [])


@pytest.mark.slow
def test_torchvision_mvit_float32_fine_tuning_logits(tmp_path):
    spec = mvit_spec(num_classes=5)
    x, xt = clips(spec, seed=1)
    model = random_model(spec, seed=8)
    exp, path = exported_file(model, "torchvision", tmp_path)
    tv = build_from_printed(exp, path)
    with torch.no_grad():
        tokens = torch_reference.torchvision_mvit_tokens(tv, xt.float())
        theirs = torch_reference.torchvision_mvit_mean_pool_logits(tv, tokens).numpy()
    ours = np.asarray(forward(model, jnp.asarray(x, jnp.float32)))
    np.testing.assert_allclose(theirs, ours, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# The command line, from a checkpoint that records its config.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_export_cli_from_a_checkpoint(tmp_path):
    from configs import demo

    config = demo.get_config("smoke")
    config.model.update(image_size=32, depth=1)
    model = export.model_for_config(config, nnx.Rngs(0))
    ckpt = checkpoint.save_weights(
        str(tmp_path / "ckpt"), nnx.state(model), {"config": json.loads(config.to_json())}
    )
    out = tmp_path / "out" / "vit.safetensors"
    proc = subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.export", "--checkpoint", ckpt, "--naming",
         "slowfast", "--out", str(out), "--pyth"],
        cwd=ROOT, env=child_env(XLA_FLAGS=""), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Wrote" in proc.stdout and "MODEL_NAME MaskMViT" in proc.stdout
    tensors = safetensors_torch.load_file(str(out))
    flat = torch_names.flat_params(model)
    np.testing.assert_array_equal(
        tensors["blocks.0.attn.qkv.weight"].numpy(), flat["blocks/0/attn/qkv/kernel"].T
    )
    assert "hogs.0.weight_x" in tensors
    assert (tmp_path / "out" / "vit.pyth").is_file()
    with safe_open(str(out), "np") as f:  # the metadata records naming, form and the source
        meta = f.metadata()
    assert meta["naming"] == "slowfast" and meta["form"] == "pretrain"
    assert meta["source"] == ckpt

    wrong = subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.export", "--checkpoint", ckpt, "--naming", "timm",
         "--out", str(tmp_path / "x.safetensors"), "--config", "configs/demo.py"],
        cwd=ROOT, env=child_env(XLA_FLAGS=""), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert wrong.returncode != 0
    assert "do not fit config.model" in wrong.stderr and "pass the --config" in wrong.stderr
