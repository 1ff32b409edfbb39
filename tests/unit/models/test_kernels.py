"""config.model.kernels: each value traces its own op forms, and both forms give the same
model (outputs and gradients) for the ViT and the MViT."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import defaults, models
from maskfeat_jax.models import mvit, vit
from tests.support.random_models import random_model


def _loss_and_grads(model, x, mask):
    return nnx.jit(nnx.value_and_grad(lambda m: jnp.sum(m(x, mask) ** 2)))(model)


def _primitives(model, x, mask):
    jaxpr = jax.make_jaxpr(lambda x, mask: model(x, mask))(x, mask)
    return {str(e.primitive) for e in jaxpr.jaxpr.eqns}


SPECS = {
    # 4 frames at 32 px: 2 x 8 x 8 input tokens, q-pooled once to 2 x 4 x 4.
    "mvit": lambda: mvit.make_spec(
        "MViTv2-S", embed_dim=8, num_heads=1, depth=2, stage_starts=(1,), num_frames=4,
        image_size=32, target_size=6,
    ),  # fmt: skip
    "vit": lambda: vit.make_spec(
        "B/16", width=16, depth=2, num_heads=2, mlp_dim=32, image_size=32, target_size=6
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(SPECS))
def test_reference_and_tuned_kernels_give_the_same_model(family):
    spec = SPECS[family]()
    rng = np.random.default_rng(0)
    frames = (spec.num_frames,) if spec.is_video else ()
    x = jnp.asarray(rng.normal(size=(2, *frames, 32, 32, 3)), jnp.float32)
    mask = jnp.asarray(rng.random((2, int(np.prod(spec.token_grid)))) < 0.4)
    results, primitives = {}, {}
    for kernels in ("tuned", "reference"):
        model = random_model(spec, seed=1, kernels=kernels)
        results[kernels] = _loss_and_grads(model, x, mask)
        primitives[kernels] = _primitives(model, x, mask)
    # The knob reaches the ops: the tuned forms carry hand-written backward passes.
    assert "custom_vjp_call" in primitives["tuned"]
    assert "custom_vjp_call" not in primitives["reference"]
    (v_t, g_t), (v_r, g_r) = results["tuned"], results["reference"]
    np.testing.assert_allclose(v_t, v_r, rtol=2e-6)
    flat_t, flat_r = dict(nnx.to_flat_state(g_t)), dict(nnx.to_flat_state(g_r))
    assert flat_t.keys() == flat_r.keys()
    # float32 sums in another order: compared at the scale of the largest gradient (some,
    # such as the key LayerNorm's bias under softmax, are zero up to rounding)
    scale = max(np.abs(np.asarray(g.get_value())).max() for g in flat_r.values())
    for path, grad in flat_r.items():
        np.testing.assert_allclose(
            np.asarray(flat_t[path].get_value()), np.asarray(grad.get_value()), rtol=0,
            atol=1e-5 * scale, err_msg=str(path),
        )  # fmt: skip


def test_an_unknown_kernels_value_names_the_choices():
    c = defaults.pretrain_config().model
    c.kernels = "fast"
    with pytest.raises(ValueError, match=r"config.model.kernels='fast' is not one of"):
        models.from_config(c, nnx.Rngs(0), target_size=108)
