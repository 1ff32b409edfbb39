"""Import from PyTorch: export -> import is bit-exact, random torch models come back with
identical outputs, weights move between forms and resolutions as the reference loaders do,
unsafe pickles are refused, mismatches are all listed, and init_from reads the result."""

import json
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint, loop, sharding
from maskfeat_jax import trainer as trainer_lib
from maskfeat_jax.interop import export, import_torch, torch_names
from maskfeat_jax.models import transfer, vit
from tests.support.random_models import encode, forward, random_model
from tests.support.runs import ROOT, child_env
from tests.support.torch_inputs import clips, images, mvit_spec, to_nchw, vit_spec

torch = pytest.importorskip("torch")
timm = pytest.importorskip("timm")
from benchmarks import torch_reference  # noqa: E402

timm.layers.set_fused_attn(False)


def _template(spec, seed=0):
    """A freshly initialized target model's flat params (what import fills in)."""
    return torch_names.flat_params(random_model(spec, seed=seed))


@pytest.mark.parametrize(
    "target,spec",
    [
        ("timm", vit_spec()),
        ("timm", vit_spec(num_classes=5)),
        ("slowfast", vit_spec()),
        ("slowfast", vit_spec(num_classes=5)),
        ("slowfast", mvit_spec()),
        ("slowfast", mvit_spec(num_classes=5)),
        ("torchvision", mvit_spec()),
        ("torchvision", mvit_spec(num_classes=5)),
    ],
    ids=lambda v: v if isinstance(v, str) else ("FT" if v.num_classes else "PT"),
)
def test_export_then_import_round_trips_bit_exactly(target, spec):
    original = torch_names.flat_params(random_model(spec, seed=1))
    exp = export.export_params(original, spec, target)
    template = _template(spec, seed=2)
    got = import_torch.import_params(exp.tensors, spec, template, target)
    assert got.source_pretrain == (not spec.num_classes)
    for key, value in original.items():
        want = template[key] if key in exp.left_out else value  # no place in the target
        np.testing.assert_array_equal(got.params[key], want, err_msg=key)
    assert sorted(got.fresh) == sorted(exp.left_out)
    assert got.ignored == (["hogs.0.weight_x", "hogs.0.weight_y"] if exp.pretrain and
                           target == "slowfast" else [])  # fmt: skip


def test_random_timm_vit_imports_with_identical_logits():
    spec = vit_spec(num_classes=6)
    torch.manual_seed(0)
    tm = timm.create_model(export.timm_model_name(spec), **export._timm_kwargs(spec)).double()
    with torch.no_grad():
        for p in tm.parameters():
            p.add_(0.05 * torch.randn_like(p))
    x = images(spec, seed=3)
    with jax.enable_x64(True):
        model = random_model(spec, dtype=jnp.float64)
        got = import_torch.import_params(
            tm.state_dict(), spec, torch_names.flat_params(model), "timm"
        )
        torch_names.load_flat_params(model, got.params, dtype=jnp.float64)
        ours = np.asarray(model(jnp.asarray(x)))
    with torch.no_grad():
        theirs = tm(to_nchw(x, torch.float64)).numpy()
    np.testing.assert_allclose(ours, theirs, atol=1e-9, rtol=0)
    assert got.fresh == [] and got.ignored == []


@pytest.mark.slow
def test_random_torchvision_mvit_imports_with_identical_tokens_and_logits():
    spec = mvit_spec(num_classes=5)
    tv = torch_reference.torchvision_mvit(spec, seed=4, dtype=torch.float64)
    x, xt = clips(spec, seed=2)
    with jax.enable_x64(True):
        model = random_model(spec, dtype=jnp.float64)
        got = import_torch.import_params(
            tv.state_dict(), spec, torch_names.flat_params(model), "torchvision"
        )
        torch_names.load_flat_params(model, got.params, dtype=jnp.float64)
        tokens = np.asarray(encode(model, jnp.asarray(x)))
        logits = np.asarray(forward(model, jnp.asarray(x)))
    with torch.no_grad():
        ref_tokens = torch_reference.torchvision_mvit_tokens(tv, xt.double())
        ref_logits = torch_reference.torchvision_mvit_mean_pool_logits(tv, ref_tokens)
    np.testing.assert_allclose(tokens, ref_tokens.numpy(), atol=1e-9, rtol=0)
    np.testing.assert_allclose(logits, ref_logits.numpy(), atol=1e-9, rtol=0)


