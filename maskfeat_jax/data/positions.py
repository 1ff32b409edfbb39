"""The training input's position in a checkpoint, carried over to another number of JAX
processes, of reader worker processes or another global batch size.

A position is one number. Training streams (``batching.batched_stream``) cut one global
stream of elements (shuffled records, each augmented by a generator keyed by its global
index): global batch ``k`` is elements ``[k*G, (k+1)*G)`` of it whatever the process count
(process ``i`` of ``M`` holds elements ``i, i+M, ...`` of each), so where a run stands is
the number of global batches it has read, ``g``. Every process's saved iterator state says
``g`` (the processes step together), in one of grain's formats:

  threads (``input.worker_count=0``)  ``{'next_index': g}``
  ``W`` worker processes              grain's interleave state: worker ``w`` reads this
                                      host's batches ``w, w+W, ...`` and its state is
                                      ``{'next_index': n_w}``; ``next_index_in_cycle`` is the
                                      worker read next; ``g = sum(n_w)``

The training loop's own saves of a position from before a batch (``loop._DataPosition``)
hold the same formats. These formats belong to grain (0.2.18):
``tests/unit/data/test_positions.py`` pins them, so a grain upgrade that changes them fails a
test rather than a resumed run.

A checkpoint's ``data`` item holds one file per process, ``process_<i>-of-<N>.json``, written
by grain's ``CheckpointHandler``. ``restore_or_carry_over`` leaves a restore to grain's
handler, as before, when this process's own file fits this run (same process count, same
worker layout, same global batch). Otherwise it reads every process's file, checks that they
agree on ``g`` (a one-line ``SavedPositionError`` naming the files if not) and sets the
position into this run's iterator: through ``grain.experimental.set_next_index`` for threads
or one worker, and for several workers as a state of the iterator's own format, filled into
the iterator's ``get_state()``.

Exactness. With the same global batch size the carry-over is exact: the resumed run reads
exactly the elements an uninterrupted run would, so within the interrupted epoch every record
is read once, on any process count and worker count. A per-process batch that does not
divide cannot occur: a run whose global batch does not divide over its processes is refused
at start (``sharding.check_global_batch``). When ``config.input.batch_size`` changed from
``G`` to ``G2`` (on the same or another process count), the position in elements, ``g*G``,
is rounded down to a whole global batch of this run, ``g2 = floor(g*G / G2)``: the
``g*G - g2*G2`` elements before it (fewer than ``G2``: at most one global batch of this run,
less one record) are read a second time and none is skipped; exact when ``G2`` divides
``g*G``. Down, not up, because a repeated record is a slight over-weighting while a skipped
one is missing from the epoch.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import re
from collections.abc import Mapping
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from maskfeat_jax import errors

__all__ = [
    "SavedPosition",
    "SavedPositionError",
    "carried_over",
    "global_batches_read",
    "process_file",
    "read_saved_position",
    "restore_or_carry_over",
    "set_global_position",
    "worker_count",
    "workers_state",
]

_FILE_NAME = re.compile(r"process_(\d+)-of-(\d+)\.json")
# grain's interleave iterator state (what ``mp_prefetch`` gives) and its threaded one.
_THREADS_KEYS = frozenset({"next_index"})
_WORKERS_KEYS = frozenset(
    {
        "next_index_in_cycle",
        "next_index_in_datasets",
        "iterators_in_use_indices",
        "iterators_in_use_states",
        "exhausted",
        "future_states",
    }
)
_READ_THREADS = 32  # a pod's checkpoint holds one small file per process, read in parallel


class SavedPositionError(errors.UserError):
    """A checkpoint's input position that cannot be read or set; the message names the
    files and what to do."""

    label = "Checkpoint error"


class _UnknownState(ValueError):
    """An iterator state in none of the formats this module knows."""


def process_file(process_index: int, process_count: int) -> str:
    """The name grain's ``CheckpointHandler`` gives one process's state in the data item."""
    return f"process_{process_index}-of-{process_count}.json"


def worker_count(state: Mapping[str, Any]) -> int:
    """0 for a threaded iterator's state, else its number of worker processes."""
    if not isinstance(state, Mapping):
        raise _UnknownState(f"a {type(state).__name__}, not a mapping")
    if set(state) == _THREADS_KEYS:
        return 0
    if set(state) == _WORKERS_KEYS:
        return len(state["iterators_in_use_states"])
    raise _UnknownState(f"keys {sorted(state)}")


