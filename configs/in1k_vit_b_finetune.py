r"""Fine-tuning a MaskFeat ViT-B/16 on ImageNet-1K.

Reference recipe (SlowFast in1k_VIT_B_MaskFeat_FT.yaml; mmpretrain's 2048 batch): global
batch 2048 at 2e-3 per 512 (8e-3), 100 epochs, 20 warmup from 1e-8, cosine to 1e-6, AdamW
wd 0.05, no clipping, layer decay 0.65, drop path 0.1, RandomResizedCrop (0.08, 1) bicubic +
flip + RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25, mixup 0.8 / cutmix 1.0 with
label smoothing 0.1; evaluation at resize 256, centre 224.
Expected: top-1 84.0 from the 1600-epoch pretraining (83.6 from 300 epochs).

Run (ImageNet prepared with tfds under DATA_DIR; PT = a pretraining run's workdir or a
weights checkpoint from maskfeat_jax.import_torch):
  python -m maskfeat_jax.main --config configs/in1k_vit_b_finetune.py \
      --config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_vit_b
Top-1/top-5 are written to WORKDIR/results.json and WORKDIR/eval/.
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.finetune_config()
    c.model.variant = "B/16"
    c.eval.every_epochs = 10
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; this config has none.")
    return c
