"""The default config of every run: the MaskFeat pretraining and fine-tuning recipes, the
sharding presets and the typed placeholders that make every value overridable. The
experiment files in ``configs/`` start from these."""

import ml_collections
from ml_collections.config_dict import placeholder

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# Logical axis -> mesh axes. Pure FSDP by default: parameters split over `fsdp` along their
# `embed` dimension, the batch over `data` x `fsdp`; `tensor` (size 1 unless the mesh sets it)
# splits the MLP and attention-head dimensions.
SHARDING_RULES = (
    ("batch", ("data", "fsdp")),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("classes", "tensor"),
    ("norm", None),
    ("target", None),
    ("layers", None),
)

# One -1 takes the remaining devices.
FSDP_MESH = (("data", 1), ("fsdp", -1), ("tensor", 1))


def pretrain_config() -> ml_collections.ConfigDict:
    """MaskFeat IN-1K ViT pretraining recipe (SlowFast in1k_VIT_B_MaskFeat_PT.yaml)."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.total_epochs = 1600  # the released checkpoints; the yaml's MAX_EPOCH is 300
    c.total_steps = 0  # > 0 overrides total_epochs
    c.log_every_steps = 50
    c.tensorboard = True  # event files in WORKDIR/tensorboard (tensorboardX, no TensorFlow)
    # The paper's figure (input, masked input, HOG target, predicted HOG) for a few images of
    # `visualize_split`, every N steps into WORKDIR/pictures and TensorBoard; 0 = never.
    c.visualize_every_steps = 5000
    c.visualize_images = 4
    c.visualize_split = "validation"

    c.model = ml_collections.ConfigDict(
        dict(
            name="vit",
            variant="B/16",
            image_size=224,
            num_frames=1,
            # Unset (None) keeps the variant's table; each has a type so that
            # --config.model.width=... parses.
            width=placeholder(int),
            depth=placeholder(int),
            num_heads=placeholder(int),
            mlp_dim=placeholder(int),
            num_classes=0,
            dtype="float32",
            scan=False,
            remat=False,
            # Which form of each op in maskfeat_jax/ops: "auto" (per backend), "reference"
            # (the plain JAX forms accelerators run) or "tuned" (the CPU forms everywhere).
            kernels="auto",
        )
    )

    # What masked tokens predict: "hog" (MaskFeat) or "pixels" (the paper's pixel-colour
    # ablation; each patch standardized when norm_pixel_target, SlowFast NORM_PRED_PIXEL).
    c.target = "hog"
    c.norm_pixel_target = True
    # HOG target: 9 bins, 8x8 cells, no Gaussian window (official); 16 = mmpretrain's variant.
    c.hog = ml_collections.ConfigDict(dict(nbins=9, cell_size=8, gaussian_window=0, input="pixels"))

    # Block-wise masking on the 14x14 token grid: 40% = 78 tokens, blocks of >= 15.
    c.mask = ml_collections.ConfigDict(
        dict(
            kind="block",
            grid=placeholder(tuple),  # None: the model's token grid
            ratio=0.4,
            min_aspect=0.3,
            min_patches=placeholder(int),  # None: the reference's num_mask // 5
            max_patches=placeholder(int),  # None: num_mask
            exact=False,
        )
    )

    c.input = ml_collections.ConfigDict(
        dict(
            dataset="imagenet2012",
            data_dir=placeholder(str),
            split="train",
            examples_per_epoch=1_281_167,
            batch_size=2048,  # global; the reference runs 8 nodes x 256
            scale=(0.5, 1.0),
            ratio=(3 / 4, 4 / 3),
            hflip=True,
            mean=IMAGENET_MEAN,
            std=IMAGENET_STD,
            worker_count=0,
            # A bad record is replaced by another (up to max_retries in a row) and logged; the
            # run stops once more than max_bad_fraction of the records read were bad.
            max_retries=10,
            max_bad_fraction=0.05,
        )
    )

    c.optim = ml_collections.ConfigDict(
        dict(
            base_lr=2e-4,
            warmup_start_lr=1e-6,
            end_lr=1e-6,
            lr_batch_reference=256,
            warmup_epochs=30.0,
            warmup_steps=0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.05,
            extra_no_decay=(),
            clip_grad_norm=0.02,
            # An update whose loss or gradient is not finite is skipped; this many in a row
            # stop the run (the weights stay those of the last finite step).
            max_consecutive_skips=5,
        )
    )

    # Orbax checkpoints in workdir/checkpoints: every N steps, at the end and on preemption
    # (SIGTERM); the latest `keep_latest` stay, plus every multiple of `keep_every` (0: none).
    c.checkpoint = ml_collections.ConfigDict(
        dict(every_steps=1000, keep_latest=3, keep_every=0, async_save=True)
    )
    # Where a run starts when its workdir has no checkpoint: `resume` = another run's full
    # state (workdir, checkpoints dir or step dir); `init_from` = weights only (e.g. from
    # maskfeat_jax.import_torch or a pretraining run), adapted to this model's form.
    c.resume = ""
    c.init_from = ""

    c.mesh = FSDP_MESH
    c.sharding = ml_collections.ConfigDict(dict(rules=SHARDING_RULES))
    return c


KINETICS_MEAN = (0.45, 0.45, 0.45)
KINETICS_STD = (0.225, 0.225, 0.225)


def video_pretrain_config() -> ml_collections.ConfigDict:
    """MaskFeat K400 MViTv2-S pretraining recipe (SlowFast k400_MVITv2_S_16x4_MaskFeat_PT.yaml).

    16 frames x stride 4 at 224 px; cube masks (40% of 8x7x7 units, one unit = 2 frames x
    32 x 32 px); base lr 1e-4 per 32 clips at a global batch of 512 (mmpretrain's 16 x 32),
    10 warmup epochs from 1e-6, cosine to 1e-6, wd 0.05, clip 0.02, 300 epochs.
    """
    c = pretrain_config()
    c.total_epochs = 300
    c.model = ml_collections.ConfigDict(
        dict(
            name="mvit",
            variant="MViTv2-S",
            image_size=224,
            num_frames=16,
            # Unset (None) keeps the variant's table.
            embed_dim=placeholder(int),
            num_heads=placeholder(int),
            depth=placeholder(int),
            stage_starts=placeholder(tuple),
            num_classes=0,
            dtype="float32",
            remat=False,
            kernels="auto",  # as for the ViT above
        )
    )
    c.mask = ml_collections.ConfigDict(
        dict(
            kind="cube",
            grid=(8, 7, 7),
            ratio=0.4,
            min_aspect=0.3,
            min_patches=placeholder(int),
            max_patches=placeholder(int),
        )
    )
    c.input.update(
        dataset="kinetics400",  # record shards made by maskfeat_jax.data.prepare_video
        examples_per_epoch=240_436,  # the official train list; copies differ, set yours
        batch_size=512,
        mean=KINETICS_MEAN,
        std=KINETICS_STD,
        frame_stride=4,  # 16 frames x stride 4 of a 30 fps timeline
        target_fps=30.0,
        short_side=320,  # the reference trains on videos scaled to a 320 px short side
        min_frames=placeholder(int),  # shorter videos are left out (None: none are)
        short_videos="pad",  # videos shorter than a clip: "pad" (SlowFast) or "loop"
    )
    c.optim.update(base_lr=1e-4, lr_batch_reference=32, warmup_epochs=10)
    return c


def apply_epochs_variant(c: ml_collections.ConfigDict, arg) -> ml_collections.ConfigDict:
    """`:300ep` selects the yaml's 300-epoch schedule; no variant keeps the 1600 epochs of the
    released checkpoints."""
    if arg == "300ep":
        c.total_epochs = 300
    elif arg:
        raise ValueError(f"Unknown variant {arg!r}; use ':300ep' or nothing.")
    return c


def _finetune_parts(c: ml_collections.ConfigDict, num_classes: int) -> ml_collections.ConfigDict:
    """What every fine-tuning recipe adds to a pretraining config (SlowFast *_FT.yaml)."""
    c.model.update(num_classes=num_classes, drop_path_rate=0.1)
    for pretraining_only in ("mask", "hog", "target", "norm_pixel_target"):
        del c[pretraining_only]
    c.input.update(
        scale=(0.08, 1.0),  # RandomResizedCrop's default area range
        rand_augment="rand-m9-mstd0.5-inc1",
        erase_prob=0.25,  # RandomErasing, 'pixel' mode, one box
        erase_count=1,
        repeats=1,  # repeated augmentation (SlowFast AUG.NUM_SAMPLE)
    )
    # Mixup 0.8 / CutMix 1.0, one of the two per batch (switch 0.5), label smoothing 0.1.
    c.mixup = ml_collections.ConfigDict(
        dict(
            mixup_alpha=0.8,
            cutmix_alpha=1.0,
            prob=1.0,
            switch_prob=0.5,
            label_smoothing=0.1,
            slowfast_box=True,  # SlowFast's CutMix box rounding (timm's is 1 px larger)
        )
    )
    c.optim.update(
        warmup_start_lr=1e-8,
        end_lr=1e-6,
        clip_grad_norm=0.0,
        layer_decay=0.65,
        ema_decay=0.0,  # > 0 keeps an EMA of the weights and evaluates it too
    )
    c.eval = ml_collections.ConfigDict(
        dict(
            split="validation",
            batch_size=256,
            every_steps=0,  # or every_epochs; both 0: at the end only
            every_epochs=0.0,
            resize_size=placeholder(int),  # images; None: image_size / 0.875 (256), bicubic
            short_side=256,  # video: frames scaled to this, then crops of image_size
            num_clips=10,
            num_crops=1,
            worker_count=0,
        )
    )
    c.checkpoint.every_steps = 2000
    return c


def finetune_config(num_classes: int = 1000) -> ml_collections.ConfigDict:
    """MaskFeat IN-1K ViT-B/16 fine-tuning recipe (SlowFast in1k_VIT_B_MaskFeat_FT.yaml).

    Global batch 2048 at 2e-3 per 512 (mmpretrain's 8e-3 at 2048), 100 epochs, 20 warmup
    epochs from 1e-8, cosine to 1e-6, AdamW wd 0.05, no clipping, layer decay 0.65, drop path
    0.1, RandAugment m9 mstd0.5, random erasing 0.25, mixup 0.8 / cutmix 1.0, label smoothing
    0.1; mean-pooled tokens -> LayerNorm -> linear head at 1e-3 init scale.
    """
    c = pretrain_config()
    c.total_epochs = 100
    _finetune_parts(c, num_classes)
    c.input.update(split="train", batch_size=2048)
    c.optim.update(base_lr=2e-3, lr_batch_reference=512, warmup_epochs=20)
    return c


def video_finetune_config(num_classes: int = 400) -> ml_collections.ConfigDict:
    """MaskFeat K400 MViTv2-S 16x4 fine-tuning recipe (SlowFast k400_MVITv2_S_16x4_FT.yaml).

    16 clips per node x 2 repeated augmentations = 32 clips per node per step at 6e-4, i.e.
    ``lr_batch_reference`` 32 clips; 128 clips a step here (4 such nodes). 100 epochs, 20
    warmup from 1e-6, cosine to 1e-6, layer decay 0.75, drop path 0.1, clip 5.0,
    RandAugment m7 mstd0.5 (one op sequence per clip), random erasing 0.25 (one box through
    every frame), mixup 0.8 / cutmix 1.0, label smoothing 0.1. Test: short side 256, centre
    224, 10 temporal clips x 1 crop.
    """
    c = video_pretrain_config()
    c.total_epochs = 100
    _finetune_parts(c, num_classes)
    c.input.update(
        split="train",
        batch_size=128,
        rand_augment="rand-m7-mstd0.5-inc1",
        repeats=2,
        examples_per_epoch=240_436,
    )
    c.optim.update(
        base_lr=6e-4,
        lr_batch_reference=32,
        warmup_epochs=20,
        warmup_start_lr=1e-6,
        clip_grad_norm=5.0,
        layer_decay=0.75,
    )
    c.eval.update(batch_size=64)
    return c
