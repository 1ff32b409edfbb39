r"""MaskFeat ViT-B/16 pretraining on ImageNet-1K with HOG targets.

Reference recipe (SlowFast in1k_VIT_B_MaskFeat_PT.yaml, released checkpoint at epoch 1600):
global batch 2048, lr 2e-4 per 256 (1.6e-3), 30 warmup epochs from 1e-6, cosine to 1e-6,
AdamW (0.9, 0.999) wd 0.05, clip 0.02, block-wise mask 40%, RandomResizedCrop (0.5, 1) + flip.
Expected: fine-tuned top-1 84.0 after 1600 epochs (83.6 after 300).

Run (ImageNet prepared with tfds under DATA_DIR):
  python -m maskfeat_jax.main --config configs/in1k_vit_b_pretrain.py \
      --config.input.data_dir=$DATA_DIR --workdir gs://bucket/maskfeat/vit_b
Variants: `:300ep` for the 300-epoch schedule.
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.pretrain_config()
    c.model.variant = "B/16"
    return defaults.apply_epochs_variant(c, arg)
