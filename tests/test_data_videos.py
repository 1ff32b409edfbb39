"""Tests for the camera paths over photos and the grain video pretraining pipeline."""

import dataclasses
import itertools
import json
import math

import ml_collections
import numpy as np
import pytest
from PIL import Image

from maskfeat_jax import masking
from maskfeat_jax.data import camera_paths, embedded, images, videos
from maskfeat_jax.data.camera_paths import CameraPath, render_clip, sample_path
from tests.batches import assert_batches_equal, take

FRAMES, SIZE = 4, 32  # tiny clips keep the tests fast
GRID = (2, 4, 4)  # one mask unit = 2 frames x 8x8 px; num = round(32 * 0.4) = 13


def _gen():
    return masking.CubeMaskGenerator(grid=GRID, ratio=0.4)


def _dataset(photos, **kw):
    args = dict(
        num_frames=FRAMES,
        image_size=SIZE,
        mask_generator=_gen(),
        per_host_batch=2,
        seed=0,
        read_threads=2,
        prefetch_batches=2,
    )
    args.update(kw)
    return videos.make_video_pretrain_dataset(photos, **args)


def _mad(a, b):
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.fixture(scope="module")
def photos():
    # Square, wide and grayscale photos of different sizes.
    return embedded.load_photos(("astronaut", "china", "camera", "text"))


def _constant_photos(n):
    """Photo i is a constant image of value 10*i + 5 (sizes vary): its clips
    stay constant, so every clip reveals which photo it came from."""
    return [np.full((40 + 7 * i, 90 - 5 * i, 3), 10 * i + 5, np.uint8) for i in range(n)]


