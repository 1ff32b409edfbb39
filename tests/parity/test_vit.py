"""The ViT encoder equals torchvision's VisionTransformer in float64."""

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


def to_torchvision(model, spec):
    """Our ViT weights -> torchvision VisionTransformer (an independent implementation)."""
    torch = pytest.importorskip("torch")
    from torchvision.models.vision_transformer import VisionTransformer

    tv = (
        VisionTransformer(
            image_size=spec.image_size,
            patch_size=spec.patch_size,
            num_layers=spec.depth,
            num_heads=spec.num_heads,
            hidden_dim=spec.width,
            mlp_dim=spec.mlp_dim,
            num_classes=1,
        )
        .double()
        .eval()
    )
    p = {
        "/".join(map(str, k)): np.asarray(v.get_value(), np.float64)
        for k, v in nnx.to_flat_state(nnx.state(model, nnx.Param))
    }
    t = lambda a: torch.from_numpy(np.array(a))
    sd = {
        "conv_proj.weight": t(p["patch_embed/proj/kernel"].transpose(3, 2, 0, 1)),
        "conv_proj.bias": t(p["patch_embed/proj/bias"]),
        "class_token": t(p["cls_token"]),
        "encoder.pos_embedding": t(p["pos_embed"]),
        "encoder.ln.weight": t(p["pred_head/norm/scale"]),
        "encoder.ln.bias": t(p["pred_head/norm/bias"]),
        "heads.head.weight": torch.zeros(1, spec.width, dtype=torch.float64),
        "heads.head.bias": torch.zeros(1, dtype=torch.float64),
    }
    for i in range(spec.depth):
        b, o = f"blocks/{i}/", f"encoder.layers.encoder_layer_{i}."
        sd.update(
            {
                o + "ln_1.weight": t(p[b + "norm1/scale"]),
                o + "ln_1.bias": t(p[b + "norm1/bias"]),
                o + "self_attention.in_proj_weight": t(p[b + "attn/qkv/kernel"].T),
                o + "self_attention.in_proj_bias": t(p[b + "attn/qkv/bias"]),
                o + "self_attention.out_proj.weight": t(p[b + "attn/proj/kernel"].T),
                o + "self_attention.out_proj.bias": t(p[b + "attn/proj/bias"]),
                o + "ln_2.weight": t(p[b + "norm2/scale"]),
                o + "ln_2.bias": t(p[b + "norm2/bias"]),
                o + "mlp.0.weight": t(p[b + "mlp/fc1/kernel"].T),
                o + "mlp.0.bias": t(p[b + "mlp/fc1/bias"]),
                o + "mlp.3.weight": t(p[b + "mlp/fc2/kernel"].T),
                o + "mlp.3.bias": t(p[b + "mlp/fc2/bias"]),
            }
        )
    tv.load_state_dict(sd, strict=True)
    return tv


@pytest.mark.slow
def test_encoder_matches_torchvision_vit_in_float64():
    torch = pytest.importorskip("torch")
    with jax.enable_x64(True):
        spec = tiny_spec(depth=3)
        model = vit.ViT(spec, dtype=jnp.float64, rngs=nnx.Rngs(1))
        # Parameters are float32 by design; promote them so both sides run in float64.
        nnx.update(
            model, jax.tree.map(lambda v: v.astype(jnp.float64), nnx.state(model, nnx.Param))
        )
        tv = to_torchvision(model, spec)
        x = np.random.default_rng(0).normal(size=(2, 32, 32, 3))
        ours = model.pred_head.norm(model.encode(jnp.asarray(x)))
        with torch.no_grad():
            feats = tv._process_input(torch.from_numpy(x.transpose(0, 3, 1, 2)).contiguous())
            feats = torch.cat([tv.class_token.expand(2, -1, -1), feats], dim=1)
            ref = tv.encoder(feats).numpy()
    np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-9, rtol=0)