def _threads_position(state: Any) -> int:
    if worker_count(state) != 0:
        raise _UnknownState("a worker's state that is not a threaded iterator's")
    return int(state["next_index"])


def global_batches_read(state: Mapping[str, Any]) -> int:
    """The global batches a process's iterator state has read (threads or workers)."""
    workers = worker_count(state)
    if workers == 0:
        return _threads_position(state)
    if (
        state["iterators_in_use_indices"] != list(range(workers))
        or state["next_index_in_datasets"] != workers
        or any(state["exhausted"])
        or state["future_states"]
    ):
        raise _UnknownState("workers that are not each reading their first slice")
    per_worker = [_threads_position(s) for s in state["iterators_in_use_states"]]
    read = sum(per_worker)
    # grain reads the workers in turn from worker 0, so the counts follow from the total.
    if per_worker != _per_worker(read, workers) or state["next_index_in_cycle"] != read % workers:
        raise _UnknownState(f"workers at batches {per_worker} that are not read in turn")
    return read


def _per_worker(read: int, workers: int) -> list[int]:
    """Batches each of ``workers`` has given after ``read`` batches read in turn."""
    return [(read - w + workers - 1) // workers for w in range(workers)]


def set_global_position(iterator: Any, global_batches: int) -> None:
    """Moves a training iterator (``batched_stream``'s, threads or any number of worker
    processes, on any process count) to just before global batch ``global_batches``."""
    if global_batches < 0:
        raise ValueError(f"global_batches must be >= 0, got {global_batches}")
    template = iterator.get_state()
    try:
        workers = worker_count(template)
        global_batches_read(template)  # a state of the layout the filling below assumes
    except _UnknownState as e:
        raise SavedPositionError(
            f"this run's input iterator has a state grain {grain.__version__} writes in a "
            f"format maskfeat_jax.data.positions does not know ({e}); the input position "
            "cannot be carried over until that module learns it."
        ) from None
    if workers <= 1:
        grain.experimental.set_next_index(iterator, global_batches)
    else:  # grain positions only one dataset by index; several workers take a whole state
        iterator.set_state(workers_state(template, global_batches))
    iterator.start_prefetch()  # as grain's handler does: reading starts during the restore


def workers_state(template: Mapping[str, Any], global_batches: int) -> dict[str, Any]:
    """The state of a worker-process iterator (``template``: its ``get_state()``) that has
    read ``global_batches`` batches: each worker's count and the worker read next."""
    workers = worker_count(template)
    if workers < 1:
        raise ValueError("workers_state needs the state of an iterator with worker processes")
    state = json.loads(json.dumps(template))  # a copy, in the JSON form checkpoints hold
    state["next_index_in_cycle"] = global_batches % workers
    for worker, read in zip(
        state["iterators_in_use_states"], _per_worker(global_batches, workers), strict=True
    ):
        worker["next_index"] = read
    return state


def carried_over(saved_batches: int, saved_global_batch: int, global_batch: int) -> int:
    """The global batch of this run to start at (the module's rounding rule): the saved
    position in elements, rounded down to a whole global batch of ``global_batch``."""
    if min(saved_global_batch, global_batch) < 1:
        raise ValueError(f"global batches must be >= 1, got {saved_global_batch}, {global_batch}")
    return saved_batches * saved_global_batch // global_batch


@dataclasses.dataclass(frozen=True)
class SavedPosition:
    """What a checkpoint's data item says about where its run stood."""

    global_batches: int  # global batches read, the same in every process's file
    process_count: int  # processes that wrote it
    worker_count: int  # worker processes of each (0: threads)


def _read_state(path: epath.Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise SavedPositionError(
            f"{path} cannot be read as an input iterator state ({type(e).__name__}: {e}); "
            "resume from an earlier checkpoint step."
        ) from None


def read_saved_position(data_dir: str) -> SavedPosition:
    """Reads every process's file of a checkpoint's ``data`` item and checks that they
    agree on the position (the one a run of any process count resumes at)."""
    directory = epath.Path(data_dir)
    found = {}
    for path in directory.glob("process_*-of-*.json"):
        match = _FILE_NAME.fullmatch(path.name)
        if match:
            found[path.name] = (int(match[1]), int(match[2]))
    counts = sorted({count for _, count in found.values()})
    if len(counts) != 1:
        what = f"files of {counts} processes" if counts else "no process_<i>-of-<n>.json file"
        raise SavedPositionError(
            f"{directory} holds {what}; a checkpoint's input position is one file per process "
            "of one run. Resume from an earlier checkpoint step."
        )
    (count,) = counts
    names = [process_file(i, count) for i in range(count)]
    missing = [name for name in names if name not in found]
    if missing:
        raise SavedPositionError(
            f"{directory} lacks {', '.join(missing)} of its {count} processes' input "
            "positions; resume from an earlier checkpoint step."
        )
    with concurrent.futures.ThreadPoolExecutor(min(_READ_THREADS, count)) as pool:
        states = list(pool.map(_read_state, [directory / name for name in names]))
    positions = {}
    for name, state in zip(names, states):
        try:
            positions[name] = (global_batches_read(state), worker_count(state))
        except _UnknownState as e:
            raise SavedPositionError(
                f"{directory / name} is not an input iterator state maskfeat_jax knows ({e}; "
                f"grain {grain.__version__}); resume with the process count that saved it "
                f"({count})."
            ) from None
    if len(set(positions.values())) > 1:
        # Name the first file that differs from process 0's, with both positions.
        first = positions[names[0]]
        other = next(name for name in names if positions[name] != first)
        raise SavedPositionError(
            f"the processes of checkpoint {directory.parent} disagree on the input position: "
            f"{names[0]} at global batch {first[0]} ({first[1]} workers), {other} at global "
            f"batch {positions[other][0]} ({positions[other][1]} workers); resume from an "
            "earlier checkpoint step."
        )
    global_batches, workers = positions[names[0]]
    return SavedPosition(global_batches, count, workers)


def _saved_global_batch(step_dir: epath.Path) -> int | None:
    """``config.input.batch_size`` of the run that wrote the checkpoint, if it says."""
    if not (step_dir / "meta").is_dir():
        return None
    meta = ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
        step_dir / "meta", args=ocp.args.JsonRestore()
    )
    batch = ((meta or {}).get("config") or {}).get("input", {}).get("batch_size")
    return int(batch) if batch else None


def _own_state_fits(own_file: epath.Path, iterator: Any) -> bool:
    """Whether grain's handler can restore ``own_file`` into ``iterator`` as it is: the
    same worker layout (grain's set_state would misread another)."""
    try:
        return worker_count(_read_state(own_file)) == worker_count(iterator.get_state())
    except _UnknownState:
        return True  # formats this module does not know: grain restores them as before


def restore_or_carry_over(
    step_dir: str, iterator: Any, *, global_batch: int | None = None
) -> Any | None:
    """The input position of checkpoint step ``step_dir`` for this run's ``iterator``.

    Returns grain's restore argument for the ``data`` item when grain's handler restores
    this process's own file (the same process count, worker layout and global batch).
    Otherwise sets the carried-over position into ``iterator`` itself (the module's rule),
    logs it and returns None. ``global_batch``: this run's ``config.input.batch_size``
    (None: taken as unchanged)."""
    step_dir = epath.Path(step_dir)
    data_dir = step_dir / "data"
    process_index, process_count = jax.process_index(), jax.process_count()
    if global_batch is not None and (global_batch < 1 or global_batch % process_count):
        raise errors.ConfigError(
            f"config.input.batch_size={global_batch} does not divide over {process_count} "
            f"processes; use a multiple of {process_count}."
        )
    saved_global_batch = _saved_global_batch(step_dir) if global_batch is not None else None
    same_batch = saved_global_batch is None or saved_global_batch == global_batch
    own_file = data_dir / process_file(process_index, process_count)
    if same_batch and own_file.exists() and _own_state_fits(own_file, iterator):
        return grain.checkpoint.CheckpointRestore(iterator)
    saved = read_saved_position(str(data_dir))
    start = saved.global_batches
    if not same_batch:
        start = carried_over(saved.global_batches, saved_global_batch, global_batch)
        repeated = saved.global_batches * saved_global_batch - start * global_batch
        logging.warning(
            "config.input.batch_size is %d, the checkpoint's was %d: its %d global batches "
            "are %d records; continuing at global batch %d, %d records read again.",
            global_batch,
            saved_global_batch,
            saved.global_batches,
            saved.global_batches * saved_global_batch,
            start,
            repeated,
        )
    set_global_position(iterator, start)
    logging.info(
        "Input position carried over from %d to %d processes (%d to %d reader workers "
        "each): continuing at global batch %d.",
        saved.process_count,
        process_count,
        saved.worker_count,
        worker_count(iterator.get_state()),
        start,
    )
    return None
