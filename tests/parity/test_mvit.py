"""MViTv2 against torchvision's generic MViT class built with MaskFeat's block settings:
tokens, logits and gradients, masked pretraining, images as one-frame clips, strict loads,
mismatch lists and the relative-position table resize."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import mvit
from tests.support.random_models import random_params
from tests.support.small_mvit import apply, build, small_spec

torch = pytest.importorskip("torch")
from benchmarks import torch_reference  # noqa: E402


@nnx.jit
def encode(model, x):
    return model.encode(x)


def build_torchvision(spec, dtype=None):
    return torch_reference.torchvision_mvit(
        spec, dtype=torch.float64 if dtype == "float64" else torch.float32
    )


def jax_model_from_torchvision(tv, spec, dtype):
    return torch_reference.jax_mvit_from_torchvision(tv, spec, dtype)


torch_tokens = torch_reference.torchvision_mvit_tokens


@pytest.mark.slow
@pytest.mark.parametrize("dtype,atol", [("float64", 1e-9), ("float32", 1e-4)])
def test_tokens_and_logits_match_torchvision_mvit(dtype, atol):
    rng = np.random.default_rng(0)
    clips = rng.normal(size=(2, 8, 64, 64, 3))
    with jax.enable_x64(dtype == "float64"):
        jdtype = jnp.float64 if dtype == "float64" else jnp.float32
        for num_classes in (0, 5):
            spec = small_spec(num_classes=num_classes)
            tv = build_torchvision(spec, dtype)
            model, unused = jax_model_from_torchvision(tv, spec, jdtype)
            # The pretraining form has no place for torchvision's classifier.
            assert unused == (
                [] if num_classes else ["head.1.bias", "head.1.weight", "norm.bias", "norm.weight"]
            )
            x = jnp.asarray(clips, jdtype)
            xt = torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()).to(getattr(torch, dtype))
            with torch.no_grad():
                ref = torch_tokens(tv, xt)
                ours = encode(model, x)
                assert ours.shape == tuple(ref.shape) == (2, 1 + int(np.prod(spec.grid)), 128)
                np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=atol, rtol=0)
                if num_classes:  # MaskFeat's readout: mean over patch tokens -> norm -> head
                    logits = torch_reference.torchvision_mvit_mean_pool_logits(tv, ref).numpy()
                    np.testing.assert_allclose(
                        np.asarray(apply(model, x)), logits, atol=atol, rtol=0
                    )


@pytest.mark.slow
def test_gradients_match_torchvision_mvit_in_float64():
    # The CPU path has hand-written backward passes (depthwise pooling, attention, dense
    # layers): every parameter's gradient and the input's must equal torch autograd's.
    rng = np.random.default_rng(3)
    clips = rng.normal(size=(2, 8, 64, 64, 3))
    spec = small_spec()
    tv = build_torchvision(spec, "float64")
    with jax.enable_x64(True):
        model, _ = jax_model_from_torchvision(tv, spec, jnp.float64)
        graphdef, params, rest = nnx.split(model, nnx.Param, ...)

        def loss(p, x):
            return jnp.mean(nnx.merge(graphdef, p, rest).encode(x) ** 2)

        grads, dx = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(clips))
        ours = torch_names.flat_params(grads)
    xt = torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()).requires_grad_(True)
    torch_tokens(tv, xt).pow(2).mean().backward()
    tv_grads = {k: v.grad for k, v in tv.named_parameters() if v.grad is not None}
    want, _ = torch_names.from_torch(tv_grads, ours, torch_names.TORCHVISION_MVIT)
    compared = [k for k in ours if not k.startswith(("mask_token", "pred_head"))]
    assert len(compared) > 60
    # norm_k's bias shifts every key alike, so its true gradient is 0 (rounding on both sides)
    floor = 1e-6 * max(float(np.max(np.abs(want[k]))) for k in compared)
    for key in compared:
        scale = max(float(np.max(np.abs(want[key]))), floor)
        np.testing.assert_allclose(ours[key] / scale, want[key] / scale, atol=1e-9, err_msg=key)
    np.testing.assert_allclose(
        np.asarray(dx), xt.grad.numpy().transpose(0, 2, 3, 4, 1), atol=1e-12, rtol=1e-9
    )


@pytest.mark.slow
def test_masked_pretraining_predictions_match_torchvision_with_the_same_mask():
    rng = np.random.default_rng(1)
    clips = rng.normal(size=(2, 8, 64, 64, 3))
    spec = small_spec()
    tv = build_torchvision(spec, "float64")
    units = rng.random((2, 4, 2, 2)) < 0.4  # one unit = 2x2 output tokens = 8x8 input tokens
    with jax.enable_x64(True):
        model, _ = jax_model_from_torchvision(tv, spec, jnp.float64)
        token_mask = jnp.repeat(jnp.repeat(jnp.asarray(units), 8, axis=2), 8, axis=3)
        ours = apply(model, jnp.asarray(clips), token_mask.reshape(2, -1))
        head = model.pred_head
        with torch.no_grad():

            def t(a):
                return torch.from_numpy(np.array(a, np.float64))

            tokens = torch_tokens(
                tv,
                torch.from_numpy(clips.transpose(0, 4, 1, 2, 3).copy()),
                mask=t(np.asarray(token_mask)),
                mask_token=t(model.mask_token[...]),
            )[:, 1:]
            ln = torch.nn.functional.layer_norm(
                tokens, (128,), t(head.norm.scale[...]), t(head.norm.bias[...]), 1e-6
            )
            ref = ln @ t(head.proj.kernel[...]) + t(head.proj.bias[...])
    assert ours.shape == (2, 64, 108)
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-9, rtol=0)


def test_images_match_torchvision_as_single_frame_clips():
    spec = small_spec(num_frames=1)
    assert spec.patch_kernel == (1, 7, 7) and spec.grid == (4, 4)
    tv = build_torchvision(spec, "float64")
    images = np.random.default_rng(2).normal(size=(2, 64, 64, 3))
    with jax.enable_x64(True):
        model, _ = jax_model_from_torchvision(tv, spec, jnp.float64)
        ours = encode(model, jnp.asarray(images))
    with torch.no_grad():
        ref = torch_tokens(tv, torch.from_numpy(images.transpose(0, 3, 1, 2)[:, :, None].copy()))
    np.testing.assert_allclose(np.asarray(ours), ref.numpy(), atol=1e-9, rtol=0)


def test_export_then_import_round_trips_and_strict_loads_into_torchvision():
    spec = small_spec(num_classes=5)
    flat = torch_names.flat_params(build(spec, seed=3))
    named, left = torch_names.to_torch(flat, torch_names.TORCHVISION_MVIT)
    assert left == {}
    tv = build_torchvision(spec)
    tv.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in named.items()}, strict=True)
    back, unused = torch_names.from_torch(tv.state_dict(), flat, torch_names.TORCHVISION_MVIT)
    assert unused == []
    for k in flat:
        np.testing.assert_array_equal(back[k], flat[k])


def test_import_lists_every_mismatch():
    spec = small_spec()
    template = torch_names.flat_params(nnx.eval_shape(lambda: mvit.MViT(spec, rngs=nnx.Rngs(0))))
    sd = build_torchvision(spec).state_dict()
    del sd["blocks.0.attn.qkv.weight"]
    sd["blocks.3.attn.rel_pos_h"] = torch.zeros(5, 16)
    sd["conv_proj.weight"] = torch.zeros(16, 3, 1, 7, 7)
    with pytest.raises(torch_names.MappingError) as err:
        torch_names.from_torch(sd, template, torch_names.TORCHVISION_MVIT)
    msg = str(err.value)
    assert msg.startswith("3 parameter(s)")
    assert "missing blocks.0.attn.qkv.weight" in msg
    assert "blocks.3.attn.rel_pos_h: shape (5, 16)" in msg and "conv_proj.weight" in msg


def test_rel_pos_resize_matches_torch_linear_interpolation():
    # Exact in float64; float32 differs only by torch's float32 index arithmetic.
    table = np.random.default_rng(0).normal(size=(27, 96))
    for length in (13, 55):
        for dtype, atol in ((np.float64, 1e-12), (np.float32, 1e-5)):
            t = table.astype(dtype)
            ref = torch.nn.functional.interpolate(
                torch.from_numpy(t).T[None], size=length, mode="linear"
            )[0].T.numpy()
            np.testing.assert_allclose(mvit.resize_rel_pos(t, length), ref, atol=atol, rtol=0)
        got = mvit.resize_rel_pos(jnp.asarray(table, jnp.float32), length)
        assert got.shape == (length, 96) and got.dtype == jnp.float32
        np.testing.assert_allclose(np.asarray(got), ref, atol=1e-5, rtol=0)
    assert mvit.resize_rel_pos(table, 27) is table


def test_pretrained_weights_move_to_the_finetune_form_with_resized_rel_pos():
    pt_spec, ft_spec = mvit.make_spec("MViTv2-S"), mvit.make_spec("MViTv2-S", num_classes=400)
    pt = random_params(
        torch_names.flat_params(nnx.eval_shape(lambda: mvit.MViT(pt_spec, rngs=nnx.Rngs(0))))
    )
    template = torch_names.flat_params(nnx.eval_shape(lambda: mvit.MViT(ft_spec, rngs=nnx.Rngs(0))))
    ft, dropped, kept = mvit.transfer_params(pt, template)
    assert dropped == sorted(
        [
            "mask_token",
            "pred_head/norm/scale",
            "pred_head/norm/bias",
            "pred_head/proj/kernel",
            "pred_head/proj/bias",
        ]
    )
    assert sorted(kept) == ["head/bias", "head/kernel", "norm/bias", "norm/scale"]
    # Block 15's tables go from 27 to 13 rows exactly as torch's linear interpolation does.
    for axis in ("h", "w"):
        key = f"blocks/15/attn/rel_pos_{axis}"
        assert pt[key].shape == (27, 96) and ft[key].shape == (13, 96)
        want = torch.nn.functional.interpolate(
            torch.from_numpy(pt[key]).T[None], size=13, mode="linear"
        )[0].T.numpy()
        np.testing.assert_allclose(ft[key], want, atol=1e-12)
    np.testing.assert_array_equal(ft["blocks/14/attn/rel_pos_h"], pt["blocks/14/attn/rel_pos_h"])
    np.testing.assert_array_equal(ft["blocks/3/attn/qkv/kernel"], pt["blocks/3/attn/qkv/kernel"])
    wrong = dict(pt, **{"blocks/0/attn/qkv/kernel": np.zeros((96, 3)), "cls_token": np.zeros(3)})
    with pytest.raises(ValueError, match=r"2 parameter\(s\) do not fit") as err:
        mvit.transfer_params(wrong, template)
    assert "blocks/0/attn/qkv/kernel: shape (96, 3)" in str(err.value)
