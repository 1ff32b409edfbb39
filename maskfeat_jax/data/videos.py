"""Video input pipelines (grain Dataset API) over ArrayRecord shards of encoded videos.

Training (SlowFast's K400 MaskFeat loader): pick a record, decode with PyAV only the frames
of one random clip (``num_frames`` at ``stride`` for a ``target_fps`` timeline; see
``video_decode``), RandomResizedCrop area ``scale`` aspect ``ratio`` on the frames scaled
to ``short_side``, bilinear to ``image_size``, flip the whole clip with p=0.5, draw a cube
mask on the (T, H, W) grid of mask units (``AUG.GEN_MASK_LOADER``). The crop box is chosen
on the short-side-scaled frame and resampled once from the decoded frame, which is what
scaling then cropping gives, at half the work. Frames stay uint8: normalization (mean 0.45,
std 0.225) happens on the device, with 4x less host-to-device traffic.

    MapDataset.range(N).seed(seed).shuffle().repeat(num_epochs)
      .random_map(decode + crop + flip + mask)   # rng from the global element index
      [shard_index::shard_count]                 # this host's slice (ShardByJaxProcess)
      .batch(per_host_batch, drop_remainder=True)
      .to_iter_dataset(ReadOptions(...))         # [.mp_prefetch(...) with workers]

Elements: ``{"image": uint8 [B, T, S, S, 3], "mask": bool [B, gt, gh, gw], "label": int32
[B], "skipped": int32 [B], "skipped_ids": str [B], "excluded", "excluded_ids"}``; a bad
record (or one ``min_frames`` leaves out) is replaced by another one drawn from the
element's generator and reported in the last four fields (``skipping``). The iterator
supports grain's ``get_state()`` / ``set_state()``.

Evaluation (multi-view testing): every video gives ``num_clips`` uniformly spaced clips x
``num_crops`` spatial crops (1: centre; 3: both ends and the centre of the long side) of
frames scaled to ``short_side``; every host gets the same number of batches, padded with
``valid = False`` views (``batching.eval_indices``). ``streams`` wires these pipelines to the
config.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from maskfeat_jax import errors
from maskfeat_jax.data import skipping
from maskfeat_jax.data.batching import StreamOptions, batched_stream, finite_stream
from maskfeat_jax.data.images import MaskFn, mask_grid_of, sample_crop_box
from maskfeat_jax.data.video_decode import (
    SHORT_VIDEO_POLICIES,
    Timeline,
    clip_times,
    decode_images,
    short_side_size,
)
from maskfeat_jax.data.video_records import BadVideo, decode_record

__all__ = [
    "ClipSampling",
    "VideoEvalTransform",
    "VideoTrainTransform",
    "check_video_grid",
    "make_video_eval_dataset",
    "make_video_pretrain_dataset",
    "uniform_crop_box",
]


class ClipSampling:
    """Which frames a clip takes and at what size they come out (shared by train and eval).

    ``short_videos``: what a video shorter than a clip gives (``video_decode``): "pad"
    (SlowFast's rule: the last frame repeats) or "loop". ``min_frames``: videos with fewer
    frames are left out on purpose (``skipping.Excluded``, not counted as bad); default 1.
    """

    def __init__(
        self,
        *,
        num_frames: int,
        stride: int,
        target_fps: float,
        image_size: int,
        short_side: int,
        min_frames: int | None = None,
        short_videos: str = "pad",
    ):
        for name, value in (
            ("num_frames", num_frames),
            ("stride", stride),
            ("image_size", image_size),
        ):
            if int(value) != value or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if target_fps <= 0 or short_side < 0:
            raise ValueError(
                f"target_fps must be > 0 and short_side >= 0 (0 keeps the decoded size), got "
                f"{target_fps} and {short_side}"
            )
        if short_videos not in SHORT_VIDEO_POLICIES:
            raise errors.ConfigError(
                f"config.input.short_videos={short_videos!r} is not one of "
                f"{SHORT_VIDEO_POLICIES} ('pad' repeats the last frame, as SlowFast does)"
            )
        if min_frames is not None and (int(min_frames) != min_frames or min_frames < 1):
            raise errors.ConfigError(
                f"config.input.min_frames must be a positive int or None, got {min_frames!r}"
            )
        self.num_frames, self.stride = int(num_frames), int(stride)
        self.target_fps, self.image_size = float(target_fps), int(image_size)
        self.short_side = int(short_side)
        self.min_frames = 1 if min_frames is None else int(min_frames)
        self.short_videos = short_videos

    def read(self, source, index: int, rng=None, clip_index: int = 0, num_clips: int = 1):
        """(record, RGB PIL images of one clip, upright); ``BadVideo`` or
        ``skipping.Excluded`` names the record."""
        record = decode_record(source[index])
        if record["num_frames"] < self.min_frames:
            raise skipping.Excluded(
                f"{record['id']}: {record['num_frames']} frames, fewer than "
                f"config.input.min_frames={self.min_frames}"
            )
        try:
            timeline = Timeline.of_record(record)
            times = clip_times(
                timeline,
                num_frames=self.num_frames,
                stride=self.stride,
                target_fps=self.target_fps,
                rng=rng,
                clip_index=clip_index,
                num_clips=num_clips,
                short_videos=self.short_videos,
            )
            frames = decode_images(record["video"], times, timeline)
        except BadVideo as e:
            raise BadVideo(f"{record['id']}: {e}") from e
        return record, frames

    def resample(
        self,
        frames: Sequence[Image.Image],
        box: tuple[int, int, int, int],
        flip: bool = False,
        scaled: tuple[int, int] | None = None,
    ) -> np.ndarray:
        """Crops ``box`` = (top, left, h, w), given on the frame scaled to ``scaled`` (h, w;
        default ``scaled_size``), from the decoded frames, resizes it to ``image_size``
        (bilinear) and optionally mirrors it: uint8 [T, S, S, 3]."""
        width, height = frames[0].size
        scaled_h, scaled_w = scaled or short_side_size(height, width, self.short_side)
        sy, sx = height / scaled_h, width / scaled_w
        top, left, h, w = box
        source_box = (left * sx, top * sy, min((left + w) * sx, width), min((top + h) * sy, height))
        size = (self.image_size, self.image_size)
        out = np.empty((len(frames), *size, 3), np.uint8)
        for t, frame in enumerate(frames):
            image = frame.resize(size, Image.Resampling.BILINEAR, box=source_box)
            if flip:  # PIL mirrors far faster than a strided numpy copy
                image = image.transpose(Image.Transpose.FLIP_LEFT_RIGHT)
            out[t] = np.asarray(image)
        return out

    def scaled_size(self, record: dict[str, Any]) -> tuple[int, int]:
        return short_side_size(record["height"], record["width"], self.short_side)

    def eval_size(self, record: dict[str, Any]) -> tuple[int, int]:
        """The scaled size, enlarged (aspect kept) where its short side is below the crop, so
        that small videos are evaluated like the training path treats them: resized up."""
        height, width = self.scaled_size(record)
        if min(height, width) < self.image_size:
            return short_side_size(height, width, self.image_size)
        return height, width


class VideoTrainTransform(grain.transforms.RandomMap):
    """Record index -> one augmented, masked training clip (see the module docstring).

    Uses only the ``rng`` grain derives from the element's index (clip start, crop, flip,
    mask; and the replacement record if one is bad), so every element is reproducible.
    """

    def __init__(
        self,
        source,
        sampling: ClipSampling,
        *,
        mask_generator: MaskFn,
        scale=(0.5, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip: bool = True,
        max_retries: int = 10,
    ):
        self.source, self.sampling = source, sampling
        self.mask_generator = mask_generator
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.hflip, self.max_retries = bool(hflip), int(max_retries)

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, Any]:
        return skipping.load_with_retries(
            lambda i: self._clip(i, rng), int(element), len(self.source), rng, self.max_retries
        )

    def _clip(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record, frames = self.sampling.read(self.source, index, rng=rng)
        box = sample_crop_box(rng, *self.sampling.scaled_size(record), self.scale, self.ratio)
        flip = self.hflip and rng.random() < 0.5  # one flip for the whole clip
        clip = self.sampling.resample(frames, box, flip)
        mask = np.asarray(self.mask_generator(rng), dtype=bool)
        return {"image": clip, "mask": mask, "label": np.int32(record["label"])}


def uniform_crop_box(height: int, width: int, size: int, crop_index: int, num_crops: int):
    """SlowFast's ``uniform_crop`` box (top, left, size, size): centre for one crop; for
    three, the start, centre and end of the longer side."""
    if num_crops not in (1, 3) or not 0 <= crop_index < num_crops:
        raise ValueError(
            f"num_crops must be 1 or 3 with 0 <= crop_index < num_crops, got "
            f"crop {crop_index} of {num_crops}"
        )
    if size > min(height, width):
        raise ValueError(f"crop {size} is larger than the {height}x{width} frame; raise short_side")
    top, left = math.ceil((height - size) / 2), math.ceil((width - size) / 2)
    position = 1 if num_crops == 1 else crop_index
    if position != 1:
        end = position == 2
        if height > width:
            top = height - size if end else 0
        else:
            left = width - size if end else 0
    return top, left, size, size


class VideoEvalTransform(grain.transforms.Map):
    """View index -> ``{"image", "label", "video_index", "valid", "skipped", "skipped_ids"}``.

    View ``v`` is clip ``(v // num_crops) % num_clips`` and crop ``v % num_crops`` of video
    ``v // (num_clips * num_crops)``; -1 is padding. A bad video gives invalid, zero views
    (counted in ``skipped``) so evaluation never silently swaps in another one.
    """

    def __init__(self, source, sampling: ClipSampling, *, num_clips: int = 1, num_crops: int = 1):
        if num_clips < 1 or num_crops not in (1, 3):
            raise ValueError(
                f"need num_clips >= 1 and num_crops in (1, 3), got {num_clips}, {num_crops}"
            )
        self.source, self.sampling = source, sampling
        self.num_clips, self.num_crops = int(num_clips), int(num_crops)

    def map(self, view: int) -> dict[str, Any]:
        view = int(view)
        s = self.sampling
        element = {
            "image": np.zeros((s.num_frames, s.image_size, s.image_size, 3), np.uint8),
            "label": np.int32(-1),
            "video_index": np.int32(-1),
            "valid": False,
            "skipped": np.int32(0),
            "excluded": np.int32(0),
            "skipped_ids": "",
        }
        if view < 0:
            return element
        video, rest = divmod(view, self.num_clips * self.num_crops)
        clip_index, crop_index = divmod(rest, self.num_crops)
        element["video_index"] = np.int32(video)
        try:
            record, frames = s.read(
                self.source, video, clip_index=clip_index, num_clips=self.num_clips
            )
        except BadVideo as e:
            element.update(skipped=np.int32(1), skipped_ids=f"record {video}: {e}")
            return element
        except skipping.Excluded as e:
            element.update(excluded=np.int32(1), skipped_ids=f"record {video}: {e}")
            return element
        scaled = s.eval_size(record)
        box = uniform_crop_box(*scaled, s.image_size, crop_index, self.num_crops)
        element.update(
            image=s.resample(frames, box, scaled=scaled),
            label=np.int32(record["label"]),
            valid=True,
        )
        return element


def check_video_grid(grid: Sequence[int], num_frames: int, image_size: int) -> tuple[int, ...]:
    """``grid`` as ints, if it is a (T, H, W) grid of whole mask units of the clip."""
    grid = tuple(int(g) for g in grid)
    if (
        len(grid) != 3
        or min(grid) < 1
        or num_frames % grid[0]
        or image_size % grid[1]
        or image_size % grid[2]
    ):
        raise ValueError(
            f"video mask grid {grid} must be 3-D (T, H, W) with T dividing "
            f"num_frames={num_frames} and H, W dividing image_size={image_size} "
            "(e.g. (8, 7, 7) for 16 frames of 224 px); fix config.mask.grid"
        )
    return grid


def make_video_pretrain_dataset(
    source,
    sampling: ClipSampling,
    options: StreamOptions,
    *,
    mask_generator: MaskFn,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    max_retries: int = 10,
) -> grain.IterDataset:
    """Builds the per-host video pretraining ``IterDataset`` (infinite unless
    ``options.num_epochs``).

    Args:
      source: random access to record bytes, e.g. ``video_records.VideoRecords(dir, split)``.
      sampling: the clip each record gives (frames, stride, timeline, size, short videos).
      options: batch, shard, seed, epochs and readers of this host's stream.
      mask_generator: ``gen(rng) -> bool[gt, gh, gw]`` (``masking.from_config``, kind 'cube');
        gt must divide T, gh and gw must divide S.
      scale, ratio: RandomResizedCrop area fraction and aspect (w/h) ranges.
      hflip: flip whole clips horizontally with p=0.5.
      max_retries: bad records replaced in a row before the element fails.
    """
    check_video_grid(mask_grid_of(mask_generator), sampling.num_frames, sampling.image_size)
    if not 0 < scale[0] <= scale[1] <= 1 or not 0 < ratio[0] <= ratio[1]:
        raise ValueError(
            f"need 0 < scale lo <= hi <= 1 and 0 < ratio lo <= hi, got {scale}, {ratio}"
        )
    transform = VideoTrainTransform(
        source,
        sampling,
        mask_generator=mask_generator,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        max_retries=max_retries,
    )
    return batched_stream(len(source), transform, options)


def make_video_eval_dataset(
    source,
    sampling: ClipSampling,
    options: StreamOptions,
    *,
    num_clips: int = 10,
    num_crops: int = 1,
) -> grain.IterDataset:
    """One pass over every view of every video (``num_clips`` x ``num_crops`` per video),
    this host's share, padded so all hosts yield ``ceil(views / hosts / B)`` batches.

    Elements: ``{"image": uint8 [B, T, S, S, 3], "label", "video_index": int32 [B],
    "valid": bool [B], "skipped", "skipped_ids"}``; average the views of each
    ``video_index`` over the ``valid`` entries (K400 testing: 10 clips x 1 or 3 crops).
    """
    transform = VideoEvalTransform(source, sampling, num_clips=num_clips, num_crops=num_crops)
    return finite_stream(len(source) * num_clips * num_crops, transform, options)
