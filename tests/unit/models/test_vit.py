"""ViT: parameter counts and names of the reference, mask tokens, scan and remat, bfloat16
compute, video tubelets and input errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax.models import vit


def tiny_spec(**kw):
    base = {"width": 32, "depth": 2, "num_heads": 4, "mlp_dim": 64, "image_size": 32}
    base.update(kw)
    return vit.make_spec("B/16", **base)


def n_params(model_fn):
    state = nnx.state(nnx.eval_shape(model_fn), nnx.Param)
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(state))


def test_vit_b_parameter_counts_equal_the_reference():
    # SlowFast MaskMViT ViT-B PT and the FT model with a 1000-way head (maskfeat.md C1).
    assert n_params(lambda: vit.ViT(vit.make_spec("B/16"), rngs=nnx.Rngs(0))) == 85_882_476
    assert (
        n_params(lambda: vit.ViT(vit.make_spec("B/16", num_classes=1000), rngs=nnx.Rngs(0)))
        == 86_567_656
    )


def test_parameter_names_mirror_pytorch_keys():
    model = nnx.eval_shape(lambda: vit.ViT(vit.make_spec("B/16"), rngs=nnx.Rngs(0)))
    flat = {
        "/".join(map(str, p)): v.shape for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    assert flat["cls_token"] == (1, 1, 768)
    assert flat["pos_embed"] == (1, 197, 768)
    assert flat["mask_token"] == (1, 1, 768)
    assert flat["patch_embed/proj/kernel"] == (16, 16, 3, 768)
    assert flat["blocks/11/attn/qkv/kernel"] == (768, 2304)
    assert flat["blocks/0/mlp/fc2/kernel"] == (3072, 768)
    assert flat["pred_head/proj/kernel"] == (768, 108)
    assert flat["pred_head/norm/scale"] == (768,)
    # 5 top-level + 12 per block x 12 + head LN 2 + head linear 2 = SF's 155 keys less 2 HOG buffers
    assert len(flat) == 5 + 12 * 12 + 4


def test_variant_table_and_errors():
    spec = vit.make_spec("L/16")
    assert (spec.width, spec.depth, spec.num_heads, spec.mlp_dim) == (1024, 24, 16, 4096)
    assert vit.make_spec("H/14").patch_size == 14
    video = vit.make_spec("B/2x16", num_frames=16)
    assert video.tubelet == 2 and video.grid == (8, 14, 14)
    with pytest.raises(ValueError, match="Unknown ViT variant"):
        vit.make_spec("X/16")
    with pytest.raises(ValueError, match="not a multiple of patch_size"):
        vit.make_spec("B/16", image_size=100)
    with pytest.raises(ValueError, match="not divisible by num_heads"):
        vit.make_spec("B/16", width=30, num_heads=4)


@pytest.mark.slow
def test_mask_token_replaces_embeddings_before_cls_and_pos():
    spec = tiny_spec()
    model = vit.ViT(spec, rngs=nnx.Rngs(0))
    x = jnp.asarray(np.random.default_rng(0).normal(size=(1, 32, 32, 3)), jnp.float32)
    mask = jnp.array([[True, False, False, True]])
    tokens = model.embed(x, mask)
    pos = model.pos_embed[...][0]
    np.testing.assert_allclose(tokens[0, 0], model.cls_token[...][0, 0] + pos[0], atol=1e-6)
    for i, masked in enumerate(np.asarray(mask[0])):
        if masked:  # replaced, not added to: independent of the image
            np.testing.assert_allclose(
                tokens[0, 1 + i], model.mask_token[...][0, 0] + pos[1 + i], atol=1e-6
            )
    unmasked = model.embed(x, None)
    np.testing.assert_allclose(tokens[0, 2], unmasked[0, 2], atol=1e-6)
    assert not np.allclose(tokens[0, 1], unmasked[0, 1])
    # A masked patch's content cannot reach the output through its own token.
    x2 = x.at[:, :16, :16].set(5.0)
    np.testing.assert_allclose(model.embed(x2, mask)[0, 1], tokens[0, 1], atol=1e-6)


def stacked_from_list(model_list, model_scan):
    """Copy a loop model's per-block params into a scanned model's stacked params."""
    src = nnx.state(model_list, nnx.Param)
    dst = nnx.state(model_scan, nnx.Param)
    flat_src = {k: v.get_value() for k, v in nnx.to_flat_state(src)}
    new = {}
    for k, v in nnx.to_flat_state(dst):
        if k[0] == "blocks":
            rest = k[1:]
            new[k] = jnp.stack(
                [flat_src[("blocks", i) + rest] for i in range(v.get_value().shape[0])]
            )
        else:
            new[k] = flat_src[k]
    for k, v in nnx.to_flat_state(dst):
        v.set_value(new[k])
    nnx.update(model_scan, dst)


@pytest.mark.slow
def test_scan_and_remat_compute_the_same_function_and_gradients():
    spec = tiny_spec(depth=3)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    mask = jnp.array([[True, False, True, False], [False, False, True, True]])
    ref = vit.ViT(spec, rngs=nnx.Rngs(0))
    out_ref = ref(x, mask)
    g_ref = nnx.grad(lambda m: jnp.sum(m(x, mask) ** 2))(ref)
    for scan, remat in [(True, False), (False, True), (True, True)]:
        other = vit.ViT(spec, scan=scan, remat=remat, rngs=nnx.Rngs(0))
        if scan:
            stacked_from_list(ref, other)
        else:
            nnx.update(other, nnx.state(ref, nnx.Param))
        np.testing.assert_allclose(other(x, mask), out_ref, atol=1e-5)
        g = nnx.grad(lambda m: jnp.sum(m(x, mask) ** 2))(other)
        g_blocks = (
            g["blocks"]["attn"]["qkv"]["kernel"][...][1]
            if scan
            else g["blocks"][1]["attn"]["qkv"]["kernel"][...]
        )
        np.testing.assert_allclose(
            g_blocks, g_ref["blocks"][1]["attn"]["qkv"]["kernel"][...], atol=1e-5
        )


@pytest.mark.slow
def test_bfloat16_compute_keeps_float32_params_and_outputs():
    spec = tiny_spec()
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    f32 = vit.ViT(spec, rngs=nnx.Rngs(0))
    bf16 = vit.ViT(spec, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    assert all(v.dtype == jnp.float32 for v in jax.tree.leaves(nnx.state(bf16, nnx.Param)))
    out = bf16(x)
    assert out.dtype == jnp.float32
    np.testing.assert_allclose(out, f32(x), atol=0.1)
    assert not np.array_equal(np.asarray(out), np.asarray(f32(x)))


@pytest.mark.slow
def test_video_tubelets_and_finetune_head_shapes():
    spec = vit.make_spec(
        "B/2x16", width=32, depth=1, num_heads=4, mlp_dim=64, image_size=32, num_frames=4
    )
    model = vit.ViT(spec, rngs=nnx.Rngs(0))
    clips = jnp.zeros((2, 4, 32, 32, 3))
    assert model(clips, jnp.zeros((2, 2 * 2 * 2), bool)).shape == (2, 8, 108)
    assert model.patch_embed.proj.kernel.shape == (2, 16, 16, 3, 32)
    ft = vit.ViT(tiny_spec(num_classes=10), rngs=nnx.Rngs(0))
    logits = ft(jnp.zeros((3, 32, 32, 3)))
    assert logits.shape == (3, 10)
    assert float(jnp.abs(ft.head.kernel[...]).max()) < 1e-3  # 1e-3 scaled init


def test_bad_inputs_name_the_fix():
    model = vit.ViT(tiny_spec(), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match="image_size / num_frames"):
        model(jnp.zeros((1, 48, 48, 3)))
    with pytest.raises(ValueError, match="upsample the mask"):
        model(jnp.zeros((1, 32, 32, 3)), jnp.zeros((1, 9), bool))
