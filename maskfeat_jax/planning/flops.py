"""Model FLOPs of a training step: the work the model needs, without recomputation; the
denominator of MFU."""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import ml_collections
from flax import nnx

from maskfeat_jax import models, tasks
from maskfeat_jax.planning.chips import PlanError


def model_flops_per_step(config: ml_collections.ConfigDict) -> float:
    """Model FLOPs of one training step for the whole global batch: 3 x the forward pass of
    the encoder and head (forward + backward, no rematerialization), counted on the lowered
    forward program on this machine's CPU. The head has the run's per-token target size (HOG
    or pixels). Targets, loss and optimizer are left out (HOG is ~0.05 GFLOP per image
    against ~110 for ViT-B/16)."""
    task = tasks.from_config(config)
    plain = copy.deepcopy(config.model)
    plain.remat = False
    if "scan" in plain:
        plain.scan = False  # a scanned body would be counted once, not once per layer
    model = nnx.eval_shape(
        lambda: models.from_config(plain, nnx.Rngs(0), target_size=task.target_size)
    )
    graphdef, state = nnx.split(model)
    spec = model.spec
    b = config.input.batch_size
    frames = (spec.num_frames,) if spec.is_video else ()
    dtype = models.compute_dtype(plain.get("dtype", "float32"))
    images = jax.ShapeDtypeStruct((b, *frames, spec.image_size, spec.image_size, 3), dtype)
    mask = None
    if task.is_pretraining:
        mask = jax.ShapeDtypeStruct((b, math.prod(spec.token_grid)), jnp.bool_)

    def forward(state, images, mask):
        return nnx.merge(graphdef, state)(images, mask)

    cpu = jax.devices("cpu")[0]
    with jax.default_device(cpu):
        cost = jax.jit(forward).lower(state, images, mask).cost_analysis()
    if not cost or "flops" not in cost:
        raise PlanError("this JAX build gives no cost analysis of lowered programs on CPU")
    return 3.0 * float(cost["flops"])
