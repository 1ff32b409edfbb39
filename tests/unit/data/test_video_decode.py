"""Clips on the presentation timeline: variable frame rates, jitter, dropped frames, freezes,
late starts, rotation, short and damaged videos decode to the frames a player shows."""

import numpy as np
import pytest

from maskfeat_jax.data import video_decode, video_records, videos
from maskfeat_jax.data.batching import StreamOptions
from maskfeat_jax.data.video_records import BadVideo, encode_record
from tests.support import messy_videos as mv

CLIP = dict(num_frames=8, stride=4, target_fps=30)


@pytest.fixture(scope="module")
def encoded():
    return {name: mv.encode(spec) for name, spec in mv.PLAYABLE.items()}


def _clips(timeline):
    """Every test clip of 10 and a few random ones."""
    rng = np.random.default_rng(0)
    for k in range(10):
        yield video_decode.clip_times(timeline, clip_index=k, num_clips=10, **CLIP)
    for _ in range(6):
        yield video_decode.clip_times(timeline, rng=rng, **CLIP)


@pytest.mark.parametrize(
    "name",
    [
        "cfr25.mp4",
        "ntsc 29.97.mp4",
        "fast60.MP4",
        "vfr.mp4",
        "jitter_dropped.mp4",
        "freeze.mp4",
        "late_start.mp4",
        "three_frames.mp4",
        "one_frame.mp4",
    ],
)
def test_each_time_takes_the_frame_a_player_shows(encoded, name):
    spec = mv.PLAYABLE[name]
    meta = video_records.probe_video(encoded[name])
    timeline = video_decode.Timeline.of_record(meta)
    assert timeline.start == pytest.approx(spec.times_ms[0] / 1000, abs=1e-3)
    # The player's clock: the spec's own timestamps, with the half-frame allowance for
    # clock rounding that a constant-rate video needs to show frame i at i / fps.
    slack_ms = 500 / timeline.fps
    for times in _clips(timeline):
        frames = video_decode.decode_frames(encoded[name], times, timeline)
        got = [mv.frame_number(f, range(len(spec.times_ms))) for f in frames]
        want = [mv.shown_at(spec.times_ms, spec.times_ms[0] + 1000 * t + slack_ms) for t in times]
        assert got == want, (name, times)


def test_constant_rate_clips_are_slowfast_frame_indices(encoded):
    """On a constant frame rate the timeline gives SlowFast's frame indices exactly."""
    for name, count in (("cfr25.mp4", 75), ("fast60.MP4", 150)):
        timeline = video_decode.Timeline.of_record(video_records.probe_video(encoded[name]))
        assert timeline.positions == count
        for k in range(10):
            indices = video_decode.clip_frame_indices(
                count, fps=timeline.fps, clip_index=k, num_clips=10, **CLIP
            )
            times = video_decode.clip_times(timeline, clip_index=k, num_clips=10, **CLIP)
            frames = video_decode.decode_frames(encoded[name], times, timeline)
            assert [mv.frame_number(f, range(count)) for f in frames] == indices.tolist()


def test_irregular_timing_costs_no_clip(encoded):
    """What used to be refused as truncated (holes in an index-from-average-fps mapping)
    decodes: every test view and random clip of every playable file."""
    sampling = videos.ClipSampling(image_size=16, short_side=0, **CLIP)
    rng = np.random.default_rng(1)
    for name, data in encoded.items():
        source = [encode_record(name, 0, data, video_records.probe_video(data))]
        for k in range(10):
            _, images = sampling.read(source, 0, clip_index=k, num_clips=10)
            assert len(images) == CLIP["num_frames"]
        for _ in range(4):
            sampling.read(source, 0, rng=rng)