def test_bicubic_pos_embed_resampling_matches_torch_interpolate():
    rng = np.random.default_rng(0)
    for n_in, n_out in ((2, 4), (14, 24), (14, 7)):
        pos = rng.normal(size=(1, 1 + n_in * n_in, 8))
        grid = torch.from_numpy(pos[0, 1:].reshape(n_in, n_in, 8)).permute(2, 0, 1)[None]
        ref = (
            torch.nn.functional.interpolate(
                grid, size=(n_out, n_out), mode="bicubic", align_corners=False
            )[0]
            .permute(1, 2, 0)
            .reshape(1, -1, 8)
            .numpy()
        )
        got = transfer.resize_pos_embed(pos, (n_in, n_in), (n_out, n_out))
        np.testing.assert_array_equal(got[:, :1], pos[:, :1])
        np.testing.assert_allclose(got[:, 1:], ref, atol=1e-12, rtol=0)


def test_slowfast_pretraining_pyth_into_a_larger_finetuning_model(tmp_path):
    pt_spec = vit_spec()  # 32 px: 2x2 patches
    pt = random_model(pt_spec, seed=5)
    exp = export.export_model(pt, "slowfast")
    path = export.write_pyth(str(tmp_path / "ssl_checkpoint_epoch_00300.pyth"), exp)
    # 4x4 patches; no target size, as a fine-tuning config builds it
    ft_spec = vit_spec(image_size=64, num_classes=3, target_size=0)
    template = _template(ft_spec, seed=6)
    got = import_torch.import_params(
        import_torch.load_state_dict(path), ft_spec, template, "slowfast"
    )
    assert got.source_pretrain
    assert got.ignored == sorted(
        ["hogs.0.weight_x", "hogs.0.weight_y", "mask_token"]
        + [f"pred_head/{m}/{p}" for m in ("norm", "proj") for p in ("bias", "scale", "kernel")
           if not (m == "norm" and p == "kernel") and not (m == "proj" and p == "scale")]
    )  # fmt: skip
    assert got.fresh == ["head/bias", "head/kernel", "norm/bias", "norm/scale"]
    for key in ("head/kernel", "norm/scale"):
        np.testing.assert_array_equal(got.params[key], template[key])
    src = torch_names.flat_params(pt)
    np.testing.assert_array_equal(
        got.params["blocks/1/mlp/fc2/kernel"], src["blocks/1/mlp/fc2/kernel"]
    )
    pos = torch.tensor(src["pos_embed"][0, 1:].reshape(2, 2, -1)).permute(2, 0, 1)[None]
    ref = torch.nn.functional.interpolate(pos.double(), size=(4, 4), mode="bicubic")
    np.testing.assert_allclose(
        got.params["pos_embed"][0, 1:], ref[0].permute(1, 2, 0).reshape(16, -1).numpy(), atol=1e-6
    )
    np.testing.assert_array_equal(got.params["pos_embed"][:, 0], src["pos_embed"][:, 0])


def test_every_mismatch_is_listed():
    spec = vit_spec()
    sd = export.export_model(random_model(spec), "timm").tensors
    del sd["blocks.0.attn.qkv.weight"], sd["blocks.1.mlp.fc1.bias"]
    sd["blocks.1.attn.proj.weight"] = np.zeros((64, 32), np.float32)
    with pytest.raises(torch_names.MappingError) as err:
        import_torch.import_params(sd, spec, _template(spec), "timm")
    msg = str(err.value)
    assert msg.startswith("2 parameter(s) missing") and "blocks.0.attn.qkv.weight" in msg
    sd["blocks.0.attn.qkv.weight"] = np.zeros((192, 64), np.float32)
    sd["blocks.1.mlp.fc1.bias"] = np.zeros((7,), np.float32)
    with pytest.raises(ValueError) as err:
        import_torch.import_params(sd, spec, _template(spec), "timm")
    msg = str(err.value)
    assert msg.startswith("2 parameter(s) do not fit the target ViT")
    assert "blocks/1/attn/proj/kernel: shape (32, 64)" in msg and "blocks/1/mlp/fc1/bias" in msg


