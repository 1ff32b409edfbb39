r"""MaskFeat video demo: a small MViTv2 pretrained with HOG targets on the embedded H.264
videos, on a CPU.

Nothing is downloaded: the first run films the 21 photos that ship inside scikit-image 0.26.0
and scikit-learn with smooth random camera paths (pan, zoom, small rotation), encodes them to
H.264 with PyAV and writes record shards into workdir/embedded_videos (about 30 s). Training
then reads them through the same pipeline as the K400 recipe: PyAV seek-and-decode of 8-frame
clips at stride 4, RandomResizedCrop, flip, cube masks on 2-frame x 32-px units, HOG targets
of frames 0, 2, 4, 6, the sharded jitted step and an Orbax checkpoint. The model is MViTv2
with the reference's structure at a small size: 5 blocks, 48-d, stages starting at blocks
1, 3 and 4 (the last one's q stride removed, as in pretraining), on 8 frames of 128 px
(4 x 32 x 32 input tokens, 4 x 8 x 8 output tokens of 16 px).

Run:
  python -m maskfeat_jax.main --config configs/demo_video.py --workdir runs/demo_video
Expected on a 2-core CPU: about 11 minutes (0.35 steps/s); the masked HOG loss falls from
0.263 at step 1 to about 0.056 by step 20 and stays at 0.049-0.057 afterwards (0.054 at step
200; metrics in runs/demo_video/metrics.jsonl, checkpoint in runs/demo_video/checkpoints/200).
Variants: `:smoke` runs 10 steps of a 4-block model on smaller videos; `:vit` trains a 6-block
ViT-Ti with 2 x 16 x 16 tubelets on the same clips instead.
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.video_pretrain_config()
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
    # The embedded H.264 videos (built in workdir/embedded_videos on first use, ~30 s), used
    # at their stored 240 px short side.
    c.input.update(dataset="embedded", split="train", batch_size=16, short_side=0)
    c.input.embedded_videos = dict(
        videos_per_photo=4, num_frames=120, height=240, width=320, fps=30, gop=60, crf=23, seed=0
    )
    c.optim.update(base_lr=2e-3, warmup_steps=20)  # 1e-3 at batch 16
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))
    c.visualize_every_steps = 100  # WORKDIR/pictures/step_*.png
    c.visualize_images = 2
    if arg == "smoke":
        c.total_steps = 10
        c.log_every_steps = 5
        # Two q-pooled blocks keep 16-px output tokens (the third stage start is not pooled).
        c.model.update(depth=4, stage_starts=(1, 2, 3))
        c.optim.warmup_steps = 2
        # One short, small video per photo: built in about a second.
        c.input.embedded_videos.update(videos_per_photo=1, num_frames=40, height=128, width=160)
    elif arg == "vit":
        # The video ViT: 2 x 16 x 16 tubelets, 4 x 8 x 8 tokens, one unit = 2 x 2 tokens.
        c.model = defaults.pretrain_config().model
        c.model.update(variant="Ti/2x16", image_size=128, num_frames=8, depth=6)
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use ':smoke', ':vit' or nothing.")
    return c