@pytest.mark.parametrize(
    "name, shape, corner",
    [
        ("rotated 90.mp4", (64, 48), "bottom-left"),  # a quarter turn counter-clockwise
        ("rotated -90.mov", (64, 48), "top-right"),  # the phone's portrait: clockwise
        ("portrait.mp4", (64, 48), "top-left"),  # stored upright
        ("cfr25.mp4", (48, 64), "top-left"),
    ],
)
def test_frames_come_out_as_a_player_turns_them(encoded, name, shape, corner):
    meta = video_records.probe_video(encoded[name])
    assert (meta["height"], meta["width"]) == shape
    timeline = video_decode.Timeline.of_record(meta)
    times = video_decode.clip_times(timeline, **CLIP)
    frames = video_decode.decode_frames(encoded[name], times, timeline)
    images = video_decode.decode_images(encoded[name], times, timeline)
    assert frames.shape[1:3] == shape and images[0].size == shape[::-1]
    assert mv.white_corner(frames[0]) == corner
    np.testing.assert_array_equal(np.asarray(images[3]), frames[3])


def test_a_cut_file_is_sampled_up_to_where_it_decodes():
    good = mv.encode(mv.Spec(mv.even_times(90, 30)))
    cut = good[: len(good) // 2]
    meta = video_records.probe_video(cut)
    assert 0.3 < meta["end"] < 1.5  # what decodes, not what the index promised
    timeline = video_decode.Timeline.of_record(meta)
    for times in _clips(timeline):
        video_decode.decode_frames(cut, times, timeline)
    # A record that promises more than its data holds (the file changed after preparing)
    # is refused, naming how far the data goes.
    stale = video_decode.Timeline.of_record(video_records.probe_video(good))
    with pytest.raises(BadVideo, match=r"truncated: the data gives frames up to"):
        video_decode.decode_frames(cut, [2.5], stale)


def test_a_zeroed_hole_is_played_over():
    good = mv.encode(mv.Spec(mv.even_times(90, 30)))
    holed = mv.damaged(good)["zeroed_hole.mp4"]
    timeline = video_decode.Timeline.of_record(video_records.probe_video(holed))
    for times in _clips(timeline):
        assert video_decode.decode_frames(holed, times, timeline).shape[0] == 8


def test_unplayable_files_are_refused_with_clean_reasons():
    good = mv.encode(mv.Spec(mv.even_times(90, 30)))
    for name, data in mv.unplayable(good).items():
        with pytest.raises(BadVideo) as e:
            video_records.probe_video(data)
        assert "<none>" not in str(e.value), name


def test_records_without_a_timeline_read_as_constant_rate(encoded):
    """Records written before timelines were stored still sample as they did."""
    data = encoded["cfr25.mp4"]
    meta = video_records.probe_video(data)
    old = {k: meta[k] for k in ("num_frames", "fps", "height", "width")}
    timeline = video_decode.Timeline.of_record(old)
    assert (timeline.start, timeline.rotation, timeline.positions) == (0.0, 0, 75)
    times = video_decode.clip_times(timeline, **CLIP)
    np.testing.assert_array_equal(
        video_decode.decode_frames(data, times, timeline),
        video_decode.decode_frames(data, times, video_decode.Timeline.of_record(meta)),
    )


def test_eval_view_of_a_video_smaller_than_the_crop_is_resized_up(encoded):
    """A 24 x 32 video and a 48 x 64 crop: scaled up to a 48 px short side, not an error."""
    data = encoded["tiny.mp4"]
    source = [encode_record("tiny.mp4", 3, data, video_records.probe_video(data))]
    sampling = videos.ClipSampling(image_size=48, short_side=0, **CLIP)
    ds = videos.make_video_eval_dataset(
        source, sampling, StreamOptions(per_host_batch=3), num_clips=1, num_crops=3
    )
    (batch,) = list(ds)
    assert batch["valid"].all() and (batch["label"] == 3).all()
    assert batch["image"].shape == (3, 8, 48, 48, 3)
    # The three crops run along the long side of the 48 x 64 enlargement.
    assert mv.white_corner(batch["image"][0, 0]) == "top-left"
    assert batch["image"][0, 0, :4, :4].min() > 200
    assert batch["image"][2, 0, :4, :4].max() < 200  # the right crop misses the corner