class NotATensor:
    pass


def test_pickles_that_would_run_code_are_refused(tmp_path):
    path = tmp_path / "unsafe.pth"
    torch.save({"model_state": {"w": torch.zeros(2)}, "extra": NotATensor()}, path)
    with pytest.raises(import_torch.UnsafeCheckpointError, match="weights_only=True.*NotATensor"):
        import_torch.load_state_dict(str(path))
    (tmp_path / "broken.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="not a readable torch checkpoint"):
        import_torch.load_state_dict(str(tmp_path / "broken.pth"))
    safe = tmp_path / "safe.pyth"
    torch.save({"model_state": {"w": torch.ones(2)}, "epoch": 3, "cfg": "yaml"}, safe)
    assert list(import_torch.load_state_dict(str(safe))) == ["w"]


@pytest.mark.slow
def test_import_cli_writes_a_checkpoint_that_init_from_loads(tmp_path):
    from configs import demo

    config = demo.get_config("smoke")
    spec = vit.make_spec("Ti/16", image_size=112, depth=2)
    pt = random_model(spec, seed=7)
    source = export.write_safetensors(
        str(tmp_path / "pt.safetensors"), export.export_model(pt, "timm")
    )
    out = tmp_path / "imported"
    proc = subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.import_torch", "--source", source, "--naming",
         "timm", "--config", "configs/demo.py:smoke", "--out", str(out)],
        cwd=ROOT, env=child_env(XLA_FLAGS=""), capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"--config.init_from={out}" in proc.stdout
    assert "Freshly initialized (not in the file): mask_token" in proc.stdout

    config.init_from = str(out)
    config.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    trainer = trainer_lib.build_trainer(config, sharding.make_mesh(config.mesh, jax.devices()[:1]))
    with checkpoint.RunCheckpoints(str(tmp_path / "run"), every_steps=10) as ckpts:
        state, _, step, source_name = loop.initial_state(trainer, ckpts, data=None)
    assert (step, source_name) == (0, "init_from")
    loaded = {"/".join(map(str, k)): np.asarray(v.get_value()) for k, v in
              nnx.to_flat_state(state[0])}  # fmt: skip
    for key, value in torch_names.flat_params(pt).items():
        if key not in ("mask_token", "pred_head/proj/kernel", "pred_head/proj/bias"):
            np.testing.assert_array_equal(loaded[key], value, err_msg=key)
    weights, meta = checkpoint.load_weights(str(out))
    assert meta["naming"] == "timm" and meta["source"] == source
    assert json.dumps(meta["config"]["model"]["variant"]) == '"Ti/16"'


def test_mvit_pretraining_weights_into_the_finetuning_form_resize_rel_pos_tables():
    from maskfeat_jax.models import mvit

    # A block after the last stage start sees 4x4 (PT) or 2x2 (FT) tokens.
    pt_spec, ft_spec = mvit_spec(depth=5), mvit_spec(depth=5, num_classes=4, target_size=0)
    pt = torch_names.flat_params(random_model(pt_spec, seed=8))
    template = _template(ft_spec, seed=9)
    resized = [k for k in template if "rel_pos" in k and template[k].shape != pt[k].shape]
    assert resized  # the last stage's q stride comes back in the fine-tuning form
    exp = export.export_params(pt, pt_spec, "torchvision")
    got = import_torch.import_params(exp.tensors, ft_spec, template, "torchvision")
    assert got.source_pretrain and got.fresh == sorted(
        ["head/bias", "head/kernel", "norm/bias", "norm/scale"]
    )
    for key in resized:
        want = mvit.resize_rel_pos(pt[key], template[key].shape[0])
        np.testing.assert_array_equal(got.params[key], want, err_msg=key)
    np.testing.assert_array_equal(
        got.params["blocks/0/attn/qkv/kernel"], pt["blocks/0/attn/qkv/kernel"]
    )
