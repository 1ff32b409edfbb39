"""A small pretraining config on the tests' 8-device mesh, random batches and clips for it,
and a few steps of the real trainer."""

import jax
import numpy as np
from flax import nnx

from maskfeat_jax import defaults, masking, sharding
from maskfeat_jax import trainer as trainer_lib


def tiny_config(batch=8, mesh=(("data", 2), ("fsdp", 4), ("tensor", 1))):
    c = defaults.pretrain_config()
    c.model.update(variant="B/16", image_size=32, width=64, depth=2, num_heads=4, mlp_dim=128)
    c.mask.update(ratio=0.5)
    c.input.batch_size = batch
    c.total_steps = 10
    c.optim.update(warmup_steps=2, base_lr=1e-3, clip_grad_norm=1.0)
    c.mesh = mesh
    return c


def random_batch(config, seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.input.batch_size, config.model.image_size
    grid = s // 16
    return {
        "image": rng.integers(0, 256, size=(b, s, s, 3), dtype=np.uint8),
        "mask": rng.random((b, grid, grid)) < 0.5,
    }


def run_steps(config, mesh, batches, init_state=None):
    trainer = trainer_lib.build_trainer(config, mesh)
    state = (
        trainer.init(jax.random.key(0))
        if init_state is None
        else jax.device_put(init_state, trainer.state_shardings)
    )
    losses = []
    for b in batches:
        state, metrics = trainer.step(
            state, sharding.to_global(b, trainer.batch_sharding), jax.random.key(0)
        )
        losses.append(float(metrics["loss"]))
    return trainer, state, losses


def params_of(state):
    return {k: np.asarray(v.get_value()) for k, v in nnx.to_flat_state(state[0])}


# The op forms accelerators run: an MViT step with them compiles about twice as fast on this
# CPU as with the CPU forms, which tests/unit/models/test_kernels.py and the PyTorch parity
# tests check against them.
REFERENCE_KERNELS = "reference"


def tiny_video_config(family, batch=8, mesh=(("data", 2), ("fsdp", 4), ("tensor", 1))):
    """A small video model on 8-frame clips, with the K400 recipe's cube masks."""
    c = defaults.video_pretrain_config()
    if family == "mvit":
        # 4 x 16 x 16 input tokens, q-pooled at blocks 1 and 2 to 4 x 4 x 4 output tokens of
        # 2 frames x 16 px (block 3's stride removed, as in pretraining); one mask unit =
        # 2 x 2 output tokens = 8 x 8 input tokens.
        c.model.update(image_size=64, num_frames=8, embed_dim=16, depth=4, stage_starts=(1, 2, 3))
        c.model.kernels = REFERENCE_KERNELS
        c.mask.grid = (4, 2, 2)
    else:  # the ViT with 2 x 16 x 16 tubelets: 4 x 2 x 2 tokens, one unit per token
        c.model = defaults.pretrain_config().model
        c.model.update(
            variant="B/2x16",
            image_size=32,
            num_frames=8,
            width=64,
            depth=2,
            num_heads=4,
            mlp_dim=128,
        )
        c.mask.grid = (4, 2, 2)
    c.mask.update(min_patches=1, max_patches=4)
    c.input.batch_size = batch
    c.total_steps = 10
    c.optim.update(warmup_steps=2, base_lr=1e-3, lr_batch_reference=batch, clip_grad_norm=1.0)
    c.mesh = mesh
    return c


def random_clips(config, seed=0):
    """Smooth random clips (a moving gradient plus noise) and cube masks from the generator."""
    rng = np.random.default_rng(seed)
    b, t, s = config.input.batch_size, config.model.num_frames, config.model.image_size
    gen = masking.from_config(config.mask, grid=config.mask.grid)
    yy, xx = np.mgrid[:s, :s]
    frames = [
        [(xx * np.cos(a + 0.1 * f) + yy * np.sin(a + 0.1 * f)) * 4 for f in range(t)]
        for a in rng.uniform(0, np.pi, b)
    ]
    clips = np.asarray(frames)[..., None] + rng.normal(0, 8, (b, t, s, s, 3))
    return {
        "image": np.clip(clips + 128, 0, 255).astype(np.uint8),
        "mask": np.stack([gen(rng) for _ in range(b)]),
    }