def _indices(batch):
    img = batch["image"]
    assert (img == img[:, :1, :1, :1, :1]).all()
    return ((img[:, 0, 0, 0, 0].astype(int) - 5) // 10).tolist()


# ---------------------------------------------------------------- camera paths


@pytest.mark.parametrize("shape", [(512, 512), (427, 640), (172, 448), (800, 100)])
def test_sampled_paths_stay_inside_the_photo(shape):
    rng = np.random.default_rng(0)
    for i in range(150):
        path = sample_path(rng, shape, max_zoom=2.0, max_rotation=(10.0, 45.0, 90.0)[i % 3])
        assert path.fits(shape, num_frames=17), path
        assert path.fits(shape, num_frames=2), path
        assert 0 < path.start_scale <= 1 and 0 < path.end_scale <= 1
        assert 3 / 4 - 1e-9 <= path.aspect <= 4 / 3 + 1e-9


def test_sampled_path_draws_like_random_resized_crop():
    rng = np.random.default_rng(1)
    scale, ratio = (0.1, 0.3), (0.5, 2.0)
    # Small boxes on a big photo always fit, so nothing is shrunk.
    paths = [
        sample_path(rng, (1000, 1000), scale=scale, ratio=ratio, max_zoom=1.0, max_rotation=0.0)
        for _ in range(2000)
    ]
    areas = np.array([p.start_scale for p in paths])
    log_aspects = np.log([p.aspect for p in paths])
    assert areas.min() >= 0.1 and areas.max() <= 0.3
    assert abs(areas.mean() - 0.2) < 0.01 and abs(areas.std() - 0.2 / math.sqrt(12)) < 0.01
    assert abs(log_aspects.mean()) < 0.05 and log_aspects.min() >= math.log(0.5) - 1e-9
    assert abs(log_aspects.std() - 2 * math.log(2) / math.sqrt(12)) < 0.02
    # No zoom or rotation asked for: none happens; the centre moves by <= max_shift.
    for p in paths[:100]:
        assert p.end_scale == p.start_scale and p.start_rotation == p.end_rotation == 0
        shift = np.subtract(p.end_center, p.start_center)
        assert (np.abs(shift) <= 0.25 + 1e-12).all()
    # Zoom stays within max_zoom (side length), rotation within max_rotation.
    for _ in range(200):
        p = sample_path(rng, (1000, 1000), scale=scale, max_zoom=1.3, max_rotation=10.0)
        zoom = math.sqrt(p.start_scale / p.end_scale)
        assert 1 / 1.3 - 1e-9 <= zoom <= 1.3 + 1e-9
        assert abs(p.start_rotation) <= 10 and abs(p.end_rotation) <= 10


def test_too_large_boxes_are_shrunk_to_fit():
    # Full-area boxes with aspect 4/3 on a square photo cannot fit as drawn.
    rng = np.random.default_rng(2)
    for _ in range(50):
        p = sample_path(rng, (100, 100), scale=(1.0, 1.0), ratio=(4 / 3, 4 / 3), max_zoom=1.0)
        assert p.fits((100, 100), num_frames=9)
        assert p.start_scale < 0.76  # w = 100 at most: area <= 100 * 75


def test_sample_path_is_deterministic_per_rng():
    a = sample_path(np.random.default_rng(5), (300, 400))
    b = sample_path(np.random.default_rng(5), (300, 400))
    c = sample_path(np.random.default_rng(6), (300, 400))
    assert a == b and a != c


def test_path_interpolation_endpoints_and_ease():
    p = CameraPath(
        start_center=(0.3, 0.4),
        end_center=(0.6, 0.5),
        start_scale=0.25,
        end_scale=0.64,
        start_rotation=-5,
        end_rotation=5,
    )
    params = p.frame_params(5)
    np.testing.assert_allclose(params[0], [0.3, 0.4, 0.25, -5])
    np.testing.assert_allclose(params[-1], [0.6, 0.5, 0.64, 5])
    np.testing.assert_allclose(params[2], [0.45, 0.45, 0.4, 0])  # geometric area midpoint
    # Smoothstep starts and ends slower than linear progress.
    linear = dataclasses.replace(p, ease="linear").progress(5)
    np.testing.assert_allclose(linear, [0, 0.25, 0.5, 0.75, 1])
    eased = p.progress(5)
    assert eased[1] < linear[1] and eased[3] > linear[3] and eased[2] == 0.5
    assert (np.diff(eased) > 0).all()
    assert p.frame_params(1).shape == (1, 4) and p.progress(1)[0] == 0


# ---------------------------------------------------------------- rendering


def test_render_clip_shape_dtype_and_determinism(photos):
    for i, photo in enumerate(photos):
        path = sample_path(np.random.default_rng(i), photo.shape)
        clip = render_clip(photo, path, FRAMES, SIZE)
        assert clip.shape == (FRAMES, SIZE, SIZE, 3) and clip.dtype == np.uint8
        assert clip.std() > 5  # real content, no black borders filling it
        np.testing.assert_array_equal(render_clip(photo, path, FRAMES, SIZE), clip)
    # Any frame count and size >= 1 works.
    assert render_clip(photos[0], path, 1, 1).shape == (1, 1, 1, 3)


def test_zero_motion_path_gives_identical_frames(photos):
    path = CameraPath(
        start_center=(0.4, 0.6), end_center=(0.4, 0.6), start_scale=0.3, end_scale=0.3, aspect=1.2
    )
    clip = render_clip(photos[1], path, 6, SIZE)
    for frame in clip[1:]:
        np.testing.assert_array_equal(frame, clip[0])


def test_full_view_path_matches_plain_resize(photos):
    for photo in photos:
        height, width = photo.shape[:2]
        path = CameraPath(aspect=width / height)  # whole photo, no motion
        clip = render_clip(photo, path, 2, 48)
        ref = np.asarray(Image.fromarray(photo).resize((48, 48), Image.Resampling.BICUBIC))
        assert _mad(clip[0], ref) < 0.5
        assert np.abs(clip[1].astype(int) - ref).max() <= 2


def test_static_crop_matches_crop_then_resize(photos):
    # Centre quarter of the 512x512 astronaut: box [128, 384) on both axes.
    photo = photos[0]
    clip = render_clip(photo, CameraPath(start_scale=0.25, end_scale=0.25), 1, 64)
    ref = (
        Image.fromarray(photo).crop((128, 128, 384, 384)).resize((64, 64), Image.Resampling.BICUBIC)
    )
    diff = np.abs(clip[0].astype(int) - np.asarray(ref))
    assert diff.mean() < 0.5 and diff[2:-2, 2:-2].max() <= 2  # borders filter differently


def test_rotation_turns_the_box_counter_clockwise(photos):
    photo = photos[0]
    upright = render_clip(photo, CameraPath(start_scale=0.25, end_scale=0.25), 1, 32)[0]
    turned = CameraPath(start_scale=0.25, end_scale=0.25, start_rotation=90, end_rotation=90)
    frame = render_clip(photo, turned, 1, 32)[0]
    # The box turns counter-clockwise, so its content turns clockwise.
    assert _mad(frame, np.rot90(upright, k=-1)) < 1.0
    assert _mad(frame, np.rot90(upright, k=1)) > 20


def test_consecutive_frames_move_smoothly(photos):
    clips = [
        render_clip(p, sample_path(np.random.default_rng(3 + i), p.shape), 8, 48)
        for i, p in enumerate(photos)
    ]
    neighbour = [_mad(c[i], c[i + 1]) for c in clips for i in range(7)]
    across = [_mad(a[0], b[0]) for a, b in itertools.combinations(clips, 2)]
    assert min(neighbour) > 0.1  # the camera moves every frame
    assert np.mean(neighbour) < 0.4 * np.mean(across), (neighbour, across)


def test_smaller_motion_gives_closer_frames(photos):
    photo = photos[1]
    kw = dict(max_zoom=1.0, max_rotation=0.0)
    small = [
        sample_path(np.random.default_rng(i), photo.shape, max_shift=0.02, **kw) for i in range(4)
    ]
    large = [
        sample_path(np.random.default_rng(i), photo.shape, max_shift=0.3, **kw) for i in range(4)
    ]

    def step(paths):
        return np.mean([_mad(c[0], c[1]) for c in (render_clip(photo, p, 4, 48) for p in paths)])

    assert step(small) < step(large)


# ---------------------------------------------------------------- transform


def test_hflip_flips_all_frames_together(photos):
    kw = dict(num_frames=FRAMES, image_size=SIZE, mask_generator=_gen())
    flip = videos.VideoPretrainTransform(photos, hflip=True, **kw)
    keep = videos.VideoPretrainTransform(photos, hflip=False, **kw)
    flipped = 0
    for i in range(40):
        out = flip.random_map(i % len(photos), np.random.default_rng(i))
        # Same rng: the camera path is drawn before the flip, so only the flip differs.
        ref = keep.random_map(i % len(photos), np.random.default_rng(i))["image"]
        if np.array_equal(out["image"], ref):
            continue
        np.testing.assert_array_equal(out["image"], ref[:, :, ::-1])
        flipped += 1
        assert out["mask"].shape == GRID and out["mask"].dtype == bool
    assert 10 <= flipped <= 30


# ---------------------------------------------------------------- pipeline


def test_batch_shapes_dtypes_and_values(photos):
    batches = take(_dataset(photos, per_host_batch=3), 2)
    for b in batches:
        assert set(b) == {"image", "mask"}
        assert b["image"].shape == (3, FRAMES, SIZE, SIZE, 3) and b["image"].dtype == np.uint8
        assert b["mask"].shape == (3, *GRID) and b["mask"].dtype == bool
        assert b["image"].max() > 150 and b["image"].min() < 60
    assert not np.array_equal(batches[0]["image"], batches[1]["image"])


def test_cube_mask_grid_and_ratio(photos):
    masks = np.concatenate([b["mask"] for b in take(_dataset(photos, per_host_batch=8), 3)])
    assert masks.shape == (24, *GRID)
    counts = masks.sum(axis=(1, 2, 3))
    assert (counts >= 1).all() and (counts <= 13).all()
    assert 0.3 < masks.mean() <= 13 / 32
    assert len({m.tobytes() for m in masks}) > len(masks) // 4  # drawn per clip


def test_determinism_and_seed_dependence(photos):
    a = take(_dataset(photos, seed=7), 2)
    assert_batches_equal(a, take(_dataset(photos, seed=7), 2))
    c = take(_dataset(photos, seed=8), 2)
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(a, c))


