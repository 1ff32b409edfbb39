"""Fine-tuning input pipelines (grain): labelled, augmented images and clips.

Per example, with the generator grain derives from its global position (so every element is
reproducible and the iterator resumable): RandomResizedCrop (area ``scale``, aspect
``ratio``; bicubic for images, bilinear from the short-side-scaled frames for clips), a
horizontal flip, RandAugment (timm spec string, the same ops for every frame of a clip) and
the random-erasing boxes that the device fills after normalization. Repeated augmentation
(``repeats`` > 1, SlowFast's ``AUG.NUM_SAMPLE``) decodes a record once and makes that many
independently augmented views, which sit next to each other in the batch.

Differences from the reference kept on purpose: for clips, RandAugment runs on the 224-px
crops rather than the full decoded frames (same ops, 5x fewer pixels; the translations are
relative to the image size either way).

Elements: ``{"image": uint8 [B, (T,) S, S, 3], "label": int32 [B], "erase_boxes": int32
[B, K, 4] (if erasing), "skipped", "skipped_ids"}`` with B = per_host_batch views.
"""

from __future__ import annotations

from typing import Any, Sequence

import grain
import numpy as np

from maskfeat_jax.data import augment, images, skipping, videos


class ImageViews:
    """Reads a photo and cuts RandomResizedCrop views (bicubic) from it."""

    erase_attempts = 10  # timm's RandomErasing

    def __init__(self, source, *, image_size: int, scale, ratio):
        self.source, self.image_size = source, int(image_size)
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, rng: np.random.Generator):
        record = images.read_image(self.source, index)
        return images._check_photo(record, index), images._label(record)

    def view(self, photo: np.ndarray, rng: np.random.Generator, hflip: bool) -> np.ndarray:
        image = images.random_resized_crop(photo, rng, self.image_size, self.scale, self.ratio)
        if hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        return np.ascontiguousarray(image)


class ClipViews:
    """Decodes one random clip of a record and cuts crop views from its frames."""

    erase_attempts = 100  # SlowFast's cube erasing (one box for every frame)

    def __init__(self, source, sampling: videos.ClipSampling, *, scale, ratio):
        self.source, self.sampling = source, sampling
        self.scale, self.ratio = tuple(scale), tuple(ratio)

    def __len__(self) -> int:
        return len(self.source)

    def load(self, index: int, rng: np.random.Generator):
        record, frames = self.sampling.read(self.source, index, rng=rng)
        return (record, frames), np.int32(record["label"])

    def view(self, loaded, rng: np.random.Generator, hflip: bool) -> np.ndarray:
        record, frames = loaded
        box = images.sample_crop_box(
            rng, *self.sampling.scaled_size(record), self.scale, self.ratio
        )
        flip = hflip and rng.random() < 0.5
        return self.sampling.resample(frames, box, flip)


