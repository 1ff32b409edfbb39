r"""MaskFeat MViTv2-L 16x4 pretraining on Kinetics-400 with HOG targets.

Reference recipe (SlowFast k400_MVITv2_L_16x4_MaskFeat_PT.yaml, same solver as MViTv2-S;
released checkpoint at epoch 800): 144-d, 2 heads, 48 blocks with stages starting at 2, 8
and 44 (the q stride of block 44 removed for pretraining); 16 x 4 clips at 224 px; cube
masks 40% of 8x7x7; global batch 512 at 1e-4 per 32 clips, 10 warmup epochs, clip 0.02.
Remat per block and bfloat16 compute for TPU memory.
Expected: fine-tuned K400 top-1 84.3 (1 x 10 views) after 800 epochs.

Run (DATA_DIR holds record shards of Kinetics-400's train videos, made once with
`python -m maskfeat_jax.data.prepare_video --videos_dir k400/train --out $DATA_DIR --split train`):
  python -m maskfeat_jax.main --config configs/k400_mvitv2_l_pretrain.py \
      --config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/mvit_l
Variants: `:300ep` for the yaml's 300-epoch schedule.
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.video_pretrain_config()
    c.total_epochs = 800
    c.model.update(variant="MViTv2-L", dtype="bfloat16", remat=True)
    if arg == "300ep":
        c.total_epochs = 300
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use ':300ep' or nothing.")
    return c
