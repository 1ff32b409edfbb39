"""Image pretraining and evaluation pipelines (grain Dataset API).

Reproduces SlowFast's ImageNet MaskFeat pretraining augmentation: a
RandomResizedCrop with area scale (0.5, 1.0) and aspect (3/4, 4/3), bicubic
resize, horizontal flip with p=0.5, no colour augmentation, and a block-wise
mask drawn in the loader (``AUG.GEN_MASK_LOADER``) on the token grid
``image_size // patch_size``. The crop follows torchvision/timm: 10 attempts
of (area ~ U(scale) * H*W, log-uniform aspect, uniform position), then a
centre crop clamped to the aspect range.

The stream (``batching``): every epoch is one pass over the photos in a fresh order, the
random map before the per-host slice so that each element's generator depends on its global
position. Elements are ``{"image": uint8 [B, S, S, 3], "mask": bool [B, gh, gw]}``; images
stay uint8 (normalization happens on the device, 4x less host-device traffic). The iterator
supports grain's ``get_state()`` / ``set_state()``.

Evaluation: one view per image (resize ``image_size / 0.875`` bicubic, centre crop), every
host padded to the same number of batches. ``sources`` opens what the config names;
``streams`` wires these pipelines to the config.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from maskfeat_jax.data import skipping
from maskfeat_jax.data.batching import StreamOptions, batched_stream, finite_stream

__all__ = [
    "ImageEvalTransform",
    "MaskFn",
    "PretrainTransform",
    "center_crop_box",
    "check_photo",
    "label_of",
    "make_image_eval_dataset",
    "make_pretrain_dataset",
    "mask_grid_of",
    "random_resized_crop",
    "read_image",
    "resize_center_crop",
    "sample_crop_box",
]

MaskFn = Callable[[np.random.Generator], np.ndarray]


def center_crop_box(height: int, width: int, ratio: tuple[float, float] = (3 / 4, 4 / 3)):
    """Fallback crop ``(top, left, h, w)``: largest centred box whose aspect
    (w / h) is clamped to ``ratio`` (torchvision's behaviour)."""
    in_ratio = width / height
    if in_ratio < min(ratio):
        w = width
        h = int(round(w / min(ratio)))
    elif in_ratio > max(ratio):
        h = height
        w = int(round(h * max(ratio)))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def sample_crop_box(
    rng: np.random.Generator,
    height: int,
    width: int,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    attempts: int = 10,
):
    """RandomResizedCrop box ``(top, left, h, w)`` for an image of the size.

    Area fraction ~ U(scale), aspect w/h log-uniform in ``ratio``, position
    uniform; after ``attempts`` misses, ``center_crop_box``.
    """
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        u_area, u_ratio, u_top, u_left = rng.random(4).tolist()
        target = area * (scale[0] + (scale[1] - scale[0]) * u_area)
        aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            top = int(u_top * (height - h + 1))
            left = int(u_left * (width - w + 1))
            return top, left, h, w
    return center_crop_box(height, width, ratio)


def random_resized_crop(
    image: np.ndarray, rng: np.random.Generator, size: int, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3)
) -> np.ndarray:
    """Crops a random box and resizes it to ``size x size`` (bicubic, PIL)."""
    top, left, h, w = sample_crop_box(rng, image.shape[0], image.shape[1], scale, ratio)
    crop = Image.fromarray(np.ascontiguousarray(image[top : top + h, left : left + w]))
    return np.asarray(crop.resize((size, size), Image.Resampling.BICUBIC))


def check_photo(photo: Any, index: int) -> np.ndarray:
    """The uint8 [H, W, 3] photo of a record (or of a bare array)."""
    if isinstance(photo, Mapping):  # record sources yield {"image": ...}
        photo = photo["image"]
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(
            f"photo {index} must be uint8 [H, W, 3], got {photo.dtype} "
            f"{photo.shape}; convert grayscale/RGBA to RGB first"
        )
    return photo


def read_image(source, index: int):
    """``source[index]``, with a record that fails to decode reported as ``BadImage``."""
    try:
        return source[index]
    except skipping.BadImage:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # what PIL and tfds raise on bad bytes
        raise skipping.BadImage(f"record {index} does not decode ({type(e).__name__}: {e})") from e


def label_of(record: Any) -> np.int32:
    """The record's label; -1 for bare photos and unlabelled records."""
    if isinstance(record, Mapping) and "label" in record:
        return np.int32(record["label"])
    return np.int32(-1)