class ClassificationTrainTransform(grain.transforms.RandomMap):
    """Record index -> ``repeats`` augmented views with their label (stacked when > 1)."""

    def __init__(
        self,
        views: ImageViews | ClipViews,
        *,
        hflip: bool = True,
        rand_augment: augment.RandAugment | None = None,
        erase_prob: float = 0.0,
        erase_count: int = 1,
        repeats: int = 1,
        max_retries: int = 10,
    ):
        if repeats < 1 or erase_count < 1 or not 0.0 <= erase_prob <= 1.0:
            raise ValueError(
                f"need repeats >= 1, erase_count >= 1 and 0 <= erase_prob <= 1, got {repeats}, "
                f"{erase_count}, {erase_prob}"
            )
        self.views, self.hflip, self.rand_augment = views, bool(hflip), rand_augment
        self.erase_prob, self.erase_count = float(erase_prob), int(erase_count)
        self.repeats, self.max_retries = int(repeats), int(max_retries)

    def random_map(self, element: int, rng: np.random.Generator) -> dict[str, Any]:
        return skipping.load_with_retries(
            lambda i: self._views(i, rng), int(element), len(self.views), rng, self.max_retries
        )

    def _views(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        loaded, label = self.views.load(index, rng)
        out: dict[str, list] = {"image": [], "label": [], "erase_boxes": []}
        for _ in range(self.repeats):
            image = self.views.view(loaded, rng, self.hflip)
            if self.rand_augment is not None:
                image = self.rand_augment(image, rng)
            out["image"].append(image)
            out["label"].append(label)
            if self.erase_prob > 0:
                size = image.shape[-3:-1]
                out["erase_boxes"].append(
                    augment.sample_erase_boxes(
                        rng,
                        *size,
                        probability=self.erase_prob,
                        max_count=self.erase_count,
                        max_attempts=self.views.erase_attempts,
                    )
                )
        if not out["erase_boxes"]:
            del out["erase_boxes"]
        if self.repeats == 1:
            return {k: v[0] for k, v in out.items()}
        return {k: np.stack(v) for k, v in out.items()}


def _flatten_repeats(batch: dict[str, Any]) -> dict[str, Any]:
    """[B / R, R, ...] model fields -> [B, ...]; host fields (one per record) are repeated."""
    repeats = batch["label"].shape[1]
    out = {}
    for key, value in batch.items():
        value = np.asarray(value)
        if key in skipping.HOST_FIELDS:
            out[key] = np.repeat(value, repeats, axis=0)
        else:
            out[key] = value.reshape(-1, *value.shape[2:])
    return out


def make_train_dataset(
    views: ImageViews | ClipViews,
    transform_kwargs: dict[str, Any],
    *,
    per_host_batch: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """Per-host stream of ``per_host_batch`` augmented views (see the module docstring)."""
    repeats = int(transform_kwargs.get("repeats", 1))
    if per_host_batch < 1 or per_host_batch % repeats:
        raise ValueError(
            f"per-host batch {per_host_batch} must be a positive multiple of the repeated "
            f"augmentation count {repeats} (config.input.repeats)."
        )
    transform = ClassificationTrainTransform(views, **transform_kwargs)
    ds = images._shuffled(len(views), seed, num_epochs).random_map(transform)
    ds = ds[shard_index::shard_count].batch(per_host_batch // repeats, drop_remainder=True)
    if repeats > 1:
        ds = ds.map(_flatten_repeats)
    return images._threads_and_workers(
        ds, worker_count, worker_buffer_size, read_threads, prefetch_batches
    )


def rand_augment_from_config(inp, image_size: int, mean: Sequence[float]):
    spec = inp.get("rand_augment", "")
    return augment.RandAugment(spec, image_size=image_size, mean=mean) if spec else None


def iterator_from_config(
    config,
    *,
    spec,
    per_host_batch: int,
    shard_index: int = 0,
    shard_count: int = 1,
    workdir: str | None = None,
):
    """This host's fine-tuning batches as ``config.input`` says: dataset/data_dir/split,
    scale, ratio, hflip, rand_augment, erase_prob, erase_count, repeats, max_retries,
    worker_count, seed; clips also frame_stride, target_fps, short_side, min_frames,
    short_videos."""
    inp = config.input
    scale = tuple(inp.get("scale", (0.08, 1.0)))
    ratio = tuple(inp.get("ratio", (3 / 4, 4 / 3)))
    if spec.is_video:
        sampling = videos.ClipSampling(
            num_frames=spec.num_frames,
            stride=int(inp.get("frame_stride", 4)),
            target_fps=float(inp.get("target_fps", 30.0)),
            image_size=spec.image_size,
            short_side=int(inp.get("short_side", 0) or 0),
            min_frames=inp.get("min_frames", None),
            short_videos=inp.get("short_videos", "pad"),
        )
        source = videos.open_source(config, workdir, inp.get("split", "train"))
        views = ClipViews(source, sampling, scale=scale, ratio=ratio)
        # SlowFast's video RandAugment fills with grey 128, not the dataset mean.
        fill_mean = (0.5, 0.5, 0.5)
    else:
        source = images.open_source(config, inp.get("split", "train"))
        views = ImageViews(source, image_size=spec.image_size, scale=scale, ratio=ratio)
        fill_mean = tuple(inp.mean)
    seed = inp.get("seed", None)
    ds = make_train_dataset(
        views,
        dict(
            hflip=bool(inp.get("hflip", True)),
            rand_augment=rand_augment_from_config(inp, spec.image_size, fill_mean),
            erase_prob=float(inp.get("erase_prob", 0.0)),
            erase_count=int(inp.get("erase_count", 1)),
            repeats=int(inp.get("repeats", 1)),
            max_retries=int(inp.get("max_retries", 10)),
        ),
        per_host_batch=per_host_batch,
        seed=int(config.seed if seed is None else seed),
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=int(inp.get("worker_count", 0) or 0),
    )
    return iter(ds)
