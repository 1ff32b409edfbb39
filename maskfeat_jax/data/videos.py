"""Video pretraining input pipeline (grain Dataset API) over clips rendered in memory.

Until encoded videos are supported, each clip is rendered from one bundled
photo by a random camera path (pan, zoom, small rotation; see
``camera_paths``): the start crop is drawn like RandomResizedCrop (area
scale (0.5, 1.0), aspect (3/4, 4/3)), all frames are flipped together with
p=0.5, and a cube mask is drawn on the (T, H, W) grid of mask units
(SlowFast's ``MaskingGenerator3D``, ``AUG.GEN_MASK_LOADER``).

Pipeline (the same structure as ``images.make_pretrain_dataset``)::

    MapDataset.range(N).seed(seed).shuffle().repeat(num_epochs)
      .random_map(path + render + flip + mask)   # rng from the global element index
      [shard_index::shard_count]                 # per-host slice
      .batch(per_host_batch, drop_remainder=True)
      .to_iter_dataset(ReadOptions(...))         # [.mp_prefetch(...) if workers]

so ``images.index_stream`` gives the photo order each host sees. Elements
are ``{"image": uint8 [B, T, S, S, 3], "mask": bool [B, gt, gh, gw]}``
(uint8 frames: normalisation happens on the device). The iterator supports
grain's ``get_state()`` / ``set_state()``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

import grain
import numpy as np

from maskfeat_jax.data.camera_paths import check_ranges, render_clip, sample_path
from maskfeat_jax.data.images import _check_photo, _check_shard, _mask_grid, batched_stream

__all__ = ["VideoPretrainTransform", "iterator_from_config", "make_video_pretrain_dataset"]

MaskFn = Callable[[np.random.Generator], np.ndarray]


class VideoPretrainTransform(grain.transforms.RandomMap):
    """Photo index -> ``{"image": uint8 [T, S, S, 3], "mask": bool [gt, gh, gw]}``.

    Uses only the ``rng`` that grain derives from the element's index, in the
    order camera path, flip, mask, so every element is reproducible.
    """

    def __init__(
        self,
        photos: Sequence[np.ndarray],
        *,
        num_frames: int,
        image_size: int,
        mask_generator: MaskFn,
        scale=(0.5, 1.0),
        ratio=(3 / 4, 4 / 3),
        hflip: bool = True,
        max_shift: float = 0.25,
        max_zoom: float = 1.3,
        max_rotation: float = 10.0,
    ):
        self.photos = photos
        self.num_frames = int(num_frames)
        self.image_size = int(image_size)
        self.mask_generator = mask_generator
        self.scale, self.ratio, self.max_shift, self.max_zoom, self.max_rotation = check_ranges(
            scale, ratio, max_shift, max_zoom, max_rotation
        )
        self.hflip = bool(hflip)

    def random_map(self, element: int, rng: np.random.Generator):
        index = int(element)
        photo = _check_photo(self.photos[index], index)
        path = sample_path(
            rng,
            photo.shape,
            scale=self.scale,
            ratio=self.ratio,
            max_shift=self.max_shift,
            max_zoom=self.max_zoom,
            max_rotation=self.max_rotation,
        )
        clip = render_clip(photo, path, self.num_frames, self.image_size)
        if self.hflip and rng.random() < 0.5:
            clip = clip[:, :, ::-1]  # one flip for the whole clip
        mask = np.asarray(self.mask_generator(rng), dtype=bool)
        return {"image": np.ascontiguousarray(clip), "mask": mask}


def _check_video_grid(grid: Sequence[int], num_frames: int, image_size: int) -> tuple[int, ...]:
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
    photos: Sequence[np.ndarray],
    *,
    num_frames: int,
    image_size: int,
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
    max_shift: float = 0.25,
    max_zoom: float = 1.3,
    max_rotation: float = 10.0,
    worker_buffer_size: int = 2,
    read_threads: int = 4,
    prefetch_batches: int = 4,
) -> grain.IterDataset:
    """Builds the per-host video pretraining ``IterDataset`` (infinite by default).

    Args:
      photos: random-access sequence of uint8 ``[H, W, 3]`` photos (or records
        ``{"image": ...}``), e.g. ``embedded.load_split('train')``.
      num_frames: frames per clip T.
      image_size: frame side S.
      mask_generator: ``gen(rng) -> bool[gt, gh, gw]`` (``masking.from_config``
        with kind 'cube'); gt must divide T, gh and gw must divide S.
      per_host_batch: batch size on this host (remainders are dropped).
      seed: pipeline seed (shuffle, paths, flips and masks derive from it).
      shard_index, shard_count: this host's slice of the global stream.
      scale, ratio: start crop area fraction and aspect (w/h) ranges.
      hflip: flip whole clips horizontally with p=0.5.
      num_epochs: None repeats forever; otherwise passes over the photos.
      worker_count: >0 adds ``mp_prefetch`` with that many processes.
      max_shift, max_zoom, max_rotation: camera motion (``camera_paths.sample_path``).
      worker_buffer_size: batches buffered per worker process.
      read_threads, prefetch_batches: in-process threads and the number of
        batches they keep ready.

    Returns:
      ``IterDataset`` of ``{"image": uint8 [B, T, S, S, 3], "mask": bool [B, gt, gh, gw]}``.
    """
    for name, value in (("num_frames", num_frames), ("image_size", image_size)):
        if int(value) != value or value < 1:
            raise ValueError(f"{name} must be a positive int, got {value!r}")
    _check_video_grid(_mask_grid(mask_generator), num_frames, image_size)
    if per_host_batch < 1:
        raise ValueError(f"per_host_batch must be >= 1, got {per_host_batch}")
    if worker_count < 0 or read_threads < 0 or prefetch_batches < 0:
        raise ValueError("worker_count, read_threads and prefetch_batches must be >= 0")
    _check_shard(shard_index, shard_count)
    if isinstance(photos, (list, tuple)):
        for i, photo in enumerate(photos):
            _check_photo(photo, i)
    transform = VideoPretrainTransform(
        photos,
        num_frames=num_frames,
        image_size=image_size,
        mask_generator=mask_generator,
        scale=scale,
        ratio=ratio,
        hflip=hflip,
        max_shift=max_shift,
        max_zoom=max_zoom,
        max_rotation=max_rotation,
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


def iterator_from_config(
    config,
    *,
    image_size: int,
    num_frames: int,
    mask_grid: Sequence[int],
    per_host_batch: int,
    shard_index: int = 0,
    shard_count: int = 1,
) -> Iterator[dict[str, np.ndarray]]:
    """This host's clip batch iterator as the config says (used by video training).

    ``config.input.dataset`` must be 'embedded': clips are rendered from the
    bundled photos of ``config.input.split`` ('train', 'validation' or 'all').
    ``config.mask`` (kind 'cube'; grid None -> ``mask_grid``) builds the mask;
    crop, flip, camera motion, worker and seed settings come from
    ``config.input`` (``seed`` there, else ``config.seed``). Returns grain's
    checkpointable ``DatasetIterator``.
    """
    from maskfeat_jax import masking
    from maskfeat_jax.data import embedded

    inp = config.input
    name = inp.get("dataset", "embedded")
    if name != "embedded":
        raise ValueError(
            f"config.input.dataset={name!r}: video training currently reads 'embedded' (clips "
            "rendered from the bundled photos); set --config.input.dataset=embedded"
        )
    mask_grid = _check_video_grid(mask_grid, num_frames, image_size)
    kind = config.mask.get("kind", None)
    if kind != "cube":
        raise ValueError(
            f"video pretraining draws cube masks, got config.mask.kind={kind!r}; "
            "set --config.mask.kind=cube"
        )
    generator = masking.from_config(config.mask, grid=mask_grid)
    photos = embedded.load_split(inp.get("split", "train"))
    seed = inp.get("seed", None)
    ds = make_video_pretrain_dataset(
        photos,
        num_frames=num_frames,
        image_size=image_size,
        mask_generator=generator,
        per_host_batch=per_host_batch,
        seed=int(config.seed if seed is None else seed),
        shard_index=shard_index,
        shard_count=shard_count,
        scale=tuple(inp.get("scale", (0.5, 1.0))),
        ratio=tuple(inp.get("ratio", (3 / 4, 4 / 3))),
        hflip=bool(inp.get("hflip", True)),
        worker_count=int(inp.get("worker_count", 0) or 0),
        max_shift=float(inp.get("max_shift", 0.25)),
        max_zoom=float(inp.get("max_zoom", 1.3)),
        max_rotation=float(inp.get("max_rotation", 10.0)),
    )
    return iter(ds)
