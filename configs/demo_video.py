r"""MaskFeat video demo: a small MViTv2 pretrained with HOG targets on clips of the embedded
photos, on a CPU.

Nothing is downloaded: clips are rendered from the 18 training photos that ship inside
scikit-image 0.26.0 and scikit-learn by smooth random camera paths (pan, zoom, small
rotation), then go through the same path as the K400 recipe: cube masks on 2-frame x 32-px
units, HOG targets of frames 0, 2, 4, ..., the sharded jitted step and an Orbax checkpoint.
The model is MViTv2 with the reference's structure at a small size: 5 blocks, 48-d, stages
starting at blocks 1, 3 and 4 (the last one's q stride removed, as in pretraining), on
8 frames of 128 px (4 x 32 x 32 input tokens, 4 x 8 x 8 output tokens of 16 px).

Run:
  python -m maskfeat_jax.main --config configs/demo_video.py --workdir runs/demo_video
Expected on a 2-core CPU: about 10 minutes (0.36 steps/s); the masked HOG loss falls from
about 0.26 at step 1 to about 0.05 by step 20 and 0.043-0.049 afterwards (metrics in
runs/demo_video/metrics.jsonl, checkpoint in runs/demo_video/checkpoints/200).
Variants: `:smoke` runs 10 steps of a 4-block model; `:vit` trains a 6-block ViT-Ti with
2 x 16 x 16 tubelets on the same clips instead.
"""

from configs import common


def get_config(arg=None):
    c = common.video_pretrain_config()
    c.total_steps = 200
    c.log_every_steps = 20
    c.model.update(
        variant="MViTv2-S",
        image_size=128,
        num_frames=8,
        embed_dim=48,
        num_heads=1,
        depth=5,
        stage_starts=(1, 3, 4),
    )
    c.mask.grid = (4, 4, 4)  # 2 frames x 32 x 32 px per unit, as in the recipe
    c.input.update(dataset="embedded", split="train", batch_size=16)
    c.optim.update(base_lr=2e-3, warmup_steps=20)  # 1e-3 at batch 16
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    if arg == "smoke":
        c.total_steps = 10
        c.log_every_steps = 5
        # Two q-pooled blocks keep 16-px output tokens (the third stage start is not pooled).
        c.model.update(depth=4, stage_starts=(1, 2, 3))
        c.optim.warmup_steps = 2
    elif arg == "vit":
        # The video ViT: 2 x 16 x 16 tubelets, 4 x 8 x 8 tokens, one unit = 2 x 2 tokens.
        c.model = common.pretrain_config().model
        c.model.update(variant="Ti/2x16", image_size=128, num_frames=8, depth=6)
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use ':smoke', ':vit' or nothing.")
    return c
