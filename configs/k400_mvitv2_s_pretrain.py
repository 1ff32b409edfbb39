r"""MaskFeat MViTv2-S 16x4 pretraining on Kinetics-400 with HOG targets.

Reference recipe (SlowFast k400_MVITv2_S_16x4_MaskFeat_PT.yaml; mmpretrain's 16 x 32 batch):
16 frames at stride 4, 224 px, RandomResizedCrop area (0.5, 1), flip, no colour
augmentation; cube masks 40% of 8x7x7; global batch 512 at 1e-4 per 32 clips (1.6e-3),
10 warmup epochs, clip 0.02, 300 epochs. The block-14 q stride is removed so the last stage
stays 14x14 (one 108-d HOG target per 2 frames x 16 x 16 px).
Expected: fine-tuned K400 top-1 82.2 (1 x 10 views) after 300 epochs.

Run (DATA_DIR holds record shards of Kinetics-400's train videos, made once with
`python -m maskfeat_jax.data.prepare_video --videos_dir k400/train --out $DATA_DIR --split train`):
  python -m maskfeat_jax.main --config configs/k400_mvitv2_s_pretrain.py \
      --config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/mvit_s
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.video_pretrain_config()
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; this config has none.")
    return c
