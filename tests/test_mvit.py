"""MViTv2: the reference's block table and parameter counts, exact parity with torchvision's
generic MViT class built with MaskFeat's block settings, mask-token semantics, the
relative-position table resize, remat and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import mvit

torch = pytest.importorskip("torch")
from benchmarks import torch_reference
from tests.random_models import random_params


def small_spec(**kw):
    # 8 frames at 64 px: 4x16x16 input tokens, q-pooled to 8x8 and 4x4; the last stage start
    # keeps 4x4 in the pretraining form (16-px output tokens, like the full model).
    base = {"embed_dim": 16, "num_heads": 1, "depth": 4, "stage_starts": (1, 2, 3)}
    base.update(num_frames=8, image_size=64)
    base.update(kw)
    return mvit.make_spec("MViTv2-S", **base)


def build(spec, seed=0, dtype=jnp.float32, **kw):
    """A model with random parameters, without compiling the initializers (slow on CPU)."""
    model = nnx.eval_shape(lambda: mvit.MViT(spec, dtype=dtype, rngs=nnx.Rngs(0), **kw))
    torch_names.load_flat_params(model, random_params(torch_names.flat_params(model), seed))
    return model


@nnx.jit
def encode(model, x):
    return model.encode(x)


@nnx.jit
def apply(model, x, mask=None):
    return model(x, mask)


def n_params(spec):
    model = nnx.eval_shape(lambda: mvit.MViT(spec, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_parameter_counts_equal_the_reference():
    # maskfeat.md C2 and export_and_data.md 1b: S PT / FT (400 classes), L PT / FT.
    assert n_params(mvit.make_spec("MViTv2-S")) == 36_253_356
    assert n_params(mvit.make_spec("MViTv2-S", num_classes=400)) == 36_475_120
    assert n_params(mvit.make_spec("MViTv2-L")) == 217_247_580


def test_block_table_of_mvitv2_s_matches_the_reference():
    pt = mvit.make_spec("MViTv2-S").blocks()
    got = [(b.dim, b.dim_out, b.num_heads, b.q_stride, b.kv_stride) for b in pt]
    assert got[0] == (96, 192, 1, (1, 1, 1), (1, 8, 8))
    assert got[1] == (192, 192, 2, (1, 2, 2), (1, 4, 4))
    assert got[2] == (192, 384, 2, (1, 1, 1), (1, 4, 4))
    assert got[3] == (384, 384, 4, (1, 2, 2), (1, 2, 2))
    assert all(g == (384, 384, 4, (1, 1, 1), (1, 2, 2)) for g in got[4:13])
    assert got[13] == (384, 768, 4, (1, 1, 1), (1, 2, 2))
    assert got[14] == got[15] == (768, 768, 8, (1, 1, 1), (1, 2, 2))  # PT: no q stride at 14
    assert [b.rel_pos_spatial for b in pt] == [111, 55, 55] + [27] * 13
    assert {b.rel_pos_temporal for b in pt} == {15} and {b.head_dim for b in pt} == {96}
    assert pt[-1].output_thw == (8, 14, 14)
    ft = mvit.make_spec("MViTv2-S", num_classes=400).blocks()
    assert (ft[14].q_stride, ft[14].kv_stride) == ((1, 2, 2), (1, 1, 1))
    assert ft[15].rel_pos_spatial == 13 and ft[-1].output_thw == (8, 7, 7)
    spec = mvit.make_spec("MViTv2-S")
    assert (spec.grid, spec.token_grid, spec.patch_size, spec.tubelet) == (
        (8, 14, 14),
        (8, 56, 56),
        16,
        2,
    )
    image = mvit.make_spec("MViTv2-S", num_frames=1)
    assert (image.grid, image.token_grid, image.patch_size) == ((14, 14), (56, 56), 16)


def test_parameter_names_mirror_slowfast_keys():
    model = nnx.eval_shape(lambda: mvit.MViT(mvit.make_spec("MViTv2-S"), rngs=nnx.Rngs(0)))
    flat = {
        "/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    assert flat["patch_embed/proj/kernel"] == (3, 7, 7, 3, 96)
    assert flat["cls_token"] == flat["mask_token"] == (1, 1, 96)
    assert flat["blocks/0/attn/qkv/kernel"] == (96, 288)
    assert flat["blocks/0/mlp/fc2/kernel"] == (384, 192)
    assert flat["blocks/0/proj/kernel"] == (96, 192)
    assert flat["blocks/13/attn/qkv/kernel"] == (384, 1152)
    assert flat["blocks/14/attn/qkv/kernel"] == (768, 2304)
    assert flat["blocks/1/attn/pool_q/kernel"] == (3, 3, 3, 1, 96)
    assert flat["blocks/0/attn/rel_pos_h"] == (111, 96)
    assert flat["blocks/5/attn/rel_pos_t"] == (15, 96)
    assert flat["pred_head/proj/kernel"] == (768, 108)
    assert {k.split("/")[1] for k in flat if k.endswith("/proj/kernel") and "attn" not in k} >= {
        "0",
        "2",
        "13",
    }
    # SlowFast's 400 keys less its two HOG buffers.
    assert len(flat) == 398


def build_torchvision(spec, dtype=None):
    return torch_reference.torchvision_mvit(
        spec, dtype=torch.float64 if dtype == "float64" else torch.float32
    )


def jax_model_from_torchvision(tv, spec, dtype):
    return torch_reference.jax_mvit_from_torchvision(tv, spec, dtype)


torch_tokens = torch_reference.torchvision_mvit_tokens


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


def test_relative_index_matches_the_reference_formula():
    # q 56 x k 7 (block 0 of MViTv2-S): rows i - 8 j + 48, all inside the 111-row table.
    idx = mvit.relative_index(56, 7)
    i, j = np.meshgrid(np.arange(56), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(idx, i - 8 * j + 48)
    assert idx.min() == 0 and idx.max() < 111
    np.testing.assert_array_equal(
        mvit.relative_index(4, 4), np.subtract.outer(range(4), range(4)) + 3
    )


def test_mask_tokens_replace_input_embeddings():
    spec = small_spec()
    model = build(spec)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 64, 64, 3)), jnp.float32)
    mask = np.zeros((1, *spec.token_grid), bool)
    mask[0, 1, :8, :8] = True  # one 32-px cube unit in temporal slot 1
    tokens = model.embed(x, jnp.asarray(mask.reshape(1, -1)))
    flat_mask = mask.reshape(-1)
    np.testing.assert_allclose(
        tokens[0, 1:][flat_mask], np.broadcast_to(model.mask_token[...][0], (64, 16)), atol=1e-6
    )
    plain = model.embed(x)
    np.testing.assert_allclose(tokens[0, 1:][~flat_mask], plain[0, 1:][~flat_mask], atol=1e-6)
    # Replaced, not added to: the masked region's pixels do not reach its tokens.
    x2 = x.at[:, 2:4, :32, :32].set(3.0)
    np.testing.assert_allclose(
        model.embed(x2, jnp.asarray(mask.reshape(1, -1)))[0, 1:][flat_mask],
        tokens[0, 1:][flat_mask],
        atol=1e-6,
    )


def test_remat_computes_the_same_function_and_gradients():
    spec = small_spec()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 64, 64, 3)), jnp.float32)
    ref = build(spec)
    other = build(spec, remat=True)
    grad = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2)))
    (v_ref, g_ref), (v, g) = grad(ref), grad(other)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    got = np.asarray(g["blocks"][1]["attn"]["rel_pos_h"][...])
    want = np.asarray(g_ref["blocks"][1]["attn"]["rel_pos_h"][...])
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_bfloat16_compute_keeps_float32_params_and_outputs():
    spec = small_spec()
    model = build(spec, dtype=jnp.bfloat16)
    x = jnp.zeros((1, 8, 64, 64, 3), jnp.float32)
    out = apply(model, x)
    assert out.dtype == jnp.float32 and out.shape == (1, 64, 108)
    assert model.blocks[0].attn.qkv.kernel[...].dtype == jnp.float32


def test_errors_name_the_fix():
    with pytest.raises(ValueError, match="Unknown MViT variant"):
        mvit.make_spec("MViTv2-XL")
    with pytest.raises(ValueError, match="must be a multiple of 32"):
        small_spec(image_size=48)
    with pytest.raises(ValueError, match="temporal patch stride"):
        small_spec(num_frames=7)
    with pytest.raises(ValueError, match="stage_starts"):
        small_spec(stage_starts=(2, 1))
    spec = small_spec()
    model = build(spec)
    with pytest.raises(ValueError, match=r"per-example shape \(8, 64, 64, 3\)"):
        model(jnp.zeros((1, 4, 64, 64, 3)))
    with pytest.raises(ValueError, match="upsample the mask units"):
        model(jnp.zeros((1, 8, 64, 64, 3)), jnp.zeros((1, 64), bool))
    ft = build(small_spec(num_classes=3))
    with pytest.raises(ValueError, match="no mask token"):
        ft(jnp.zeros((1, 8, 64, 64, 3)), jnp.zeros((1, 1024), bool))


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