def test_pipeline_order_is_the_index_stream_and_epochs_are_finite():
    n = 5
    photos = _constant_photos(n)
    stream = [i for b in take(_dataset(photos, per_host_batch=1), 2 * n) for i in _indices(b)]
    assert stream == list(itertools.islice(images.index_stream(n, seed=0), 2 * n))
    for k in range(2):
        assert sorted(stream[k * n : (k + 1) * n]) == list(range(n))
    finite = list(_dataset(photos, num_epochs=2))
    assert len(finite) == (2 * n) // 2


def test_two_shards_cover_each_epoch_exactly_once():
    n, count = 7, 2
    photos = _constant_photos(n)
    per_shard = []
    for shard in range(count):
        ds = _dataset(photos, per_host_batch=1, shard_index=shard, shard_count=count)
        stream = [i for b in take(ds, n) for i in _indices(b)]
        assert stream == list(
            itertools.islice(
                images.index_stream(n, seed=0, shard_index=shard, shard_count=count), n
            )
        )
        per_shard.append(stream)
    merged = [x for pair in zip(*per_shard) for x in pair]  # global positions 0..2n-1
    for k in range(2):
        assert sorted(merged[k * n : (k + 1) * n]) == list(range(n))


def test_iterator_state_checkpoint_restore(photos):
    it = iter(_dataset(photos))
    take(it, 2)
    state = it.get_state()
    json.dumps(state)  # small and serialisable
    after = take(it, 2)
    fresh = iter(_dataset(photos))
    fresh.set_state(state)
    assert_batches_equal(take(fresh, 2), after)


