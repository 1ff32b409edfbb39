"""The ViT-L fine-tuning config builds the model timm builds (its parameter count)."""

import jax
import numpy as np
from flax import nnx

from maskfeat_jax.models import vit


def test_vit_l_finetune_form_matches_timm_parameter_count():
    # timm vit_large_patch16_224: 304,326,632 parameters.
    model = nnx.eval_shape(
        lambda: vit.ViT(vit.make_spec("L/16", num_classes=1000), rngs=nnx.Rngs(0))
    )
    assert (
        sum(int(np.prod(x.shape)) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
        == 304_326_632
    )