class PretrainTransform(grain.transforms.RandomMap):
    """Photo index -> ``{"image": uint8 [S,S,3], "mask": bool grid}``.

    Uses only the ``rng`` that grain derives from the element's index, in the
    order crop, flip, mask, so every element is reproducible.
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        *,
        image_size: int,
        mask_generator: MaskFn,
        scale=(0.5, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip: bool = True,
        max_retries: int = 10,
    ):
        self.photos = photos
        self.image_size = int(image_size)
        self.mask_generator = mask_generator
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.hflip = bool(hflip)
        self.max_retries = int(max_retries)

    def random_map(self, element: int, rng: np.random.Generator):
        return skipping.load_with_retries(
            lambda i: self._one(i, rng), int(element), len(self.photos), rng, self.max_retries
        )

    def _one(self, index: int, rng: np.random.Generator) -> dict[str, Any]:
        record = read_image(self.photos, index)
        photo = check_photo(record, index)
        image = random_resized_crop(photo, rng, self.image_size, self.scale, self.ratio)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        mask = np.asarray(self.mask_generator(rng), dtype=bool)
        return {"image": np.ascontiguousarray(image), "mask": mask, "label": label_of(record)}


def mask_grid_of(mask_generator: MaskFn) -> tuple[int, ...]:
    grid = getattr(mask_generator, "grid", None)
    if grid is None:
        grid = np.asarray(mask_generator(np.random.default_rng(0))).shape
    return tuple(int(g) for g in grid)


def make_pretrain_dataset(
    photos: Sequence[np.ndarray],
    options: StreamOptions,
    *,
    image_size: int,
    patch_size: int,
    mask_generator: MaskFn,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    max_retries: int = 10,
) -> grain.IterDataset:
    """Builds the per-host pretraining ``IterDataset`` (infinite unless
    ``options.num_epochs``).

    Args:
      photos: random-access sequence (list, grain data source) of uint8
        ``[H, W, 3]`` photos or of records ``{"image": uint8 [H, W, 3], ...}``,
        e.g. ``embedded.load_split('train')``.
      options: batch, shard, seed, epochs and readers of this host's stream.
      image_size: output side S; must be a multiple of ``patch_size``.
      patch_size: token size in pixels; the mask grid must equal
        ``(S // patch_size, S // patch_size)``.
      mask_generator: ``gen(rng) -> bool[gh, gw]`` (``masking.from_config``).
      scale, ratio: RandomResizedCrop area fraction and aspect (w/h) ranges.
      hflip: random horizontal flip with p=0.5.
      max_retries: bad records replaced in a row before the element fails.

    Returns:
      ``IterDataset`` of ``{"image": uint8 [B, S, S, 3],
      "mask": bool [B, S//patch_size, S//patch_size]}``.
    """
    if image_size < 1 or patch_size < 1 or image_size % patch_size:
        raise ValueError(
            f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})"
        )
    tokens = (image_size // patch_size,) * 2
    grid = mask_grid_of(mask_generator)
    if grid != tokens:
        raise ValueError(
            f"mask grid {grid} does not match the token grid {tokens} of "
            f"image_size={image_size}, patch_size={patch_size}; set the mask "
            f"config grid to {tokens}"
        )
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {ratio}")
    if isinstance(photos, (list, tuple)):
        for i, photo in enumerate(photos):
            check_photo(photo, i)
    transform = PretrainTransform(
        photos,
        image_size=image_size,
        mask_generator=mask_generator,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        max_retries=max_retries,
    )
    return batched_stream(len(photos), transform, options)


def resize_center_crop(image: np.ndarray, resize_size: int, crop_size: int) -> np.ndarray:
    """torchvision's ``Resize(resize_size, bicubic)`` (short side; the long side truncated)
    then ``CenterCrop(crop_size)``: the standard ImageNet evaluation view."""
    height, width = image.shape[:2]
    if height <= width:
        size = (int(resize_size * width / height), resize_size)
    else:
        size = (resize_size, int(resize_size * height / width))
    resized = Image.fromarray(np.ascontiguousarray(image)).resize(size, Image.Resampling.BICUBIC)
    top = int(round((size[1] - crop_size) / 2.0))
    left = int(round((size[0] - crop_size) / 2.0))
    return np.asarray(resized.crop((left, top, left + crop_size, top + crop_size)))


class ImageEvalTransform(grain.transforms.Map):
    """Image index (or -1 for padding) -> ``{"image", "label", "index", "valid",
    "skipped", "skipped_ids"}``; a bad image gives an invalid zero view, counted."""

    def __init__(self, source, *, image_size: int, resize_size: int):
        if resize_size < image_size:
            raise ValueError(f"resize_size {resize_size} must be >= image_size {image_size}")
        self.source, self.image_size, self.resize_size = source, int(image_size), int(resize_size)

    def map(self, index: int) -> dict[str, Any]:
        index = int(index)
        element = {
            "image": np.zeros((self.image_size, self.image_size, 3), np.uint8),
            "label": np.int32(-1),
            "index": np.int32(index),
            "valid": False,
            "skipped": np.int32(0),
            "skipped_ids": "",
        }
        if index < 0:
            return element
        try:
            record = read_image(self.source, index)
        except skipping.BadImage as e:
            element.update(skipped=np.int32(1), skipped_ids=f"record {index}: {e}")
            return element
        photo = check_photo(record, index)
        image = resize_center_crop(photo, self.resize_size, self.image_size)
        element.update(image=image, label=label_of(record), valid=True)
        return element


def make_image_eval_dataset(
    source, options: StreamOptions, *, image_size: int, resize_size: int | None = None
) -> grain.IterDataset:
    """One pass over ``source`` in order, this host's share, resized to ``resize_size``
    (default ``image_size / 0.875``: 256 for 224) and centre-cropped, padded so all hosts
    yield the same number of batches (``valid`` marks the real images)."""
    resize_size = int(round(image_size / 0.875)) if resize_size is None else int(resize_size)
    transform = ImageEvalTransform(source, image_size=image_size, resize_size=resize_size)
    return finite_stream(len(source), transform, options)
