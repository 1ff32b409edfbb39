"""How one host's stream of batches is cut and read, the same for every pipeline.

Training streams::

    MapDataset.range(N).seed(seed).shuffle().repeat(num_epochs)
      .random_map(transform)              # rng from the global element index
      [shard_index::shard_count]          # this host's slice
      .batch(per_host_batch, drop_remainder=True)
      .to_iter_dataset(ReadOptions(...))  # [.mp_prefetch(...) with workers]

The transform runs before the slice so that each element's generator depends on its global
position: hosts draw independent augmentations (after the slice, every host's i-th element
would share one generator). Evaluation streams are one ordered pass over this host's items,
padded so that every host yields the same number of batches.

``StreamOptions`` holds the settings these share; the pipelines (``images``, ``videos``,
``classification``) take one instead of passing each setting along.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import grain
from absl import flags

__all__ = [
    "StreamOptions",
    "batched_stream",
    "check_shard",
    "eval_indices",
    "finite_stream",
    "index_stream",
    "shuffled_indices",
    "threads_and_workers",
]


def check_shard(shard_index: int, shard_count: int) -> None:
    if shard_count < 1 or not 0 <= shard_index < shard_count:
        raise ValueError(
            f"need 0 <= shard_index < shard_count, got shard_index="
            f"{shard_index}, shard_count={shard_count} (use "
            "jax.process_index() / jax.process_count())"
        )


@dataclasses.dataclass(frozen=True)
class StreamOptions:
    """This host's share of the stream and how it is read.

    per_host_batch: batch size on this host (training drops the remainder).
    seed: pipeline seed (order and every element's augmentation derive from it; training).
    shard_index, shard_count: this host's slice of the global stream.
    num_epochs: None repeats forever, else passes over the records (training).
    worker_count: > 0 adds ``mp_prefetch`` with that many processes.
    worker_buffer_size: batches buffered per worker process.
    read_threads, prefetch_batches: in-process threads and the number of batches they keep
      ready (grain's defaults, 16 and 500, are sized for small records and would hold
      hundreds of image batches).
    """

    per_host_batch: int
    seed: int = 0
    shard_index: int = 0
    shard_count: int = 1
    num_epochs: int | None = None
    worker_count: int = 0
    worker_buffer_size: int = 2
    read_threads: int = 4
    prefetch_batches: int = 4

    def __post_init__(self):
        if self.per_host_batch < 1:
            raise ValueError(f"per_host_batch must be >= 1, got {self.per_host_batch}")
        check_shard(self.shard_index, self.shard_count)
        if self.num_epochs is not None and self.num_epochs < 1:
            raise ValueError(f"num_epochs must be >= 1 or None (infinite), got {self.num_epochs}")
        if min(self.worker_count, self.read_threads, self.prefetch_batches) < 0:
            raise ValueError("worker_count, read_threads and prefetch_batches must be >= 0")


def shuffled_indices(num_records: int, seed: int, num_epochs: int | None) -> grain.MapDataset:
    """Record indices, every epoch one pass in a fresh order (all hosts, before slicing)."""
    if num_records < 1:
        raise ValueError("the photo source is empty; pass at least one photo")
    if num_epochs is not None and num_epochs < 1:
        raise ValueError(f"num_epochs must be >= 1 or None (infinite), got {num_epochs}")
    # Reseeding per epoch (grain's default) gives a new order every epoch.
    return grain.MapDataset.range(num_records).seed(int(seed)).shuffle().repeat(num_epochs)


def index_stream(
    num_records: int,
    *,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    num_epochs: int | None = None,
) -> grain.MapDataset:
    """The un-augmented record-index stream one host sees (the order of the training
    streams): per-epoch shuffles, then ``[i::n]``."""
    check_shard(shard_index, shard_count)
    return shuffled_indices(num_records, seed, num_epochs)[shard_index::shard_count]


def batched_stream(
    num_records: int, transform: grain.transforms.RandomMap, options: StreamOptions
) -> grain.IterDataset:
    """shuffle -> repeat -> random_map -> per-host slice -> batch -> threads [-> processes]
    (``index_stream`` gives the record order each host sees)."""
    ds = shuffled_indices(num_records, options.seed, options.num_epochs).random_map(transform)
    ds = ds[options.shard_index :: options.shard_count]
    ds = ds.batch(options.per_host_batch, drop_remainder=True)
    return threads_and_workers(ds, options)


def eval_indices(
    num_items: int, shard_index: int, shard_count: int, per_host_batch: int
) -> list[int]:
    """This host's items ``shard_index::shard_count`` padded with -1 to
    ``ceil(ceil(num_items / shard_count) / per_host_batch)`` full batches, the same
    count on every host (collectives in the eval step need every host to take part)."""
    check_shard(shard_index, shard_count)
    if num_items < 1 or per_host_batch < 1:
        raise ValueError(
            f"need num_items >= 1 and per_host_batch >= 1, got {num_items}, {per_host_batch}"
        )
    per_host = -(-num_items // shard_count)
    total = -(-per_host // per_host_batch) * per_host_batch
    mine = list(range(shard_index, num_items, shard_count))
    return mine + [-1] * (total - len(mine))


def finite_stream(
    num_items: int, transform: grain.transforms.Map, options: StreamOptions
) -> grain.IterDataset:
    """One ordered pass over this host's share of items ``0..num_items-1`` (``eval_indices``),
    mapped by ``transform`` (which takes -1 for padding) and batched."""
    indices: Sequence[int] = eval_indices(
        num_items, options.shard_index, options.shard_count, options.per_host_batch
    )
    ds = grain.MapDataset.source(list(indices)).map(transform).batch(options.per_host_batch)
    return threads_and_workers(ds, options)


def threads_and_workers(ds: grain.MapDataset, options: StreamOptions) -> grain.IterDataset:
    it_ds = ds.to_iter_dataset(
        grain.ReadOptions(
            num_threads=options.read_threads, prefetch_buffer_size=options.prefetch_batches
        )
    )
    if options.worker_count > 0:
        # Worker processes read grain's absl flags; outside an absl app they
        # are unparsed and would raise, so fall back to their defaults.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        it_ds = it_ds.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=options.worker_count,
                per_worker_buffer_size=options.worker_buffer_size,
            )
        )
    return it_ds
