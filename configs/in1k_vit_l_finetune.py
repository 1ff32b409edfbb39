r"""Fine-tuning a MaskFeat ViT-L/16 on ImageNet-1K.

Reference recipe (SlowFast in1k_VIT_L_MaskFeat_FT.yaml): 1e-3 per 256 images (here global
batch 1024, 4e-3), 50 epochs, 5 warmup from 1e-8, cosine to 1e-6, layer decay 0.75, drop
path 0.1; augmentation, mixup and evaluation as ViT-B (see in1k_vit_b_finetune.py).
Expected: top-1 85.7 from the 1600-epoch pretraining.

Run:
  python -m maskfeat_jax.main --config configs/in1k_vit_l_finetune.py \
      --config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_vit_l
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.finetune_config()
    c.total_epochs = 50
    c.model.update(variant="L/16", scan=True, remat=True)
    c.input.batch_size = 1024
    c.optim.update(base_lr=1e-3, lr_batch_reference=256, warmup_epochs=5, layer_decay=0.75)
    c.eval.every_epochs = 5
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; this config has none.")
    return c
