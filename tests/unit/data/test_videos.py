"""The video record pipelines: embedded H.264 videos, PyAV clip decoding, training and
evaluation streams, per-host sharding, iterator state and bad-input skipping."""

import dataclasses
import io

import av
import ml_collections
import numpy as np
import pytest
from PIL import Image

from maskfeat_jax import masking
from maskfeat_jax.data import (
    embedded,
    embedded_video,
    skipping,
    streams,
    video_decode,
    video_records,
    videos,
)
from maskfeat_jax.data.batching import StreamOptions
from maskfeat_jax.data.video_records import BadVideo, decode_record, encode_record
from tests.support.batches import assert_batches_equal, take

SMALL = embedded_video.EmbeddedVideos(
    videos_per_photo=2, num_frames=40, height=64, width=80, gop=16
)
FRAMES, SIZE, GRID = 4, 32, (2, 4, 4)  # one mask unit = 2 frames x 8 x 8 px
STREAM_FIELDS = {f.name for f in dataclasses.fields(StreamOptions)}
SAMPLING_ARGS = ("num_frames", "stride", "target_fps", "image_size", "short_side")
SAMPLING_ARGS += ("min_frames", "short_videos")


class VideoSpec:
    is_video, num_frames, image_size = True, FRAMES, SIZE


@pytest.fixture(scope="session")
def data_dir(tmp_path_factory):
    return embedded_video.ensure(str(tmp_path_factory.mktemp("videos") / "embedded"), SMALL)


@pytest.fixture(scope="session")
def train_source(data_dir):
    return video_records.VideoRecords(data_dir, "train")


def _gen():
    return masking.CubeMaskGenerator(grid=GRID, ratio=0.4)


def _split_args(kw, stream, sampling, args):
    """Sorts ``kw`` into ``StreamOptions`` fields, ``ClipSampling`` arguments and the rest."""
    for key, value in kw.items():
        if key in STREAM_FIELDS:
            stream[key] = value
        elif key in SAMPLING_ARGS:
            sampling[key] = value
        else:
            args[key] = value
    return StreamOptions(**stream), videos.ClipSampling(**sampling), args


def _dataset(source, **kw):
    """``kw``: stream options, clip sampling and pipeline arguments over the test defaults."""
    options, sampling, args = _split_args(
        kw,
        dict(per_host_batch=2, seed=0, read_threads=2, prefetch_batches=2),
        dict(num_frames=FRAMES, image_size=SIZE, stride=4, target_fps=30.0, short_side=0),
        dict(mask_generator=_gen()),
    )
    return videos.make_video_pretrain_dataset(source, sampling, options, **args)


def _eval_dataset(source, **kw):
    """``kw`` as for ``_dataset``: a pass over the evaluation views."""
    options, sampling, args = _split_args(
        kw,
        {},
        dict(num_frames=FRAMES, image_size=SIZE, stride=4, target_fps=30.0, short_side=256),
        {},
    )
    return videos.make_video_eval_dataset(source, sampling, options, **args)


def _all_frames(data):
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def _psnr(a, b):
    mse = np.mean((a.astype(np.float64) - b) ** 2)
    return 10 * np.log10(255.0**2 / mse)


def _decode_at(record, indices):
    """Frames at positions ``indices`` of a constant-rate record's timeline."""
    timeline = video_decode.Timeline.of_record(record)
    return video_decode.decode_frames(record["video"], np.asarray(indices) / timeline.fps, timeline)


def _labelled_records(source, n):
    """n in-memory records that all hold one real video; label i identifies record i."""
    record = decode_record(source[0])
    return [encode_record(f"copy{i}", i, record["video"], record) for i in range(n)]


# ---------------------------------------------------------------- embedded videos and decoding


def test_embedded_dataset_layout(data_dir, train_source):
    info = video_records.read_info(data_dir, "train")
    assert info["num_records"] == len(train_source) == 2 * len(embedded.PHOTO_NAMES)
    assert info["classes"] == list(embedded.PHOTO_NAMES) and info["failures"] == []
    assert len(video_records.VideoRecords(data_dir, "validation")) == len(embedded.PHOTO_NAMES)
    ids, labels = [], []
    for i in range(len(train_source)):
        r = decode_record(train_source[i])
        assert (r["num_frames"], r["fps"], r["height"], r["width"]) == (40, 30.0, 64, 80)
        ids.append(r["id"])
        labels.append(r["label"])
        assert r["id"].split("/")[1] == embedded.PHOTO_NAMES[r["label"]]
    assert len(set(ids)) == len(ids) and sorted(set(labels)) == list(range(21))
    # Built once: a second call with the same settings reuses it, other settings are refused.
    assert embedded_video.ensure(data_dir, SMALL) == data_dir
    with pytest.raises(ValueError, match="made with"):
        embedded_video.ensure(data_dir, embedded_video.EmbeddedVideos())


