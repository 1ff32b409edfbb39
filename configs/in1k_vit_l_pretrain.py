r"""MaskFeat ViT-L/16 pretraining on ImageNet-1K with HOG targets.

Reference recipe (SlowFast in1k_VIT_L_MaskFeat_PT.yaml, same solver as ViT-B; released
checkpoint at epoch 1600): global batch 2048 at 2e-4 per 256, 30 warmup epochs, clip 0.02,
no colour augmentation. Remat per block and bfloat16 compute for TPU memory.
Expected: fine-tuned top-1 85.7 after 1600 epochs.

Run:
  python -m maskfeat_jax.main --config configs/in1k_vit_l_pretrain.py \
      --config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/vit_l
Variants: `:300ep` for the 300-epoch schedule.
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.pretrain_config()
    c.model.variant = "L/16"
    c.model.dtype = "bfloat16"
    c.model.remat = True
    c.model.scan = True
    return defaults.apply_epochs_variant(c, arg)
