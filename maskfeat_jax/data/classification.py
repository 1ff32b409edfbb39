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

from typing import Any

import grain
import numpy as np

from maskfeat_jax.data import augment, images, skipping, videos
from maskfeat_jax.data.batching import StreamOptions, shuffled_indices, threads_and_workers


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
        return images.check_photo(record, index), images.label_of(record)

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
    transform: ClassificationTrainTransform, options: StreamOptions
) -> grain.IterDataset:
    """Per-host stream of ``options.per_host_batch`` augmented views (see the module
    docstring)."""
    repeats = transform.repeats
    if options.per_host_batch % repeats:
        raise ValueError(
            f"per-host batch {options.per_host_batch} must be a positive multiple of the "
            f"repeated augmentation count {repeats} (config.input.repeats)."
        )
    ds = shuffled_indices(len(transform.views), options.seed, options.num_epochs)
    ds = ds.random_map(transform)[options.shard_index :: options.shard_count]
    ds = ds.batch(options.per_host_batch // repeats, drop_remainder=True)
    if repeats > 1:
        ds = ds.map(_flatten_repeats)
    return threads_and_workers(ds, options)
