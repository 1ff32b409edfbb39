"""MViTv2: the reference's block table, parameter counts and names, the relative-position
index, mask tokens, remat, bfloat16 compute and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax.models import mvit
from tests.support.small_mvit import apply, build, small_spec


def n_params(spec):
    model = nnx.eval_shape(lambda: mvit.MViT(spec, rngs=nnx.Rngs(0)))
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


@pytest.mark.slow
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


def test_relative_index_matches_the_reference_formula():
    # q 56 x k 7 (block 0 of MViTv2-S): rows i - 8 j + 48, all inside the 111-row table.
    idx = mvit.relative_index(56, 7)
    i, j = np.meshgrid(np.arange(56), np.arange(7), indexing="ij")
    np.testing.assert_array_equal(idx, i - 8 * j + 48)
    assert idx.min() == 0 and idx.max() < 111
    np.testing.assert_array_equal(
        mvit.relative_index(4, 4), np.subtract.outer(range(4), range(4)) + 3
    )


# Compiled: op by op, the embedding's strided views each compile a program of their own.
embed = nnx.jit(lambda model, x, mask=None: model.embed(x, mask))


def test_mask_tokens_replace_input_embeddings():
    spec = small_spec()
    model = build(spec)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 8, 64, 64, 3)), jnp.float32)
    mask = np.zeros((1, *spec.token_grid), bool)
    mask[0, 1, :8, :8] = True  # one 32-px cube unit in temporal slot 1
    tokens = np.asarray(embed(model, x, jnp.asarray(mask.reshape(1, -1))))
    flat_mask = mask.reshape(-1)
    np.testing.assert_allclose(
        tokens[0, 1:][flat_mask], np.broadcast_to(model.mask_token[...][0], (64, 16)), atol=1e-6
    )
    plain = np.asarray(embed(model, x))
    np.testing.assert_allclose(tokens[0, 1:][~flat_mask], plain[0, 1:][~flat_mask], atol=1e-6)
    # Replaced, not added to: the masked region's pixels do not reach its tokens.
    x2 = x.at[:, 2:4, :32, :32].set(3.0)
    np.testing.assert_allclose(
        np.asarray(embed(model, x2, jnp.asarray(mask.reshape(1, -1))))[0, 1:][flat_mask],
        tokens[0, 1:][flat_mask],
        atol=1e-6,
    )


@pytest.mark.slow
def test_remat_computes_the_same_function_and_gradients():
    # Two blocks (the second q-pooled, with relative positions) on 4 frames at 32 px.
    spec = small_spec(depth=2, stage_starts=(1,), num_frames=4, image_size=32)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 4, 32, 32, 3)), jnp.float32)
    ref = build(spec)
    other = build(spec, remat=True)
    grad = nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(x) ** 2)))
    (v_ref, g_ref), (v, g) = grad(ref), grad(other)
    np.testing.assert_allclose(v, v_ref, rtol=1e-6)
    got = np.asarray(g["blocks"][1]["attn"]["rel_pos_h"][...])
    want = np.asarray(g_ref["blocks"][1]["attn"]["rel_pos_h"][...])
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


@pytest.mark.slow
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
