"""Unreadable and excluded records: replaced and counted apart in the pipeline, the stop that
counts only unreadable ones, and its one-line error that survives pickling."""

import logging
import pickle

import numpy as np
import pytest

from maskfeat_jax import errors, masking
from maskfeat_jax.data import batching, skipping, video_records, videos
from tests.support.video_data import GOOD


@pytest.fixture(scope="module")
def source(bad_video_dir):
    return video_records.VideoRecords(bad_video_dir, "train")


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
