"""Writing a split's planned shards: each video read (without blocking on what is not a
regular file), probed and encoded as a record, in parallel worker processes when there is
more than one shard. A shard's sidecar is written once the shard is complete.

The workers are fresh interpreters (spawned, not forked) and exit by themselves when the
preparing process dies, however it dies.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import queue as queue_module
import stat
import threading
from collections.abc import Callable, Mapping
from typing import Any

from maskfeat_jax.data import video_records
from maskfeat_jax.data.shard_plan import done_path, fingerprint, write_json
from maskfeat_jax.data.video_inputs import regular_file

__all__ = ["write_shards"]


class _NotRegular(Exception):
    pass


def _read_video(path: str) -> tuple[bytes, dict[str, Any]]:
    st, why = regular_file(path)
    if st is None:  # replaced since it was listed
        raise _NotRegular(why)
    # Non-blocking, so that a FIFO swapped in after the look cannot stall the shard.
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise _NotRegular("not a regular file")
        data = f.read()
    return data, video_records.probe_video(data)


def _write_shard(
    videos_dir: str, out: str, shard: Mapping[str, Any], on_video: Callable[[], None]
) -> dict[str, Any]:
    """Writes one planned shard and then its sidecar; returns the sidecar."""
    done = done_path(out, shard)
    if os.path.exists(done):
        os.remove(done)  # the shard is about to change, its old sidecar no longer holds
    failures, durations = [], {}
    with video_records.ShardWriter(os.path.join(out, shard["file"])) as writer:
        for video_id, label, _ in shard["videos"]:
            path = os.path.join(videos_dir, video_id)
            try:
                data, meta = _read_video(path)
            except (video_records.BadVideo, _NotRegular) as e:
                failures.append(dict(path=video_id, reason=str(e)))
            except OSError as e:
                failures.append(dict(path=video_id, reason=f"cannot read ({e.strerror or e})"))
            except Exception as e:
                # Name the file: otherwise a long run stops without saying where.
                raise RuntimeError(f"unexpected error on {path}: {type(e).__name__}: {e}") from e
            else:
                writer.write(video_records.encode_record(video_id, label, data, meta))
                durations[video_id] = meta["num_frames"] / meta["fps"]
            on_video()
    result = dict(
        file=shard["file"],
        plan=fingerprint(shard),
        num_records=writer.num_records,
        failures=failures,
        durations=durations,  # seconds, for the report of short videos
    )
    write_json(done, result)
    return result


# Worker processes report each finished video on this queue (set when a worker starts).
_progress: Any = None


def _start_worker(ticks, parent_alive) -> None:
    global _progress
    _progress = ticks
    threading.Thread(target=_exit_with_parent, args=(parent_alive,), daemon=True).start()


def _exit_with_parent(parent_alive) -> None:
    """Ends the worker when the parent dies, even by SIGKILL: only the parent holds the
    pipe's other end, which the system closes then. A worker left alone would wait for work
    forever, and keep multiprocessing's resource tracker (whose pipe it also holds) alive."""
    try:
        parent_alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _write_shard_in_worker(videos_dir: str, out: str, shard: Mapping[str, Any], index: int):
    return index, _write_shard(videos_dir, out, shard, lambda: _progress.put(index))


def _write_in_pool(videos_dir, out, todo, workers, bar) -> dict[int, dict[str, Any]]:
    """Writes the ``todo`` shards (index -> shard) in ``workers`` processes."""
    # Fresh interpreters rather than forked copies: the caller may hold threads (and locks
    # held by them) that a forked child would inherit in a locked state.
    context = multiprocessing.get_context("spawn")
    ticks = context.Queue()
    parent_alive, alive = context.Pipe(duplex=False)  # nothing is ever sent on it
    counted = {i: 0 for i in todo}  # videos shown on the bar per shard
    results = {}

    def show_progress():
        while True:
            try:
                index = ticks.get_nowait()
            except queue_module.Empty:
                return
            if index not in results:  # a finished shard's count is already exact
                counted[index] += 1
                bar.update(1)

    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(ticks, parent_alive),
        ) as pool:
            pending = {
                pool.submit(_write_shard_in_worker, videos_dir, out, shard, index)
                for index, shard in todo.items()
            }
            try:
                while pending:
                    finished, pending = concurrent.futures.wait(
                        pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    show_progress()
                    for future in finished:
                        index, result = future.result()
                        results[index] = result
                        # Progress messages may arrive after the result; settle the count now.
                        bar.update(len(todo[index]["videos"]) - counted[index])
            except BaseException:
                # Shards being written finish (they count when resuming); the rest never start.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        alive.close()  # the workers have exited: closing no longer ends any
        parent_alive.close()
    return results


def write_shards(videos_dir, out, todo, workers, progress, plan) -> dict[int, dict[str, Any]]:
    """Writes the ``todo`` shards of ``plan`` (index -> shard) with up to ``workers``
    processes; returns their sidecars by index. ``progress`` shows a bar over the plan."""
    from tqdm import tqdm

    total = sum(len(s["videos"]) for s in plan["shards"])
    waiting = sum(len(s["videos"]) for s in todo.values())
    with tqdm(total=total, initial=total - waiting, unit="video", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            # In this process: no start-up cost, and errors surface with a plain traceback.
            return {
                i: _write_shard(videos_dir, out, s, lambda: bar.update(1)) for i, s in todo.items()
            }
        return _write_in_pool(videos_dir, out, todo, min(workers, len(todo)), bar)