def test_key_frames_every_gop_so_decoding_must_seek(train_source):
    data = decode_record(train_source[0])["video"]
    with av.open(io.BytesIO(data)) as container:
        keys = [i for i, f in enumerate(container.decode(video=0)) if f.key_frame]
    assert keys == [0, 16, 32]


def test_decoded_frames_are_the_rendered_frames(train_source):
    """The frames at the sampled indices, whatever the seek lands on, equal a full decode
    and are the camera-path frames of those indices (H.264 loses a little)."""
    rng = np.random.default_rng(0)
    matched = checked = 0
    for i in (0, 5, 17):
        record = decode_record(train_source[i])
        full = _all_frames(record["video"])
        assert len(full) == record["num_frames"]
        _, name, k = record["id"].split("/")
        rendered = embedded_video.render_video(name, "train", int(k), SMALL)
        for _ in range(3):
            idx = video_decode.clip_frame_indices(
                40, num_frames=8, stride=2, fps=30, target_fps=30, rng=rng
            )
            clip = _decode_at(record, idx)
            assert clip.shape == (8, 64, 80, 3) and clip.dtype == np.uint8
            np.testing.assert_array_equal(clip, full[idx])
            for t, j in enumerate(idx):
                scores = [_psnr(clip[t], frame) for frame in rendered]
                assert scores[j] > 24 and abs(int(np.argmax(scores)) - j) <= 1
                matched += int(np.argmax(scores)) == j
                checked += 1
        # Indices out of order and repeated come back in that order.
        idx = np.array([33, 2, 2, 39])
        np.testing.assert_array_equal(_decode_at(record, idx), full[idx])
    # Where the camera moves, a decoded frame is closest to its own rendered frame (near
    # the gentle start and stop, neighbours can tie).
    assert matched >= 0.8 * checked


def test_clip_indices_follow_slowfast_sampling():
    kw = dict(num_frames=16, stride=4, fps=30, target_fps=30)
    # Test clips: offset sampling, clip k of 10 starts at k * floor((300 - 64) / 9) = 26 k.
    first = [0, 4, 8, 12, 16, 21, 25, 29, 33, 37, 42, 46, 50, 54, 58, 63]
    np.testing.assert_array_equal(
        video_decode.clip_frame_indices(300, clip_index=0, num_clips=10, **kw), first
    )
    last = video_decode.clip_frame_indices(300, clip_index=9, num_clips=10, **kw)
    np.testing.assert_array_equal(last, np.array(first) + 234)
    # One test clip: the centre. A 60 fps video spans twice the frames for the same time.
    np.testing.assert_array_equal(video_decode.clip_frame_indices(100, **kw), np.array(first) + 18)
    at60 = video_decode.clip_frame_indices(300, **{**kw, "fps": 60})
    assert at60[0] == 86 and at60[-1] == 86 + 127
    # Shorter than the clip: clamped to the last frame.
    short = video_decode.clip_frame_indices(40, **kw)
    assert short.max() == 39 and (np.diff(short) >= 0).all()
    # Training clips start uniformly in [0, 300 - 64].
    rng = np.random.default_rng(0)
    starts = [video_decode.clip_frame_indices(300, rng=rng, **kw)[0] for _ in range(2000)]
    assert min(starts) < 5 and 230 < max(starts) <= 236
    assert abs(np.mean(starts) - 118) < 5


def test_short_side_size_floors_the_long_side():
    assert video_decode.short_side_size(240, 320, 256) == (256, 341)
    assert video_decode.short_side_size(320, 240, 256) == (341, 256)
    assert video_decode.short_side_size(240, 320, 0) == (240, 320)


# ---------------------------------------------------------------- training stream


