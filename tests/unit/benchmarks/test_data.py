"""Smoke test of the input-pipeline benchmark's PyTorch baselines: a couple of tiny clips and
images through the DataLoader, checking shapes and dtypes only (nothing is timed)."""

import random

import torch

from benchmarks import data as bench
from maskfeat_jax import masking
from maskfeat_jax.data import embedded, embedded_video

TINY = embedded_video.EmbeddedVideos(videos_per_photo=1, num_frames=40, height=64, width=80, gop=16)


def test_clip_dataset_batch(tmp_path):
    data_dir = embedded_video.ensure(str(tmp_path / "videos"), TINY)
    clips = bench.ClipDataset(
        data_dir,
        num_frames=4,
        stride=2,
        crop_size=32,
        mask_generator=masking.CubeMaskGenerator(grid=(2, 4, 4), ratio=0.4),
    )
    assert len(clips) == len(embedded.PHOTO_NAMES)
    batch = next(iter(bench.baseline_loader(clips, batch=2, workers=0, num_batches=1, seed=0)))
    assert batch["image"].shape == (2, 3, 4, 32, 32)
    assert batch["image"].dtype == torch.float32
    assert torch.isfinite(batch["image"]).all()
    # Normalised with mean 0.45 / std 0.225: pixels span [-2, 2.45].
    assert batch["image"].min() >= -2.01 and batch["image"].max() <= 2.45
    assert batch["mask"].shape == (2, 2, 4, 4) and batch["mask"].dtype == torch.bool
    assert batch["label"].shape == (2,)


def test_image_dataset_batch():
    photos = embedded.load_split("train")[:2]
    views = bench.ImageDataset(
        photos, image_size=32, mask_generator=masking.BlockMaskGenerator(grid=(4, 4), ratio=0.4)
    )
    batch = next(iter(bench.baseline_loader(views, batch=2, workers=0, num_batches=1, seed=0)))
    assert batch["image"].shape == (2, 3, 32, 32) and batch["image"].dtype == torch.float32
    assert batch["mask"].shape == (2, 4, 4) and batch["mask"].dtype == torch.bool


def test_crop_box_stays_inside():
    random.seed(0)
    # A very wide frame makes every draw miss, so the centred fallback is taken too.
    for height, width in [(240, 320), (64, 80), (10, 400)]:
        for _ in range(20):
            top, left, h, w = bench.crop_box(height, width)
            assert 0 <= top and top + h <= height and 0 <= left and left + w <= width
            assert h > 0 and w > 0
    assert bench.crop_box(10, 400)[2:] == (10, 13)  # the aspect clamped to 4/3
