"""Unreadable and excluded records: replaced and counted apart in the pipeline, and a run
with too many unreadable ones stops with one line, exit code 2 and a checkpoint of its last
step (the real command in a child process, on real record shards)."""

import io
import json
import logging
import os
import pickle

import av
import numpy as np
import pytest

from maskfeat_jax import errors, masking
from maskfeat_jax.data import batching, embedded_video, skipping, video_records, videos
from tests.runs import metric_lines, run_main

SETTINGS = embedded_video.EmbeddedVideos(
    videos_per_photo=1, num_frames=24, height=48, width=64, gop=8
)
GOOD = 21  # one video per bundled photo
# The tiny video ViT of configs/demo_video.py:vit on these records, on one CPU device.
TINY = (
    "--config.input.dataset=records",
    "--config.model.image_size=32",
    "--config.model.num_frames=4",
    "--config.mask.grid=2,2,2",
    "--config.model.depth=1",
    "--config.optim.warmup_steps=2",
    "--config.total_steps=40",
    "--config.visualize_every_steps=0",
    "--config.tensorboard=False",
)
VIDEO_VIT = "configs/demo_video.py:vit"


def _frames(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def unusable_records(good: dict) -> dict[str, bytes]:
    """Two unreadable records and a readable 3-frame one, made from a good record."""
    short = embedded_video.encode_h264(_frames(good["video"])[:3], 30)
    return {
        "cut.mp4": video_records.encode_record(
            "cut.mp4", 0, good["video"][: len(good["video"]) // 3], good
        ),
        "text.mp4": video_records.encode_record("text.mp4", 1, b"not a video " * 30, good),
        "short.mp4": video_records.encode_record(
            "short.mp4", 2, short, video_records.probe_video(short)
        ),
    }


def add_records(data_dir: str, split: str, records: list[bytes]) -> None:
    """Appends a shard of ``records`` to ``split`` (after its existing records)."""
    info = video_records.read_info(data_dir, split)
    file = f"{split}.extra.array_record"
    with video_records.ShardWriter(os.path.join(data_dir, file)) as writer:
        for record in records:
            writer.write(record)
    shards = [*info["shards"], {"file": file, "num_records": writer.num_records}]
    video_records.write_info(data_dir, split, shards, info["classes"])


def video_dataset(root, names=("cut.mp4", "text.mp4", "short.mp4")) -> str:
    """The 21 embedded videos per split plus the ``names`` of ``unusable_records`` after
    them (train records 21, 22, ...; the same in validation)."""
    data_dir = embedded_video.ensure(str(root / "videos"), SETTINGS, workers=1)
    for split in ("train", "validation"):
        good = video_records.decode_record(video_records.VideoRecords(data_dir, split)[0])
        extra = unusable_records(good)
        add_records(data_dir, split, [extra[n] for n in names])
    return data_dir


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return video_dataset(tmp_path_factory.mktemp("bad_inputs"))


@pytest.fixture(scope="module")
def source(data_dir):
    return video_records.VideoRecords(data_dir, "train")


def _batches(source, n, **kw):
    sampling = videos.ClipSampling(
        num_frames=4, stride=4, target_fps=30.0, image_size=32, short_side=0, min_frames=4
    )
    options = batching.StreamOptions(per_host_batch=8, seed=0, read_threads=2, prefetch_batches=2)
    mask_generator = masking.CubeMaskGenerator(grid=(2, 2, 2), ratio=0.4)
    it = iter(
        videos.make_video_pretrain_dataset(
            source, sampling, options, mask_generator=mask_generator, **kw
        )
    )
    try:
        return [next(it) for _ in range(n)]
    finally:
        it.close()


def _error_line(proc) -> str:
    """The one error line (the log lines around it start with their level and time)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Data error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------- in the pipeline


def test_unreadable_and_excluded_records_are_replaced_and_counted_apart(source, caplog):
    batches = _batches(source, 12)  # 96 elements: every record is met several times
    skipped = sum(int(b["skipped"].sum()) for b in batches)
    excluded = sum(int(b["excluded"].sum()) for b in batches)
    assert skipped >= 4 and excluded >= 2
    for b in batches:
        assert b["image"].shape == (8, 4, 32, 32, 3)
        assert set(b["label"].tolist()) <= set(range(GOOD))  # all replaced by good ones
        bad_text = "\n".join(b["skipped_ids"].tolist())
        left_out = "\n".join(b["excluded_ids"].tolist())
        assert "short.mp4" not in bad_text and "cut.mp4" not in left_out
        assert bad_text.count("record ") == int(b["skipped"].sum())
        assert left_out.count("short.mp4: 3 frames, fewer than") == int(b["excluded"].sum())
    monitor = skipping.BadInputMonitor(max_fraction=0.5, min_seen=1)
    with caplog.at_level(logging.INFO):
        for b in batches:
            assert set(monitor.observe(b)) == {"image", "mask", "label"}
    # Excluded records are neither bad nor read: the fraction is unreadable / (used + them).
    assert (monitor.skipped, monitor.excluded) == (skipped, excluded)
    assert monitor.seen == 12 * 8 + skipped
    left_out_logs = [r for r in caplog.records if "Left out by the config" in r.getMessage()]
    assert len(left_out_logs) == 1 and left_out_logs[0].levelno == logging.INFO
    assert "short.mp4" in left_out_logs[0].getMessage()
    unreadable_logs = [r for r in caplog.records if "Skipped a bad input" in r.getMessage()]
    assert len(unreadable_logs) == skipped
    assert all(r.levelno == logging.WARNING for r in unreadable_logs)


def test_the_stop_counts_only_unreadable_records_and_names_them_in_one_line(source):
    batches = _batches(source, 12)
    skipped = sum(int(b["skipped"].sum()) for b in batches)
    seen = 12 * 8 + skipped
    # Between the unreadable share with and without the excluded ones counted as bad.
    excluded = sum(int(b["excluded"].sum()) for b in batches)
    threshold = (skipped + excluded / 2) / seen
    monitor = skipping.BadInputMonitor(max_fraction=threshold, min_seen=seen)
    for b in batches:
        monitor.observe(b)  # excluded records alone do not push it over
    strict = skipping.BadInputMonitor(max_fraction=0.01, min_seen=seen)
    with pytest.raises(skipping.TooManyBadInputs) as stop:
        for b in batches:
            strict.observe(b)
    message = str(stop.value)
    assert isinstance(stop.value, errors.DataError) and "\n" not in message
    assert message.startswith(f"{skipped} of {seen} records read were unreadable (")
    assert "> config.input.max_bad_fraction=0.01): " in message
    assert "cut.mp4 (decoding failed" in message and "text.mp4 (decoding failed" in message
    assert "short.mp4" not in message
    assert "the log names them all. Fix or remove them and rerun prepare_video" in message
    assert "which skips" not in message


def test_batches_without_the_excluded_fields_still_count():
    """Image pipelines' batches and host batches with no host fields at all."""
    batch = {
        "image": np.zeros((4, 2)),
        "skipped": np.array([0, 2, 0, 0]),
        "skipped_ids": np.array(["", "record 3: a.jpg: broken\nrecord 9: b.jpg: empty", "", ""]),
    }
    monitor = skipping.BadInputMonitor(max_fraction=0.5, min_seen=1)
    assert set(monitor.observe(batch)) == {"image"}
    assert set(monitor.observe({"image": np.zeros((4, 2))})) == {"image"}
    assert (monitor.seen, monitor.skipped, monitor.excluded) == (10, 2, 0)
    assert list(monitor.unreadable) == ["record 3", "record 9"]


def test_the_message_names_three_and_counts_the_rest():
    reasons = {f"record {i}": f"v{i}.mp4: truncated: frame {i} is missing" for i in range(5)}
    reasons["record 7"] = "record is not a video record (bad bytes)"
    text = skipping.describe_records(reasons)
    assert text == (
        "v0.mp4 (truncated: frame 0 is missing), v1.mp4 (truncated: frame 1 is missing), "
        "v2.mp4 (truncated: frame 2 is missing), and 3 more"
    )
    assert skipping.describe_records({"record 7": reasons["record 7"]}) == (
        "record 7 (record is not a video record (bad bytes))"
    )


def test_too_many_in_a_row_is_a_one_line_data_error_that_pickles(source):
    unusable = list(range(GOOD, len(source)))
    only_unusable = [source[i] for i in unusable]
    with pytest.raises(skipping.TooManyBadInputs) as stop:
        _batches(only_unusable, 1, max_retries=3)
    message = str(stop.value)
    assert isinstance(stop.value, errors.DataError) and "\n" not in message
    assert message.startswith("4 records in a row could not be read or used")
    assert "config.input.max_retries=3" in message
    # Grain sends a worker's exception to the training process pickled.
    again = pickle.loads(pickle.dumps(stop.value))
    assert type(again) is skipping.TooManyBadInputs and str(again) == message


# ---------------------------------------------------------------- the training command


def test_too_many_unreadable_records_stop_the_run_with_one_line_and_a_checkpoint(
    tmp_path, data_dir
):
    workdir = tmp_path / "run"
    common = (
        *TINY,
        f"--config.input.data_dir={data_dir}",
        "--config.input.batch_size=16",
        "--config.input.min_frames=4",  # short.mp4 is left out, not unreadable
    )
    # Metrics are read every 5 steps only, as in real runs: the steps dispatched since the
    # last read may still be running when the stop comes, and the process waits for them.
    stop = ("--config.input.max_bad_fraction=0.02", "--config.log_every_steps=5")
    proc = run_main(workdir, *common, *stop, config=VIDEO_VIT, XLA_FLAGS="")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr
    line = _error_line(proc)
    assert line.startswith("Data error: ") and "records read were unreadable (" in line
    assert "cut.mp4 (decoding failed" in line and "text.mp4 (decoding failed" in line
    assert "short.mp4" not in line
    step = int(line.split("Stopped after step ")[1].split(":")[0])
    assert 12 <= step <= 15  # the monitor judges from 256 records (16 steps) on
    assert line.endswith(
        f"checkpoint {workdir}/checkpoints/{step} is saved, and the same command continues from it."
    )
    assert os.listdir(workdir / "checkpoints") == [str(step)]
    saved = json.loads(
        (workdir / "checkpoints" / str(step) / "data" / "process_0-of-1.json").read_text()
    )
    assert saved == {"next_index": step}  # the rejected batch is read again on resuming
    left_out = f"Left out by the config (not counted as bad): record {GOOD + 2}: short.mp4"
    assert proc.stderr.count(left_out) == 1
    metrics = metric_lines(workdir)
    assert [m["step"] for m in metrics] == [1, 5, 10]
    assert metrics[-1]["skipped_inputs"] > 0 and metrics[-1]["excluded_inputs"] > 0

    # With the data judged acceptable, the same run continues from that checkpoint.
    proc = run_main(
        workdir,
        *common,
        "--config.input.max_bad_fraction=0.5",
        f"--config.total_steps={step + 2}",
        config=VIDEO_VIT,
        XLA_FLAGS="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing at step {step + 1}" in proc.stderr
    assert [m["step"] for m in metric_lines(workdir)][-2:] == [step + 1, step + 2]
    assert sorted(os.listdir(workdir / "checkpoints")) == sorted([str(step), str(step + 2)])


def _first_step_with(records: set[int], num_records: int, seed: int, batch: int) -> int:
    order = batching.index_stream(num_records, seed=seed)
    return next(i for i in range(len(order)) if int(order[i]) in records) // batch + 1


def test_a_reader_that_gives_up_in_a_worker_process_stops_the_same_way(tmp_path, data_dir):
    """``max_retries`` in a row inside a grain worker process: one line and a checkpoint of
    the steps before the batch it broke."""
    num_records, unreadable = GOOD + 3, {GOOD, GOOD + 1}
    # A seed whose stream meets an unreadable record after a few good batches (the first
    # batch is read before compiling, where a failure is reported without a checkpoint).
    seed = next(s for s in range(100) if _first_step_with(unreadable, num_records, s, 4) >= 3)
    step = _first_step_with(unreadable, num_records, seed, 4)
    workdir = tmp_path / "run"
    proc = run_main(
        workdir,
        *TINY,
        f"--config.input.data_dir={data_dir}",
        "--config.input.batch_size=4",
        "--config.input.max_retries=0",
        "--config.input.worker_count=2",
        f"--config.seed={seed}",
        config=VIDEO_VIT,
        XLA_FLAGS="",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = _error_line(proc)
    assert line.startswith("Data error: 1 record in a row could not be read or used")
    assert f"Stopped after step {step - 1}: checkpoint {workdir}/checkpoints/{step - 1}" in line
    assert os.listdir(workdir / "checkpoints") == [str(step - 1)]
    assert (workdir / "checkpoints" / str(step - 1) / "data").is_dir()
