"""The run's data, as the config says: the one place that chooses between the image, video
and fine-tuning pipelines and between their sources.

``pretrain_stream`` (masked batches) and ``classification_stream`` (labelled, augmented
views) give this host's slice of each global batch (``config.input.batch_size`` over the JAX
processes) as grain's checkpointable ``DatasetIterator``; which one a run reads is its
task's choice. ``eval_stream`` is one pass over a split's evaluation views, ``open_split``
the random-access source of a split. The pipelines' settings come from ``config.input``
(and ``config.seed``); the model's ``spec`` gives the view size (``image_size``,
``num_frames``, ``is_video``); the embedded videos are built in ``workdir`` on first use.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import grain
import jax
import ml_collections
import numpy as np

from maskfeat_jax import masking
from maskfeat_jax.data import augment, classification, images, sources, videos
from maskfeat_jax.data.batching import StreamOptions

__all__ = ["classification_stream", "eval_stream", "open_split", "pretrain_stream"]

Config = ml_collections.ConfigDict
Batches = Iterator[dict[str, np.ndarray]]


def open_split(config: Config, spec, workdir: str | None, split: str):
    """The random-access source of ``split`` that the run's pipelines read."""
    if spec.is_video:
        return sources.open_video_source(config, workdir, split)
    return sources.open_image_source(config, split)


def _training_options(config: Config) -> StreamOptions:
    """This JAX process's share of ``config.input.batch_size``, seed and readers."""
    inp = config.input
    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    seed = inp.get("seed", None)
    return StreamOptions(
        per_host_batch=inp.batch_size // shard.shard_count,
        seed=int(config.seed if seed is None else seed),
        shard_index=shard.shard_index,
        shard_count=shard.shard_count,
        worker_count=int(inp.get("worker_count", 0) or 0),
    )


def _clip_sampling(config: Config, spec, short_side: int) -> videos.ClipSampling:
    inp = config.input
    return videos.ClipSampling(
        num_frames=spec.num_frames,
        stride=int(inp.get("frame_stride", 4)),
        target_fps=float(inp.get("target_fps", 30.0)),
        image_size=spec.image_size,
        short_side=short_side,
        min_frames=inp.get("min_frames", None),
        short_videos=inp.get("short_videos", "pad"),
    )


def pretrain_stream(
    config: Config, spec, workdir: str | None = None, *, mask_grid: Sequence[int]
) -> Batches:
    """This host's masked pretraining batches: images with block masks, or clips with cube
    masks on ``mask_grid`` (mask units, which may be coarser than the tokens).

    ``config.input``: dataset/data_dir/split (``sources``), scale, ratio, hflip, max_retries,
    worker_count, seed (else ``config.seed``); clips also frame_stride, target_fps,
    short_side, min_frames, short_videos. ``config.mask`` builds the mask generator."""
    options = _training_options(config)
    inp = config.input
    crop = dict(
        scale=tuple(inp.get("scale", (0.5, 1.0))),
        ratio=tuple(inp.get("ratio", (3 / 4, 4 / 3))),
        hflip=bool(inp.get("hflip", True)),
        max_retries=int(inp.get("max_retries", 10)),
    )
    split = inp.get("split", "train")
    if spec.is_video:
        grid = videos.check_video_grid(mask_grid, spec.num_frames, spec.image_size)
        kind = config.mask.get("kind", None)
        if kind != "cube":
            raise ValueError(
                f"video pretraining draws cube masks, got config.mask.kind={kind!r}; "
                "set --config.mask.kind=cube"
            )
        generator = masking.from_config(config.mask, grid=grid)
        source = sources.open_video_source(config, workdir, split)
        sampling = _clip_sampling(config, spec, int(inp.get("short_side", 0) or 0))
        return iter(
            videos.make_video_pretrain_dataset(
                source, sampling, options, mask_generator=generator, **crop
            )
        )
    image_size = spec.image_size
    grid = tuple(int(g) for g in mask_grid)
    if len(grid) != 2 or image_size % grid[0] or grid[0] != grid[1]:
        raise ValueError(
            f"image mask grid {grid} must be square and divide image_size={image_size}"
        )
    generator = masking.from_config(config.mask, grid=grid)
    photos = sources.open_image_source(config, split)
    return iter(
        images.make_pretrain_dataset(
            photos,
            options,
            image_size=image_size,
            patch_size=image_size // grid[0],  # one mask unit per "patch"
            mask_generator=generator,
            **crop,
        )
    )


def classification_stream(config: Config, spec, workdir: str | None = None) -> Batches:
    """This host's fine-tuning batches of labelled, augmented views.

    ``config.input``: dataset/data_dir/split, scale, ratio, hflip, rand_augment, erase_prob,
    erase_count, repeats, max_retries, worker_count, seed; clips also frame_stride,
    target_fps, short_side, min_frames, short_videos."""
    options = _training_options(config)
    inp = config.input
    scale = tuple(inp.get("scale", (0.08, 1.0)))
    ratio = tuple(inp.get("ratio", (3 / 4, 4 / 3)))
    split = inp.get("split", "train")
    if spec.is_video:
        sampling = _clip_sampling(config, spec, int(inp.get("short_side", 0) or 0))
        source = sources.open_video_source(config, workdir, split)
        views = classification.ClipViews(source, sampling, scale=scale, ratio=ratio)
        # SlowFast's video RandAugment fills with grey 128, not the dataset mean.
        fill_mean = (0.5, 0.5, 0.5)
    else:
        source = sources.open_image_source(config, split)
        views = classification.ImageViews(
            source, image_size=spec.image_size, scale=scale, ratio=ratio
        )
        fill_mean = tuple(inp.mean)
    spec_string = inp.get("rand_augment", "")
    rand_augment = (
        augment.RandAugment(spec_string, image_size=spec.image_size, mean=fill_mean)
        if spec_string
        else None
    )
    transform = classification.ClassificationTrainTransform(
        views,
        hflip=bool(inp.get("hflip", True)),
        rand_augment=rand_augment,
        erase_prob=float(inp.get("erase_prob", 0.0)),
        erase_count=int(inp.get("erase_count", 1)),
        repeats=int(inp.get("repeats", 1)),
        max_retries=int(inp.get("max_retries", 10)),
    )
    return iter(classification.make_train_dataset(transform, options))


def eval_stream(
    config: Config,
    spec,
    workdir: str | None,
    *,
    per_host_batch: int,
    split: str,
    views: Mapping[str, Any],
    shard: tuple[int, int] | None = None,
) -> tuple[grain.IterDataset, str]:
    """One pass over this host's share of ``split``: (dataset, the field naming each view's
    example). ``views``: the view settings (resize_size; short_side, num_clips, num_crops;
    worker_count). ``shard`` = (index, count) overrides this host's share."""
    index, count = shard or (jax.process_index(), jax.process_count())
    options = StreamOptions(
        per_host_batch=per_host_batch,
        shard_index=index,
        shard_count=count,
        worker_count=int(views.get("worker_count", 0) or 0),
    )
    if spec.is_video:
        source = sources.open_video_source(config, workdir, split)
        sampling = _clip_sampling(config, spec, int(views.get("short_side", 256)))
        ds = videos.make_video_eval_dataset(
            source,
            sampling,
            options,
            num_clips=int(views.get("num_clips", 10)),
            num_crops=int(views.get("num_crops", 1)),
        )
        return ds, "video_index"
    source = sources.open_image_source(config, split)
    ds = images.make_image_eval_dataset(
        source,
        options,
        image_size=spec.image_size,
        resize_size=views.get("resize_size", None),
    )
    return ds, "index"