def _video_config(**input_kw):
    c = ml_collections.ConfigDict()
    c.seed = 3
    c.mask = ml_collections.ConfigDict(dict(kind="cube", grid=None, ratio=0.4))
    c.input = ml_collections.ConfigDict(
        dict(dataset="embedded", split="validation", scale=(0.5, 1.0), hflip=True, worker_count=0)
    )
    c.input.update(input_kw)
    return c


def test_iterator_from_config_embedded():
    kw = dict(image_size=SIZE, num_frames=FRAMES, mask_grid=GRID, per_host_batch=2)
    it = videos.iterator_from_config(_video_config(), **kw)
    first = next(it)
    assert first["image"].shape == (2, FRAMES, SIZE, SIZE, 3)
    assert first["mask"].shape == (2, *GRID)
    assert_batches_equal([next(videos.iterator_from_config(_video_config(), **kw))], [first])
    # input.seed wins over the global seed.
    other = next(videos.iterator_from_config(_video_config(seed=4), **kw))
    assert not np.array_equal(other["image"], first["image"])


@pytest.mark.parametrize(
    "overrides, kw, match",
    [
        (dict(dataset="imagenet2012"), {}, r"currently reads 'embedded'.*dataset=embedded"),
        ({}, dict(mask_grid=(4, 4)), r"must be 3-D \(T, H, W\)"),
        ({}, dict(mask_grid=(3, 4, 4)), "T dividing num_frames=4"),
        ({}, dict(mask_grid=(2, 5, 5)), "dividing image_size=32"),
    ],
)
def test_iterator_from_config_errors(overrides, kw, match):
    args = dict(image_size=SIZE, num_frames=FRAMES, mask_grid=GRID, per_host_batch=2)
    args.update(kw)
    with pytest.raises(ValueError, match=match):
        videos.iterator_from_config(_video_config(**overrides), **args)


def test_iterator_from_config_needs_cube_masks():
    config = _video_config()
    config.mask.kind = "block"
    with pytest.raises(ValueError, match="mask.kind=cube"):
        videos.iterator_from_config(
            config, image_size=SIZE, num_frames=FRAMES, mask_grid=GRID, per_host_batch=2
        )


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(num_frames=0), "num_frames must be a positive int"),
        (dict(image_size=0), "image_size must be a positive int"),
        (dict(num_frames=3), "T dividing num_frames=3"),
        (dict(image_size=30), "dividing image_size=30"),
        (dict(mask_generator=masking.BlockMaskGenerator(grid=(4, 4))), "must be 3-D"),
        (dict(per_host_batch=0), "per_host_batch"),
        (dict(shard_index=2, shard_count=2), "shard_index < shard_count"),
        (dict(scale=(0.0, 1.0)), "crop scale"),
        (dict(ratio=(2.0, 1.0)), "crop ratio"),
        (dict(max_zoom=0.5), "max_zoom must be >= 1"),
        (dict(num_epochs=0), "num_epochs"),
        (dict(worker_count=-1), "worker_count"),
    ],
)
def test_invalid_dataset_arguments_raise(photos, kw, match):
    with pytest.raises(ValueError, match=match):
        _dataset(photos, **kw)