def test_batch_shapes_dtypes_and_values(train_source):
    batches = take(_dataset(train_source, per_host_batch=3), 2)
    for b in batches:
        assert set(b) == {
            "image",
            "mask",
            "label",
            "skipped",
            "skipped_ids",
            "excluded",
            "excluded_ids",
        }
        assert b["image"].shape == (3, FRAMES, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
        assert b["mask"].shape == (3, *GRID) and b["mask"].dtype == bool
        assert b["label"].dtype == np.int32 and ((0 <= b["label"]) & (b["label"] < 21)).all()
        assert (b["skipped"] == 0).all() and (b["skipped_ids"] == "").all()
        assert b["image"].max() > 150 and b["image"].min() < 60
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_training_clip_is_the_crop_of_the_decoded_frames(train_source):
    """One element by hand: the same rng draws give the same clip start, crop and flip."""
    sampling = videos.ClipSampling(
        num_frames=FRAMES, stride=4, target_fps=30, image_size=SIZE, short_side=48
    )
    transform = videos.VideoTrainTransform(train_source, sampling, mask_generator=_gen())
    for seed in range(4):
        out = transform.random_map(3, np.random.default_rng(seed))
        rng = np.random.default_rng(seed)
        record = decode_record(train_source[3])
        idx = video_decode.clip_frame_indices(
            40, num_frames=FRAMES, stride=4, fps=30, target_fps=30, rng=rng
        )
        frames = _all_frames(record["video"])[idx]
        top, left, h, w = videos.sample_crop_box(rng, 48, 60, (0.5, 1.0), (3 / 4, 4 / 3))
        s = 64 / 48  # the 64 x 80 frames scaled to 48 x 60
        box = (left * s, top * s, (left + w) * s, (top + h) * s)
        ref = np.stack(
            [
                np.asarray(
                    Image.fromarray(f).resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box)
                )
                for f in frames
            ]
        )
        if rng.random() < 0.5:
            ref = ref[:, :, ::-1]
        np.testing.assert_array_equal(out["image"], ref)
        np.testing.assert_array_equal(out["mask"], _gen()(rng))


def test_cube_masks_per_clip(train_source):
    masks = np.concatenate([b["mask"] for b in take(_dataset(train_source, per_host_batch=8), 2)])
    counts = masks.sum(axis=(1, 2, 3))
    assert (counts >= 1).all() and (counts <= 13).all()
    assert len({m.tobytes() for m in masks}) > len(masks) // 4


def test_determinism_and_seed_dependence(train_source):
    a = take(_dataset(train_source, seed=7), 2)
    assert_batches_equal(a, take(_dataset(train_source, seed=7), 2))
    c = take(_dataset(train_source, seed=8), 2)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_two_hosts_cover_every_record_once_per_epoch(train_source):
    n = 10
    records = _labelled_records(train_source, n)
    per_host = []
    for host in range(2):
        ds = _dataset(records, per_host_batch=1, shard_index=host, shard_count=2, num_epochs=2)
        per_host.append([int(b["label"][0]) for b in ds])
    assert [len(s) for s in per_host] == [n, n]  # 2 epochs x n records / 2 hosts
    merged = [x for pair in zip(*per_host) for x in pair]  # global positions
    for epoch in range(2):
        assert sorted(merged[epoch * n : (epoch + 1) * n]) == list(range(n))
    assert merged[:n] != merged[n:]  # a fresh shuffle per epoch
    assert set(per_host[0][: n // 2]).isdisjoint(per_host[1][: n // 2])


def test_iterator_state_checkpoint_restore(train_source):
    it = iter(_dataset(train_source))
    take(it, 2)
    state = it.get_state()
    after = take(it, 2)
    fresh = iter(_dataset(train_source))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), after)


def test_multiprocess_workers_match_in_process(train_source):
    ref = take(_dataset(train_source), 2)
    it = iter(_dataset(train_source, worker_count=2))
    try:
        assert_batches_equal(take(it, 2), ref)
    finally:
        it.close()


# ---------------------------------------------------------------- bad inputs


