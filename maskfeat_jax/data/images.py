"""Image pretraining input pipeline (grain Dataset API).

Reproduces SlowFast's ImageNet MaskFeat pretraining augmentation: a
RandomResizedCrop with area scale (0.5, 1.0) and aspect (3/4, 4/3), bicubic
resize, horizontal flip with p=0.5, no colour augmentation, and a block-wise
mask drawn in the loader (``AUG.GEN_MASK_LOADER``) on the token grid
``image_size // patch_size``. The crop follows torchvision/timm: 10 attempts
of (area ~ U(scale) * H*W, log-uniform aspect, uniform position), then a
centre crop clamped to the aspect range.

Pipeline::

    MapDataset.range(N).seed(seed).shuffle().repeat(num_epochs)
      .random_map(crop + flip + mask)     # rng from the global element index
      [shard_index::shard_count]          # per-host slice
      .batch(per_host_batch, drop_remainder=True)
      .to_iter_dataset(ReadOptions(...))  # [.mp_prefetch(...) if workers]

Every epoch is one pass over the photos in a fresh order. The random map sits
before the per-host slice so each element's generator depends on its global
position: hosts draw independent crops and masks (after the slice, every
host's i-th element would share one generator). Elements are
``{"image": uint8 [B, S, S, 3], "mask": bool [B, gh, gw]}``; images stay
uint8 (normalisation happens on the device, 4x less host-device traffic).
The iterator supports grain's ``get_state()`` / ``set_state()``.
``iterator_from_config`` wires this to the training config (the embedded
photos or a tfds ArrayRecord source).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

__all__ = [
    "PretrainTransform",
    "center_crop_box",
    "index_stream",
    "iterator_from_config",
    "make_pretrain_dataset",
    "random_resized_crop",
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


def _check_photo(photo: Any, index: int) -> np.ndarray:
    if isinstance(photo, Mapping):  # record sources yield {"image": ...}
        photo = photo["image"]
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(
            f"photo {index} must be uint8 [H, W, 3], got {photo.dtype} "
            f"{photo.shape}; convert grayscale/RGBA to RGB first"
        )
    return photo


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
    ):
        self.photos = photos
        self.image_size = int(image_size)
        self.mask_generator = mask_generator
        self.scale = tuple(float(s) for s in scale)
        self.ratio = tuple(float(r) for r in ratio)
        self.hflip = bool(hflip)

    def random_map(self, element: int, rng: np.random.Generator):
        index = int(element)
        photo = _check_photo(self.photos[index], index)
        image = random_resized_crop(photo, rng, self.image_size, self.scale, self.ratio)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        mask = np.asarray(self.mask_generator(rng), dtype=bool)
        return {"image": np.ascontiguousarray(image), "mask": mask}


def index_stream(
    num_records: int,
    *,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """The un-augmented photo-index stream one host sees (same order as
    ``make_pretrain_dataset``): per-epoch shuffles, then ``[i::n]``."""
    _check_shard(shard_index, shard_count)
    return _shuffled(num_records, seed, num_epochs)[shard_index::shard_count]


def _shuffled(num_records: int, seed: int, num_epochs: int | None):
    if num_records < 1:
        raise ValueError("the photo source is empty; pass at least one photo")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (infinite), got {num_epochs}")
    # Reseeding per epoch (grain's default) gives a new order every epoch.
    return grain.MapDataset.range(num_records).seed(int(seed)).shuffle().repeat(num_epochs)


def _check_shard(shard_index: int, shard_count: int) -> None:
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"need 0 <= shard_index < shard_count, got shard_index="
            f"{shard_index}, shard_count={shard_count} (use "
            "jax.process_index() / jax.process_count())"
        )


def _mask_grid(mask_generator: MaskFn) -> tuple[int, ...]:
    grid = getattr(mask_generator, "grid", None)
    if grid is None:
        grid = np.asarray(mask_generator(np.random.default_rng(0))).shape
    return tuple(int(g) for g in grid)


def make_pretrain_dataset(
    photos: Sequence[np.ndarray],
    *,
    image_size: int,
    patch_size: int,
    mask_generator: MaskFn,
    per_host_batch: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    scale: tuple[float, float] = (0.5, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
    hflip: bool = True,
    num_epochs: int | None = None,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """Builds the per-host pretraining ``IterDataset`` (infinite by default).

    Args:
      photos: random-access sequence (list, grain data source) of uint8
        ``[H, W, 3]`` photos or of records ``{"image": uint8 [H, W, 3], ...}``,
        e.g. ``embedded.load_split('train')``.
      image_size: output side S; must be a multiple of ``patch_size``.
      patch_size: token size in pixels; the mask grid must equal
        ``(S // patch_size, S // patch_size)``.
      mask_generator: ``gen(rng) -> bool[gh, gw]`` (``masking.from_config``).
      per_host_batch: batch size on this host (remainders are dropped).
      seed: pipeline seed (shuffle, crops, flips and masks derive from it).
      shard_index, shard_count: this host's slice of the global stream.
      scale, ratio: RandomResizedCrop area fraction and aspect (w/h) ranges.
      hflip: random horizontal flip with p=0.5.
      num_epochs: None repeats forever; otherwise passes over the photos.
      worker_count: >0 adds ``mp_prefetch`` with that many processes.
      worker_buffer_size: batches buffered per worker process.
      read_threads, prefetch_batches: in-process threads and the number of
        batches they keep ready (grain's defaults, 16 and 500, are sized for
        small records and would hold hundreds of image batches).

    Returns:
      ``IterDataset`` of ``{"image": uint8 [B, S, S, 3],
      "mask": bool [B, S//patch_size, S//patch_size]}``.
    """
    if image_size < 1 or patch_size < 1 or image_size % patch_size:
        raise ValueError(
            f"image_size ({image_size}) must be a positive multiple of patch_size ({patch_size})"
        )
    tokens = (image_size // patch_size,) * 2
    grid = _mask_grid(mask_generator)
    if grid != tokens:
        raise ValueError(
            f"mask grid {grid} does not match the token grid {tokens} of "
            f"image_size={image_size}, patch_size={patch_size}; set the mask "
            f"config grid to {tokens}"
        )
    if per_host_batch < 1:
        raise ValueError(f"per_host_batch must be >= 1, got {per_host_batch}")
    if not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(f"crop scale must satisfy 0 < lo <= hi <= 1, got {scale}")
    if not 0 < ratio[0] <= ratio[1]:
        raise ValueError(f"crop ratio must satisfy 0 < lo <= hi, got {ratio}")
    if worker_count < 0 or read_threads < 0 or prefetch_batches < 0:
        raise ValueError("worker_count, read_threads and prefetch_batches must be >= 0")
    _check_shard(shard_index, shard_count)
    if isinstance(photos, (list, tuple)):
        for i, photo in enumerate(photos):
            _check_photo(photo, i)
    transform = PretrainTransform(
        photos,
        image_size=image_size,
        mask_generator=mask_generator,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
    )

    return batched_stream(
        len(photos),
        transform,
        seed=seed,
        num_epochs=num_epochs,
        shard_index=shard_index,
        shard_count=shard_count,
        per_host_batch=per_host_batch,
        worker_count=worker_count,
        worker_buffer_size=worker_buffer_size,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
    )


def batched_stream(
    num_records: int,
    transform: grain.transforms.RandomMap,
    *,
    seed: int,
    num_epochs: int | None,
    shard_index: int,
    shard_count: int,
    per_host_batch: int,
    worker_count: int,
    worker_buffer_size: int,
    read_threads: int,
    prefetch_batches: int,
) -> grain.IterDataset:
    """shuffle -> repeat -> random_map -> per-host slice -> batch -> threads [-> processes].

    The transform runs before slicing so that each element's rng depends on its global
    position (``index_stream`` gives the record order each host sees)."""
    ds = _shuffled(num_records, seed, num_epochs).random_map(transform)
    ds = ds[shard_index::shard_count]
    ds = ds.batch(per_host_batch, drop_remainder=True)
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(num_threads=read_threads, prefetch_buffer_size=prefetch_batches)
    )
    if worker_count > 0:
        # Worker processes read grain's absl flags; outside an absl app they
        # are unparsed and would raise, so fall back to their defaults.
        from absl import flags

        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=worker_count, per_worker_buffer_size=worker_buffer_size
            )
        )
    return it_ds


def iterator_from_config(
    config,
    *,
    image_size: int,
    mask_grid: Sequence[int],
    per_host_batch: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's batch iterator as the config says (used by training).

    ``config.input.dataset``: 'embedded' reads the bundled photos
    (``config.input.split``: 'train', 'validation' or 'all'); any other name
    is opened with ``tfds.data_source(name, split=, data_dir=)`` (an
    ArrayRecord build with an ``image`` feature). ``config.mask`` (grid None
    -> ``mask_grid``) builds the mask; crop, flip, worker and seed settings
    come from ``config.input`` and ``config.seed``. Returns grain's
    checkpointable ``DatasetIterator``.
    """
    from maskfeat_jax import masking
    from maskfeat_jax.data import embedded

    inp = config.input
    mask_grid = tuple(int(g) for g in mask_grid)
    if len(mask_grid) != 2 or image_size % mask_grid[0] or (mask_grid[0] != mask_grid[1]):
        raise ValueError(
            f"image mask grid {mask_grid} must be square and divide image_size={image_size}"
        )
    generator = masking.from_config(config.mask, grid=mask_grid)
    name = inp.get("dataset", "embedded")
    split = inp.get("split", "train")
    if name == "embedded":
        photos = embedded.load_split(split)
    else:
        if not inp.get("data_dir"):
            raise ValueError(
                f"config.input.dataset={name!r} is read from a prepared tfds "
                "directory; pass --config.input.data_dir=/path/to/tensorflow_datasets "
                "(or use --config.input.dataset=embedded for the bundled photos)."
            )
        import tensorflow_datasets as tfds  # Only for real datasets.

        photos = tfds.data_source(name, split=split, data_dir=inp.get("data_dir"))
    seed = inp.get("seed", None)
    ds = make_pretrain_dataset(
        photos,
        image_size=image_size,
        patch_size=image_size // mask_grid[0],  # one mask unit per "patch"
        mask_generator=generator,
        per_host_batch=per_host_batch,
        seed=int(config.seed if seed is None else seed),
        shard_index=shard_index,
        shard_count=shard_count,
        scale=tuple(inp.get("scale", (0.5, 1.0))),
        ratio=tuple(inp.get("ratio", (3 / 4, 4 / 3))),
        hflip=bool(inp.get("hflip", True)),
        worker_count=int(inp.get("worker_count", 0) or 0),
    )
    return iter(ds)
