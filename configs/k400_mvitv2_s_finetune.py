r"""Fine-tuning a MaskFeat MViTv2-S 16x4 on Kinetics-400.

Reference recipe (SlowFast k400_MVITv2_S_16x4_FT.yaml): the fine-tuning form (block-14 q
stride back, 7x7 last stage; rel-pos tables resized on load), 16 frames x stride 4 at 224,
repeated augmentation x2, 6e-4 per 32 clips (here 128 clips, 2.4e-3), 100 epochs, 20 warmup
from 1e-6, cosine to 1e-6, layer decay 0.75, drop path 0.1, clip 5.0, RandomResizedCrop area
(0.08, 1) + flip + RandAugment rand-m7-mstd0.5-inc1 + random erasing 0.25, mixup 0.8 /
cutmix 1.0, label smoothing 0.1. Test: short side 256, centre 224, 10 clips x 1 crop, summed
softmax. Expected: top-1 82.2 from the 300-epoch pretraining.

Run (record shards from `python -m maskfeat_jax.data.prepare_video`, splits train and
validation, in DATA_DIR):
  python -m maskfeat_jax.main --config configs/k400_mvitv2_s_finetune.py \
      --config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_mvit_s
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.video_finetune_config()
    c.eval.every_epochs = 10
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; this config has none.")
    return c
