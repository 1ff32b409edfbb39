r"""Fine-tuning a MaskFeat MViTv2-L 16x4 on Kinetics-400.

Reference recipe (SlowFast k400_MVITv2_L_16x4_FT.yaml): 16 clips per node, no repeated
augmentation, 6e-4 per 16 clips (here 128 clips, 4.8e-3), 75 epochs, 5 warmup from 1e-8,
cosine to 1e-5, layer decay 0.875, drop path 0.2, clip 5.0; augmentation and testing as
MViTv2-S (see k400_mvitv2_s_finetune.py). Expected: top-1 84.3 from the 800-epoch
pretraining (10 clips x 1 crop).

Run:
  python -m maskfeat_jax.main --config configs/k400_mvitv2_l_finetune.py \
      --config.init_from=$PT --config.input.data_dir=$DATA_DIR --workdir gs://bucket/ft_mvit_l
"""

from maskfeat_jax import defaults


def get_config(arg=None):
    c = defaults.video_finetune_config()
    c.total_epochs = 75
    c.model.update(variant="MViTv2-L", drop_path_rate=0.2, remat=True)
    c.input.repeats = 1
    c.optim.update(
        base_lr=6e-4,
        lr_batch_reference=16,
        warmup_epochs=5,
        warmup_start_lr=1e-8,
        end_lr=1e-5,
        layer_decay=0.875,
    )
    c.eval.every_epochs = 10
    if arg:
        raise ValueError(f"Unknown variant {arg!r}; this config has none.")
    return c
