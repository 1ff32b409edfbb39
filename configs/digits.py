r"""MaskFeat on scikit-learn's handwritten digits: does pretraining help? (runs on a CPU)

A 4-block, 128-wide ViT (0.8 M parameters) with 4x4-px patches on the 8x8 digit scans scaled
to 24x24 (6x6 tokens); HOG with 4x4-px cells (one cell per patch: 27-d targets). Data: 1,258
train and 539 test images in a fixed stratified split (``maskfeat_jax.data.digits``).

Variants:
  :pretrain          MaskFeat with HOG targets on the train images (labels unused).
  :pretrain_pixels   the same with per-patch normalized pixel targets (the paper's ablation).
  :finetune          fine-tune on 'train_20' (20 labelled images per class) and evaluate on
                     'test'; add --config.init_from=<pretraining workdir> for pretrained
                     weights (from scratch otherwise).
  :probe             the pretraining-form model for ``python -m maskfeat_jax.linear_probe``.
The whole comparison (several seeds, pretrained vs random, HOG vs pixels, fine-tuning and
linear probing) is ``python -m maskfeat_jax.experiments.digits --workdir runs/digits``;
its results table is in the README.
"""

from maskfeat_jax.experiments import digits_configs


def get_config(arg="pretrain"):
    variants = {
        "pretrain": digits_configs.pretrain,
        "pretrain_pixels": lambda: digits_configs.pretrain("pixels"),
        "finetune": digits_configs.finetune,
        "probe": digits_configs.probe,
    }
    if arg not in variants:
        raise ValueError(f"Unknown variant {arg!r}; use one of {sorted(variants)}.")
    return variants[arg]()
