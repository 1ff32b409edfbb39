"""The input position of a checkpoint carried over to another process count, worker count or
global batch size, counted by record ids: the streams of a small index dataset are read as
N hosts would, their states written as an N-process checkpoint's data item (through grain's
handler), restored on M processes and read on, and every record of the interrupted epoch must
be read once (or, with a changed global batch, the documented few twice and none skipped)."""

import collections
import contextlib
import json
import logging

import grain
import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
import pytest
from etils import epath
from flax import nnx

from maskfeat_jax import checkpoint
from maskfeat_jax.data import positions
from maskfeat_jax.data.batching import StreamOptions, batched_stream

RECORDS = 22  # not a multiple of the global batches below: batches cross the epoch's end
SEED = 5


class RecordId(grain.transforms.RandomMap):
    """An element's record index, the id the tests count."""

    def random_map(self, element, rng):
        return np.int64(element)


def _stream(global_batch, shard_index=0, shard_count=1, workers=0):
    options = StreamOptions(
        per_host_batch=global_batch // shard_count,
        seed=SEED,
        shard_index=shard_index,
        shard_count=shard_count,
        worker_count=workers,
        read_threads=1,
        prefetch_batches=1,
    )
    return iter(batched_stream(RECORDS, RecordId(), options))


def _hosts(global_batch, count):
    return [_stream(global_batch, i, count) for i in range(count)]


def _read(hosts, batches):
    """``batches`` global batches from every host, as the global element order: host ``i``
    holds elements ``i, i+M, ...`` of each global batch."""
    out = []
    for _ in range(batches):
        out.extend(np.stack([next(h) for h in hosts], axis=1).reshape(-1).tolist())
    return out


