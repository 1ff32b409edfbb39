"""Pieces shared by the experiment configs: the pretraining recipe and the sharding presets."""

import ml_collections

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

    c.model = ml_collections.ConfigDict(
        dict(
            name="vit",
            variant="B/16",
            image_size=224,
            num_frames=1,
            width=None,
            depth=None,
            num_heads=None,
            mlp_dim=None,  # override the variant's table
            num_classes=0,
            dtype="float32",
            scan=False,
            remat=False,
        )
    )

    # HOG target: 9 bins, 8x8 cells, no Gaussian window (official); 16 = mmpretrain's variant.
    c.hog = ml_collections.ConfigDict(dict(nbins=9, cell_size=8, gaussian_window=0))

    # Block-wise masking on the 14x14 token grid: 40% = 78 tokens, blocks of >= 15.
    c.mask = ml_collections.ConfigDict(
        dict(
            kind="block",
            grid=None,
            ratio=0.4,
            min_aspect=0.3,
            min_patches=None,
            max_patches=None,
            exact=False,
        )
    )

    c.input = ml_collections.ConfigDict(
        dict(
            dataset="imagenet2012",
            data_dir=None,
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
            warmup_epochs=30,
            warmup_steps=0,
            b1=0.9,
            b2=0.999,
            eps=1e-8,
            weight_decay=0.05,
            extra_no_decay=(),
            clip_grad_norm=0.02,
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
            embed_dim=None,
            num_heads=None,
            depth=None,
            stage_starts=None,  # override the variant's table
            num_classes=0,
            dtype="float32",
            remat=False,
        )
    )
    c.mask = ml_collections.ConfigDict(
        dict(
            kind="cube",
            grid=(8, 7, 7),
            ratio=0.4,
            min_aspect=0.3,
            min_patches=None,
            max_patches=None,
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
        min_frames=None,  # shorter videos are skipped (None: num_frames)
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
