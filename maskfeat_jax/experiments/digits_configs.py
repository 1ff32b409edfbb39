"""The digits study's configs (``configs/digits.py`` selects them by variant): a 4-block,
128-wide ViT with 4x4-px patches on the 8x8 digit scans scaled to 24x24, HOG with 4x4-px cells.
The experiment (``experiments/digits.py``) builds its runs from these."""

import ml_collections

from maskfeat_jax import defaults

PIXEL_MEAN = (0.31,) * 3  # of the scaled train images
PIXEL_STD = (0.35,) * 3


def _shared(c, split: str, examples: int, batch: int):
    """The model, the data and the CPU mesh every variant uses."""
    c.model.update(variant="Ti/4", image_size=24, width=128, depth=4, num_heads=4, mlp_dim=512)
    c.input.update(
        dataset="digits",
        digits_size=24,
        split=split,
        examples_per_epoch=examples,
        batch_size=batch,
        scale=(0.5, 1.0),
        hflip=False,  # mirrored digits are other glyphs
        mean=PIXEL_MEAN,
        std=PIXEL_STD,
    )
    c.checkpoint.update(every_steps=1000, async_save=False)
    c.mesh = (("data", -1), ("fsdp", 1), ("tensor", 1))


def pretrain(target="hog"):
    c = defaults.pretrain_config()
    _shared(c, "train", 1258, 128)
    c.target = target
    c.hog.update(cell_size=4)
    c.mask.update(ratio=0.4)
    c.total_epochs = 100
    c.optim.update(base_lr=1.5e-3, lr_batch_reference=256, warmup_epochs=10)
    c.log_every_steps = 100
    c.visualize_split = "test"
    return c


def finetune():
    c = defaults.finetune_config(num_classes=10)
    _shared(c, "train_20", 200, 64)
    # RandAugment and erasing are tuned for 224-px photos; this small study leaves them off.
    c.input.update(rand_augment="", erase_prob=0.0)
    c.mixup.update(mixup_alpha=0.0, cutmix_alpha=0.0)  # keeps label smoothing 0.1
    c.total_epochs = 100
    c.model.drop_path_rate = 0.1
    c.optim.update(
        base_lr=1e-3, lr_batch_reference=64, warmup_epochs=5, layer_decay=0.75, weight_decay=0.05
    )
    c.eval.update(split="test", batch_size=128, resize_size=24, every_steps=0)
    c.log_every_steps = 50
    return c


def probe():
    c = pretrain()
    c.probe = ml_collections.ConfigDict(
        dict(
            num_classes=10,
            train_split="train_20",
            eval_split="test",
            resize_size=24,
            epochs=100,
            batch_size=64,
            learning_rate=1e-2,
            weight_decay=1e-4,
        )
    )
    return c