def test_invalid_photos_raise():
    with pytest.raises(ValueError, match=r"uint8 \[H, W, 3\]"):
        _dataset([np.zeros((32, 32), np.uint8)])
    with pytest.raises(ValueError, match="empty"):
        _dataset([])


@pytest.mark.parametrize(
    "photo, args, match",
    [
        (np.zeros((20, 20, 3), np.float32), (4, 8), r"uint8 \[H, W, 3\].*to uint8"),
        (np.zeros((20, 20), np.uint8), (4, 8), r"uint8 \[H, W, 3\].*grayscale"),
        (np.zeros((20, 20, 4), np.uint8), (4, 8), r"grayscale/RGBA to RGB"),
        (np.zeros((20, 20, 3), np.uint8), (0, 8), "num_frames must be >= 1"),
        (np.zeros((20, 20, 3), np.uint8), (4, 0), "size must be >= 1"),
        (np.zeros((20, 20, 3), np.uint8), (2.5, 8), "num_frames must be an int"),
    ],
)
def test_render_clip_bad_inputs(photo, args, match):
    with pytest.raises(ValueError, match=match):
        render_clip(photo, CameraPath(), *args)


def test_render_clip_needs_a_camera_path():
    with pytest.raises(ValueError, match="path must be a CameraPath.*sample_path"):
        render_clip(np.zeros((8, 8, 3), np.uint8), (0.5, 0.5), 2, 8)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(scale=(0.5, 1.5)), r"crop scale must be \(lo, hi\) with 0 < lo <= hi <= 1"),
        (dict(scale=(0.8, 0.5)), "crop scale"),
        (dict(ratio=(0.0, 1.0)), "crop ratio"),
        (dict(max_shift=-0.1), r"max_shift must be in \[0, 1\]"),
        (dict(max_zoom=0.9), "max_zoom must be >= 1"),
        (dict(max_rotation=120.0), r"max_rotation must be in \[0, 90\]"),
        (dict(ease="cubic"), "unknown ease"),
    ],
)
def test_sample_path_bad_ranges(kw, match):
    with pytest.raises(ValueError, match=match):
        sample_path(np.random.default_rng(0), (64, 64), **kw)


def test_sample_path_bad_photo_shape():
    with pytest.raises(ValueError, match="photo_shape"):
        sample_path(np.random.default_rng(0), (0, 64))
    with pytest.raises(ValueError, match="photo_shape"):
        sample_path(np.random.default_rng(0), 64)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(start_center=(1.2, 0.5)), r"start_center .* must lie in \[0, 1\]"),
        (dict(end_center=(0.5,)), "end_center must be a pair"),
        (dict(start_scale=0.0), r"start_scale must be in \(0, 1\]"),
        (dict(end_scale=1.5), r"end_scale must be in \(0, 1\]"),
        (dict(aspect=-1.0), "aspect"),
        (dict(end_rotation=float("nan")), "end_rotation must be a finite angle"),
        (dict(ease="bounce"), "unknown ease"),
    ],
)
def test_camera_path_bad_fields(kw, match):
    with pytest.raises(ValueError, match=match):
        CameraPath(**kw)


def test_module_exports():
    assert set(camera_paths.__all__) >= {"CameraPath", "render_clip", "sample_path"}
    assert set(videos.__all__) >= {"iterator_from_config", "make_video_pretrain_dataset"}


def test_multiprocess_workers_match_in_process(photos):
    ref = take(_dataset(photos), 2)
    it = iter(_dataset(photos, worker_count=2))
    try:
        assert_batches_equal(take(it, 2), ref)
    finally:
        it.close()
