"""Fine-tuning against timm: layer-decay scales per parameter and drop-path rates."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax.interop import torch_names
from maskfeat_jax.models import layers, vit
from tests.support.layer_decay import multipliers

# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay.
# ---------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_layer_decay_matches_timm_param_groups_on_a_vit():
    """timm's ``param_groups_layer_decay`` (the rule MAE/BEiT/SlowFast share) is the reference:
    each torch parameter's ``lr_scale`` must equal our factor for the same weight."""
    timm = pytest.importorskip("timm")
    from timm.optim._param_groups import param_groups_layer_decay

    depth, decay = 3, 0.65
    spec = vit.make_spec("Ti/16", image_size=32, depth=depth, num_classes=5)
    model = vit.ViT(spec, rngs=nnx.Rngs(0))
    ours = multipliers(model, decay, depth)
    reference = timm.create_model(
        "vit_tiny_patch16_224",
        img_size=32,
        depth=depth,
        num_classes=5,
        global_pool="avg",
        fc_norm=True,
        class_token=True,
    )
    groups = param_groups_layer_decay(reference, weight_decay=0.05, layer_decay=decay)
    scale_of = {}
    for group in groups:
        for p in group["params"]:
            scale_of[id(p)] = group["lr_scale"]
    torch_scale = {name: scale_of[id(p)] for name, p in reference.named_parameters()}
    checked = 0
    for path, factor in ours.items():
        name = torch_names.torch_key(path, torch_names.TIMM_VIT)
        assert name in torch_scale, (path, name)
        np.testing.assert_allclose(factor, torch_scale[name], rtol=1e-6, err_msg=path)
        checked += 1
    assert checked == len(torch_scale)  # every timm parameter has its counterpart


# ---------------------------------------------------------------------------------------------
# Drop path.
# ---------------------------------------------------------------------------------------------


def test_drop_path_rates_match_timm_and_drop_whole_examples():
    timm_layers = pytest.importorskip("timm.layers")
    np.testing.assert_allclose(
        layers.drop_path_rates(0.1, 12), timm_layers.calculate_drop_path_rates(0.1, 12), atol=1e-7
    )
    x = jnp.ones((4000, 3, 2))
    y = np.asarray(layers.drop_path(x, 0.25, jax.random.key(0)))
    kept = y[:, 0, 0] > 0
    assert abs(kept.mean() - 0.75) < 0.03
    np.testing.assert_allclose(y[kept], 1 / 0.75, rtol=1e-6)  # survivors rescaled
    assert (y[~kept] == 0).all()
    assert (np.asarray(layers.drop_path(x, 0.25, None)) == 1).all()  # evaluation: identity


# ---------------------------------------------------------------------------------------------
# The classification step and the EMA.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The recipes.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------
