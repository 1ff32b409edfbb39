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
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import grain
import numpy as np
from PIL import Image

from maskfeat_jax import errors
from maskfeat_jax.data import skipping

__all__ = [
    "ImageEvalTransform",
    "ImageFolder",
    "PretrainTransform",
    "center_crop_box",
    "eval_indices",
    "finite_stream",
    "index_stream",
    "iterator_from_config",
    "make_image_eval_dataset",
    "make_pretrain_dataset",
    "open_source",
    "read_image",
    "resize_center_crop",
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


def read_image(source, index: int):
    """``source[index]``, with a record that fails to decode reported as ``BadImage``."""
    try:
        return source[index]
    except skipping.BadImage:
        raise
    except (OSError, ValueError, SyntaxError) as e:  # what PIL and tfds raise on bad bytes
        raise skipping.BadImage(f"record {index} does not decode ({type(e).__name__}: {e})") from e


def _label(record: Any) -> np.int32:
    if isinstance(record, Mapping) and "label" in record:
        return np.int32(record["label"])
    return np.int32(-1)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder:
    """Random-access source over a folder of images (grain ``RandomAccessDataSource``).

    ``root/<class>/**/<image>`` gives labels by the sorted class names; images directly in
    ``root`` (and no class folders) have label -1. Items are ``{"image": uint8 [H, W, 3],
    "label": int32, "id": path relative to root}``, decoded with Pillow (grayscale, palette
    and RGBA made RGB); a file that does not decode raises ``BadImage``.
    """

    def __init__(self, root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} does not exist")
        extensions = tuple(e.lower() for e in extensions)
        entries = sorted(os.listdir(root))
        self.classes = tuple(e for e in entries if os.path.isdir(os.path.join(root, e)))
        files: list[tuple[str, int]] = []
        if self.classes:
            for label, name in enumerate(self.classes):
                for folder, _, names in sorted(os.walk(os.path.join(root, name))):
                    files += [
                        (os.path.relpath(os.path.join(folder, f), root), label)
                        for f in sorted(names)
                        if f.lower().endswith(extensions)
                    ]
        else:
            files = [(f, -1) for f in entries if f.lower().endswith(extensions)]
        if not files:
            raise FileNotFoundError(
                f"no images ({', '.join(extensions)}) in {root} or its class folders"
            )
        self.root, self.files = root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        try:
            with Image.open(os.path.join(self.root, path)) as img:
                image = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise skipping.BadImage(f"{path}: {type(e).__name__}: {e}") from e
        return {"image": image, "label": np.int32(label), "id": path}


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
        photo = _check_photo(record, index)
        image = random_resized_crop(photo, rng, self.image_size, self.scale, self.ratio)
        if self.hflip and rng.random() < 0.5:
            image = image[:, ::-1]
        mask = np.asarray(self.mask_generator(rng), dtype=bool)
        return {"image": np.ascontiguousarray(image), "mask": mask, "label": _label(record)}


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
    max_retries: int = 10,
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
        max_retries=max_retries,
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
    return _threads_and_workers(
        ds, worker_count, worker_buffer_size, read_threads, prefetch_batches
    )


def eval_indices(
    num_items: int, shard_index: int, shard_count: int, per_host_batch: int
) -> list[int]:
    """This host's items ``shard_index::shard_count`` padded with -1 to
    ``ceil(ceil(num_items / shard_count) / per_host_batch)`` full batches, the same
    count on every host (collectives in the eval step need every host to take part)."""
    _check_shard(shard_index, shard_count)
    if num_items < 1 or per_host_batch < 1:
        raise ValueError(
            f"need num_items >= 1 and per_host_batch >= 1, got {num_items}, {per_host_batch}"
        )
    per_host = -(-num_items // shard_count)
    total = -(-per_host // per_host_batch) * per_host_batch
    mine = list(range(shard_index, num_items, shard_count))
    return mine + [-1] * (total - len(mine))


def finite_stream(
    indices: Sequence[int],
    transform: grain.transforms.Map,
    *,
    per_host_batch: int,
    worker_count: int = 0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """One ordered pass: map ``indices`` (from ``eval_indices``) and batch them."""
    ds = grain.MapDataset.source(list(indices)).map(transform).batch(per_host_batch)
    return _threads_and_workers(
        ds, worker_count, worker_buffer_size, read_threads, prefetch_batches
    )


def _threads_and_workers(
    ds: grain.MapDataset,
    worker_count: int,
    worker_buffer_size: int,
    read_threads: int,
    prefetch_batches: int,
) -> grain.IterDataset:
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
        photo = _check_photo(record, index)
        image = resize_center_crop(photo, self.resize_size, self.image_size)
        element.update(image=image, label=_label(record), valid=True)
        return element


def make_image_eval_dataset(
    source,
    *,
    image_size: int,
    per_host_batch: int,
    resize_size: int | None = None,
    shard_index: int = 0,
    shard_count: int = 1,
    worker_count: int = 0,
    read_threads: int = 4,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """One pass over ``source`` in order, this host's share, resized to ``resize_size``
    (default ``image_size / 0.875``: 256 for 224) and centre-cropped, padded so all hosts
    yield the same number of batches (``valid`` marks the real images)."""
    resize_size = int(round(image_size / 0.875)) if resize_size is None else int(resize_size)
    transform = ImageEvalTransform(source, image_size=image_size, resize_size=resize_size)
    indices = eval_indices(len(source), shard_index, shard_count, per_host_batch)
    return finite_stream(
        indices,
        transform,
        per_host_batch=per_host_batch,
        worker_count=worker_count,
        read_threads=read_threads,
        prefetch_batches=prefetch_batches,
    )


def open_source(config, split: str):
    """The image source ``config.input`` names: 'embedded' (the bundled photos), 'digits'
    (scikit-learn's digits, labelled), 'folder' (``ImageFolder(data_dir/split)``) or a tfds
    name read with ``tfds.data_source``."""
    from maskfeat_jax.data import embedded

    inp = config.input
    name = inp.get("dataset", "embedded")
    if name == "embedded":
        return embedded.load_split(split)
    if name == "digits":
        from maskfeat_jax.data import digits

        return digits.load_split(split, image_size=int(inp.get("digits_size", 32)))
    data_dir = inp.get("data_dir")
    if not data_dir:
        raise errors.ConfigError(
            f"config.input.dataset={name!r} is read from a directory; pass "
            "--config.input.data_dir=/path (a tensorflow_datasets directory, or for "
            "'folder' a directory with one folder per split), or use "
            "--config.input.dataset=embedded for the bundled photos."
        )
    if not os.path.isdir(data_dir):
        raise errors.DataError(
            f"--config.input.data_dir={data_dir} does not exist; pass the directory that holds "
            f"the {name!r} data."
        )
    if name == "folder":
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise errors.DataError(
                f"{data_dir} has no folder {split!r} for split {split!r} (folders there: "
                f"{sorted(os.listdir(data_dir))}); the 'folder' dataset reads "
                "data_dir/<split>/<class>/<image>."
            )
        return ImageFolder(split_dir)
    return _tfds_source(name, split, data_dir)


def _tfds_source(name: str, split: str, data_dir: str):
    """``tfds.data_source`` of a prepared ArrayRecord build. Asked for a build that is not
    there, tfds would start downloading and preparing it; here that is an error naming the
    fix."""
    import tensorflow_datasets as tfds  # Only for real datasets.

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise errors.DataError(
            f"no dataset {name!r} in tfds or in {data_dir}; check --config.input.dataset "
            "(a tfds name, 'folder' or 'embedded')."
        ) from e
    prepare = (
        f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`"
    )
    if not builder.is_prepared():
        raise errors.DataError(
            f"no prepared tfds dataset {name!r} in {data_dir} (looked for "
            f"{builder.data_dir}/dataset_info.json); {prepare}, or pass the --config.input."
            "data_dir that holds it."
        )
    splits = sorted(builder.info.splits.keys())
    if split not in splits:
        raise errors.DataError(
            f"the {name!r} build in {builder.data_dir} has no split {split!r} (it has "
            f"{splits}); set the split in the config (e.g. --config.input.split=...)."
        )
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise errors.DataError(
            f"the {name!r} build in {builder.data_dir} is stored as {file_format}; random "
            f"access needs ArrayRecord: {prepare}."
        )
    return tfds.data_source(name, split=split, data_dir=data_dir)


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

    inp = config.input
    mask_grid = tuple(int(g) for g in mask_grid)
    if len(mask_grid) != 2 or image_size % mask_grid[0] or (mask_grid[0] != mask_grid[1]):
        raise ValueError(
            f"image mask grid {mask_grid} must be square and divide image_size={image_size}"
        )
    generator = masking.from_config(config.mask, grid=mask_grid)
    photos = open_source(config, inp.get("split", "train"))
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
        max_retries=int(inp.get("max_retries", 10)),
        worker_count=int(inp.get("worker_count", 0) or 0),
    )
    return iter(ds)