@pytest.fixture(scope="module")
def bad_records(train_source, tmp_path_factory):
    """Records that must be skipped: empty, not a video, cut short, not a record."""
    good = decode_record(train_source[0])
    frames = _all_frames(good["video"])
    path = str(tmp_path_factory.mktemp("bad") / "front.mp4")
    with av.open(path, "w", format="mp4", options={"movflags": "faststart"}) as container:
        stream = container.add_stream("libx264", rate=30)
        stream.height, stream.width, stream.pix_fmt = 64, 80, "yuv420p"
        for f in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
        container.mux(stream.encode())
    front = open(path, "rb").read()  # index first: a cut file still opens
    return [
        encode_record("empty.mp4", 0, b"", good),
        encode_record("text.mp4", 0, b"not a video at all" * 20, good),
        encode_record("cut.mp4", 0, front[: len(front) // 2], good),
        b"\x00garbage record",
    ]


@pytest.fixture(scope="module")
def short_record(train_source):
    """A playable 3-frame video: shorter than any clip, but not bad."""
    frames = _all_frames(decode_record(train_source[0])["video"])[:3]
    short = embedded_video.encode_h264(frames, 30)
    return encode_record("short.mp4", 0, short, video_records.probe_video(short)), frames


def test_each_kind_of_bad_video_is_refused(train_source, bad_records):
    sampling = videos.ClipSampling(
        num_frames=FRAMES, stride=4, target_fps=30, image_size=SIZE, short_side=0
    )
    reasons = []
    for i in range(len(bad_records)):
        with pytest.raises(BadVideo) as e:
            sampling.read(bad_records, i, rng=np.random.default_rng(0))
        reasons.append(str(e.value))
    assert "empty.mp4: decoding failed" in reasons[0]
    assert "text.mp4: decoding failed" in reasons[1]
    assert reasons[2].startswith("cut.mp4: truncated")
    assert "not a video record" in reasons[3]


def test_short_video_is_padded_or_looped_and_excluded_only_on_request(short_record):
    record, frames = short_record
    decoded = _all_frames(decode_record(record)["video"])
    kw = dict(num_frames=FRAMES, stride=4, target_fps=30, image_size=SIZE, short_side=0)
    # A 4-frame clip at stride 4 spans 16 positions: 0, 5, 10, 15 of a 3-frame video.
    for policy, want in (("pad", [0, 2, 2, 2]), ("loop", [0, 2, 1, 0])):
        _, images = videos.ClipSampling(short_videos=policy, **kw).read([record], 0)
        np.testing.assert_array_equal(np.stack([np.asarray(i) for i in images]), decoded[want])
    with pytest.raises(skipping.Excluded, match="3 frames, fewer than config.input.min_frames=4"):
        videos.ClipSampling(min_frames=4, **kw).read([record], 0)
    with pytest.raises(ValueError, match="short_videos='wrap' is not one of"):
        videos.ClipSampling(short_videos="wrap", **kw)


def test_bad_records_are_skipped_counted_and_named(train_source, bad_records):
    records = _labelled_records(train_source, 6) + bad_records
    batches = list(_dataset(records, per_host_batch=10, num_epochs=1))
    assert len(batches) == 1
    b = batches[0]
    assert b["image"].shape[0] == 10 and b["image"].max() > 0  # every slot holds a real clip
    assert set(b["label"].tolist()) <= set(range(6))  # bad ones were replaced by good ones
    assert b["skipped"].sum() >= len(bad_records)
    text = "\n".join(b["skipped_ids"].tolist())
    for name in ("empty.mp4", "text.mp4", "cut.mp4", "not a video record"):
        assert name in text
    monitor = skipping.BadInputMonitor(max_fraction=0.5, min_seen=1)
    stripped = monitor.observe(b)
    assert set(stripped) == {"image", "mask", "label"}
    assert monitor.skipped == b["skipped"].sum() and monitor.seen == 10 + monitor.skipped
    with pytest.raises(skipping.TooManyBadInputs, match="max_bad_fraction=0.2"):
        skipping.BadInputMonitor(max_fraction=0.2, min_seen=1).observe(b)


def test_only_bad_records_stop_the_stream_with_a_clear_error(bad_records):
    with pytest.raises(skipping.TooManyBadInputs, match="could not be read"):
        take(_dataset(bad_records, max_retries=3), 1)


def test_monitor_waits_for_enough_records():
    batch = {
        "image": np.zeros((4, 1)),
        "skipped": np.array([1, 0, 0, 0]),
        "skipped_ids": np.array(["record 3: x.mp4: too short", "", "", ""]),
    }
    monitor = skipping.BadInputMonitor(max_fraction=0.05, min_seen=20)
    for _ in range(3):
        monitor.observe(batch)  # 3 of 15 so far: not judged yet
    with pytest.raises(skipping.TooManyBadInputs, match="4 of 20 records"):
        monitor.observe(batch)
    with pytest.raises(ValueError, match="max_bad_fraction"):
        skipping.BadInputMonitor(max_fraction=1.5)


# ---------------------------------------------------------------- evaluation stream


def test_eval_views_cover_every_video_on_equal_host_batches(data_dir):
    source = video_records.VideoRecords(data_dir, "validation")
    n, clips, crops = len(source), 2, 3
    hosts = []
    for host in range(2):
        ds = _eval_dataset(
            source,
            per_host_batch=8,
            stride=4,
            short_side=40,
            num_clips=clips,
            num_crops=crops,
            shard_index=host,
            shard_count=2,
        )
        hosts.append(list(ds))
    assert len(hosts[0]) == len(hosts[1]) == -(-(n * clips * crops // 2) // 8)
    views = {}
    for batches in hosts:
        for b in batches:
            assert b["image"].shape == (8, FRAMES, SIZE, SIZE, 3)
            for v, ok, label in zip(b["video_index"], b["valid"], b["label"]):
                if ok:
                    views[int(v)] = views.get(int(v), 0) + 1
                    assert label == decode_record(source[int(v)])["label"]
    assert views == {v: clips * crops for v in range(n)}
    padding = sum(int((~b["valid"]).sum()) for batches in hosts for b in batches)
    assert padding == 2 * len(hosts[0]) * 8 - n * clips * crops


def test_eval_crops_are_left_centre_right_of_the_scaled_frames(data_dir):
    source = video_records.VideoRecords(data_dir, "validation")
    ds = _eval_dataset(
        source,
        per_host_batch=3,
        stride=4,
        short_side=40,
        num_clips=1,
        num_crops=3,
    )
    b = next(iter(ds))
    record = decode_record(source[0])
    idx = video_decode.clip_frame_indices(40, num_frames=FRAMES, stride=4, fps=30, target_fps=30)
    frames = _all_frames(record["video"])[idx]
    # 64 x 80 scaled to 40 x 50; 32 px crops at x = 0, 9, 18.
    for crop, left in enumerate((0, 9, 18)):
        box = (left * 1.6, 4 * 1.6, (left + 32) * 1.6, 36 * 1.6)
        ref = [
            np.asarray(Image.fromarray(f).resize((SIZE, SIZE), Image.Resampling.BILINEAR, box=box))
            for f in frames
        ]
        np.testing.assert_array_equal(b["image"][crop], np.stack(ref))
    assert videos.uniform_crop_box(50, 40, 32, 0, 3) == (0, 4, 32, 32)  # tall: along height
    with pytest.raises(ValueError, match="raise short_side"):
        videos.uniform_crop_box(20, 40, 32, 0, 1)


def test_bad_eval_video_is_an_invalid_counted_view(train_source, bad_records):
    records = _labelled_records(train_source, 2) + bad_records[:1]
    ds = _eval_dataset(
        records,
        per_host_batch=4,
        stride=4,
        short_side=0,
        num_clips=1,
    )
    b = next(iter(ds))
    assert b["valid"].tolist() == [True, True, False, False]
    assert b["skipped"].tolist() == [0, 0, 1, 0] and "empty.mp4" in b["skipped_ids"][2]


# ---------------------------------------------------------------- from the config


def _video_config(directory, **input_kw):
    c = ml_collections.ConfigDict()
    c.seed = 3
    c.mask = ml_collections.ConfigDict(dict(kind="cube", grid=None, ratio=0.4))
    c.input = ml_collections.ConfigDict(
        dict(
            dataset="embedded",
            data_dir=directory,
            split="validation",
            frame_stride=4,
            short_side=0,
            batch_size=2,
            embedded_videos=SMALL.__dict__.copy(),
        )
    )
    c.input.update(input_kw)
    return c


def test_pretrain_stream_embedded(data_dir):
    first = next(streams.pretrain_stream(_video_config(data_dir), VideoSpec, mask_grid=GRID))
    assert first["image"].shape == (2, FRAMES, SIZE, SIZE, 3)
    assert_batches_equal(
        [next(streams.pretrain_stream(_video_config(data_dir), VideoSpec, mask_grid=GRID))],
        [first],
    )
    other = next(
        streams.pretrain_stream(_video_config(data_dir, seed=4), VideoSpec, mask_grid=GRID)
    )
    assert not np.array_equal(other["image"], first["image"])


@pytest.mark.parametrize(
    "overrides, kw, match",
    [
        (dict(dataset="kinetics400", data_dir=None), {}, r"prepare_video.*input.data_dir"),
        (dict(split="test"), {}, r"no split 'test'.*prepare_video"),
        ({}, dict(mask_grid=(4, 4)), r"must be 3-D \(T, H, W\)"),
        ({}, dict(mask_grid=(3, 4, 4)), "T dividing num_frames=4"),
        ({}, dict(mask_grid=(2, 5, 5)), "dividing image_size=32"),
        (dict(frame_stride=0), {}, "stride must be a positive int"),
        (dict(short_side=-1), {}, "short_side >= 0"),
    ],
)
def test_pretrain_stream_errors(data_dir, overrides, kw, match):
    args = {"mask_grid": GRID, **kw}
    with pytest.raises((ValueError, FileNotFoundError), match=match):
        streams.pretrain_stream(_video_config(data_dir, **overrides), VideoSpec, **args)


def test_pretrain_stream_needs_cube_masks(data_dir):
    config = _video_config(data_dir)
    config.mask.kind = "block"
    with pytest.raises(ValueError, match="mask.kind=cube"):
        streams.pretrain_stream(config, VideoSpec, mask_grid=GRID)