def _uninterrupted(global_batch, elements):
    stream = _stream(global_batch)
    return _read([stream], -(-elements // global_batch))[:elements]


@contextlib.contextmanager
def _as_process(monkeypatch, index, count):
    """What jax.process_index() / process_count() say inside; grain's handler asks them too."""
    with monkeypatch.context() as m:
        m.setattr(jax, "process_index", lambda: index)
        m.setattr(jax, "process_count", lambda: count)
        yield


def _save_data_item(step_dir, hosts, monkeypatch):
    """The ``data`` item that ``len(hosts)`` processes write, each through grain's handler."""
    data_dir = epath.Path(step_dir) / "data"
    data_dir.mkdir(parents=True, exist_ok=True)
    for i, host in enumerate(hosts):
        with _as_process(monkeypatch, i, len(hosts)):
            grain.checkpoint.CheckpointHandler().save(
                data_dir, args=grain.checkpoint.CheckpointSave(host)
            )
    return data_dir


def _save_global_batch(step_dir, global_batch):
    """The ``meta`` item's config, as ``RunCheckpoints.save`` writes it."""
    ocp.Checkpointer(ocp.JsonCheckpointHandler()).save(
        epath.Path(step_dir) / "meta",
        args=ocp.args.JsonSave({"config": {"input": {"batch_size": global_batch}}}),
    )


def _resume(step_dir, hosts, monkeypatch, global_batch):
    for i, host in enumerate(hosts):
        with _as_process(monkeypatch, i, len(hosts)):
            restore = positions.restore_or_carry_over(
                str(step_dir), host, global_batch=global_batch
            )
        assert restore is None  # carried over, not left to grain's handler


def _once_each(elements):
    return collections.Counter(elements[:RECORDS]) == collections.Counter(range(RECORDS))


# ---------------------------------------------------------------- another process count


@pytest.mark.parametrize("saved_count, resumed_count", [(2, 1), (1, 2), (4, 2)])
def test_another_process_count_reads_every_record_of_the_epoch_once(
    tmp_path, monkeypatch, caplog, saved_count, resumed_count
):
    global_batch, read = 4, 3
    saved = _hosts(global_batch, saved_count)
    before = _read(saved, read)
    _save_data_item(tmp_path, saved, monkeypatch)
    resumed = _hosts(global_batch, resumed_count)
    with caplog.at_level(logging.INFO):
        _resume(tmp_path, resumed, monkeypatch, global_batch)
    after = _read(resumed, 3)  # past the end of the epoch
    assert _once_each(before + after)
    assert before + after == _uninterrupted(global_batch, len(before + after))
    assert f"carried over from {saved_count} to {resumed_count} processes" in caplog.text


def test_the_same_process_count_and_layout_is_left_to_grains_handler(tmp_path, monkeypatch):
    host = _stream(4)
    _read([host], 2)
    _save_data_item(tmp_path, [host], monkeypatch)
    fresh = _stream(4)
    restore = positions.restore_or_carry_over(str(tmp_path), fresh, global_batch=4)
    assert isinstance(restore, grain.checkpoint.CheckpointRestore) and restore.item is fresh
    assert fresh.get_state() == {"next_index": 0}  # untouched until grain's handler restores


# ---------------------------------------------------------------- another global batch


@pytest.mark.parametrize(
    "saved_batch, read, resumed_batch, repeated",
    [
        (4, 3, 2, 0),  # 12 elements = 6 batches of 2: exact
        (4, 2, 6, 2),  # 8 elements -> 1 batch of 6: elements 6, 7 read twice
        (4, 1, 5, 4),  # the worst case: one global batch of this run less one record
    ],
)
def test_a_changed_global_batch_repeats_fewer_than_one_batch_and_skips_none(
    tmp_path, monkeypatch, saved_batch, read, resumed_batch, repeated
):
    saved = _hosts(saved_batch, 2)
    before = _read(saved, read)
    _save_data_item(tmp_path, saved, monkeypatch)
    _save_global_batch(tmp_path, saved_batch)
    resumed = [_stream(resumed_batch)]
    _resume(tmp_path, resumed, monkeypatch, resumed_batch)
    start = len(before) - repeated
    assert start % resumed_batch == 0
    after = _read(resumed, -(-(RECORDS - start) // resumed_batch))
    assert before[:start] + after == _uninterrupted(resumed_batch, start + len(after))
    counts = collections.Counter((before + after)[: RECORDS + repeated])
    assert set(counts) == set(range(RECORDS))  # none skipped
    assert sum(n - 1 for n in counts.values()) == repeated < resumed_batch


def test_a_global_batch_that_does_not_divide_over_the_processes_is_refused(tmp_path, monkeypatch):
    with _as_process(monkeypatch, 0, 2), pytest.raises(ValueError, match="over 2 processes"):
        positions.restore_or_carry_over(str(tmp_path), _stream(3), global_batch=3)


# ---------------------------------------------------------------- grain's state formats


def test_grains_iterator_state_formats_are_the_ones_this_module_reads_and_writes():
    """Pins grain's formats (a fresh iterator's, without starting any worker process): a
    grain upgrade that changes them fails here."""
    threads = _stream(4)
    assert threads.get_state() == {"next_index": 0}
    positions.set_global_position(threads, 7)
    assert threads.get_state() == {"next_index": 7}
    assert positions.global_batches_read(threads.get_state()) == 7
    workers = _stream(4, workers=3)
    try:
        template = workers.get_state()
        assert template == {
            "next_index_in_cycle": 0,
            "next_index_in_datasets": 3,
            "iterators_in_use_indices": [0, 1, 2],
            "iterators_in_use_states": [{"next_index": 0}] * 3,
            "exhausted": [0, 0, 0],
            "future_states": {},
        }
        state = positions.workers_state(template, 7)  # batches 0-6 read: 0, 3, 6 by worker 0
        assert state["next_index_in_cycle"] == 1
        assert state["iterators_in_use_states"] == [
            {"next_index": 3},
            {"next_index": 2},
            {"next_index": 2},
        ]
        workers.set_state(state)
        assert workers.get_state() == state
        assert positions.global_batches_read(state) == 7
    finally:
        workers.close()


@pytest.mark.parametrize(
    "state, problem",
    [
        ({"next_index": 2, "epoch": 0}, "keys"),
        (
            {
                "next_index_in_cycle": 0,
                "next_index_in_datasets": 2,
                "iterators_in_use_indices": [0, 1],
                "iterators_in_use_states": [{"next_index": 2}, {"next_index": 0}],
                "exhausted": [0, 0],
                "future_states": {},
            },
            "not read in turn",
        ),
    ],
)
def test_an_unknown_state_is_refused_by_name(tmp_path, state, problem):
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "process_0-of-2.json").write_text(json.dumps(state))
    (tmp_path / "data" / "process_1-of-2.json").write_text('{"next_index": 2}')
    with pytest.raises(positions.SavedPositionError, match=f"process_0-of-2.json .*{problem}"):
        positions.read_saved_position(str(tmp_path / "data"))


@pytest.mark.slow
def test_worker_processes_positions_carry_over_both_ways(tmp_path, monkeypatch):
    """A run with 2 reader workers (its state: each worker's count and the worker read
    next) resumes on 2 processes with threads, and a threaded run's position is set into
    running workers (the same process count, another worker layout)."""
    workers = _stream(4, workers=2)
    fresh = _stream(4, workers=2)  # never started: only its state is read
    try:
        before = _read([workers], 3)
        assert workers.get_state() == positions.workers_state(fresh.get_state(), 3)
        _save_data_item(tmp_path / "workers", [workers], monkeypatch)
        resumed = _hosts(4, 2)
        _resume(tmp_path / "workers", resumed, monkeypatch, 4)
        after = _read(resumed, 3)
        assert _once_each(before + after)
        assert before + after == _uninterrupted(4, len(before + after))

        threads = _stream(4)
        _read([threads], 1)
        _save_data_item(tmp_path / "threads", [threads], monkeypatch)
        _resume(tmp_path / "threads", [workers], monkeypatch, 4)
        assert _read([workers], 4) == _uninterrupted(4, 20)[4:]
    finally:
        workers.close()
        fresh.close()


# ---------------------------------------------------------------- damaged or mixed data items


def test_processes_that_disagree_are_named(tmp_path, monkeypatch):
    hosts = _hosts(4, 2)
    _read(hosts, 2)
    next(hosts[1])
    _save_data_item(tmp_path, hosts, monkeypatch)
    with pytest.raises(
        positions.SavedPositionError,
        match=r"disagree .*process_0-of-2.json at global batch 2 \(0 workers\), "
        r"process_1-of-2.json at global batch 3",
    ):
        _resume(tmp_path, [_stream(4)], monkeypatch, 4)


def test_a_missing_or_foreign_process_file_is_named(tmp_path, monkeypatch):
    _save_data_item(tmp_path, _hosts(4, 2), monkeypatch)
    (tmp_path / "data" / "process_1-of-2.json").unlink()
    with pytest.raises(positions.SavedPositionError, match="lacks process_1-of-2.json"):
        positions.read_saved_position(str(tmp_path / "data"))
    (tmp_path / "data" / "process_0-of-4.json").write_text('{"next_index": 0}')
    with pytest.raises(positions.SavedPositionError, match=r"files of \[2, 4\] processes"):
        positions.read_saved_position(str(tmp_path / "data"))


# ---------------------------------------------------------------- through restore_run


def _tiny_state():
    model = nnx.state(nnx.Linear(2, 3, rngs=nnx.Rngs(0)))
    optimizer = nnx.state(nnx.Linear(3, 1, rngs=nnx.Rngs(1)))
    return model, optimizer


def test_restore_run_restores_its_own_process_count_and_carries_another_over(
    tmp_path, monkeypatch, caplog
):
    config = ml_collections.ConfigDict({"input": {"batch_size": 4}})
    state = _tiny_state()
    own = _stream(4)
    own_before = _read([own], 1)
    saved = _hosts(4, 2)
    before = _read(saved, 2)
    with checkpoint.RunCheckpoints(str(tmp_path), every_steps=1, async_save=False) as ckpts:
        ckpts.save(1, state, data=own, rng=jax.random.key(0), config=config)
        ckpts.save(2, state, data=saved[0], rng=jax.random.key(0), config=config)
    # What 2 processes would have written in place of this process's own file.
    (tmp_path / "2" / "data" / "process_0-of-1.json").unlink()
    _save_data_item(tmp_path / "2", saved, monkeypatch)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(
            x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(jax.devices()[0])
        ),
        state,
    )

    resumed = _stream(4)  # step 1: this process count's own file, through grain's handler
    with caplog.at_level(logging.INFO):
        checkpoint.restore_run(str(tmp_path), abstract, data=resumed, step=1, global_batch=4)
    assert "carried over" not in caplog.text
    assert own_before + _read([resumed], 5) == _uninterrupted(4, 24)

    resumed = _stream(4)  # step 2: written by 2 processes
    with caplog.at_level(logging.INFO):
        restored = checkpoint.restore_run(str(tmp_path), abstract, data=resumed, global_batch=4)
    assert restored.step == 2
    assert "carried over from 2 to 1 processes" in caplog.text
    after = _read([resumed], 4)
    assert _once_each(before + after)
