"""Tests for camera paths over photos and clip rendering (the embedded videos' source)."""

import dataclasses
import itertools
import math

import numpy as np
import pytest
from PIL import Image

from maskfeat_jax.data import camera_paths, embedded
from maskfeat_jax.data.camera_paths import CameraPath, render_clip, sample_path

FRAMES, SIZE = 4, 32  # tiny clips keep the tests fast


def _mad(a, b):
    return float(np.abs(a.astype(np.float64) - b).mean())


@pytest.fixture(scope="module")
def photos():
    # Square, wide and grayscale photos of different sizes.
    return embedded.load_photos(("astronaut", "china", "camera", "text"))


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


# ---------------------------------------------------------------- bad inputs


@pytest.mark.parametrize(
    "photo, args, match",
    [
        (np.zeros((20, 20, 3), np.float32), (4, 8), r"uint8 \[H, W, 3\].*to uint8"),
        (np.zeros((20, 20), np.uint8), (4, 8), r"uint8 \[H, W, 3\].*grayscale"),
        (np.zeros((20, 20, 4), np.uint8), (4, 8), r"grayscale/RGBA to RGB"),
        (np.zeros((20, 20, 3), np.uint8), (0, 8), "num_frames must be >= 1"),
        (np.zeros((20, 20, 3), np.uint8), (4, 0), r"size \(height\) must be >= 1"),
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


def test_render_clip_non_square_frames_match_crop_then_resize(photos):
    photo = photos[0]  # 512 x 512
    # A centred box with the frames' aspect (4:3), a quarter of the photo's area.
    path = CameraPath(start_scale=0.25, end_scale=0.25, aspect=4 / 3)
    clip = render_clip(photo, path, 2, (48, 64))
    assert clip.shape == (2, 48, 64, 3)
    w, h = 256 * (4 / 3) ** 0.5, 256 / (4 / 3) ** 0.5

    def error(dx, dy):
        box = (256 - w / 2 + dx, 256 - h / 2 + dy, 256 + w / 2 + dx, 256 + h / 2 + dy)
        ref = Image.fromarray(photo).resize((64, 48), Image.Resampling.BICUBIC, box=box)
        return _mad(clip[0], np.asarray(ref))

    # Resampling differs (a reduced photo warped vs one filtered resize), the geometry not:
    # the exact box fits better than any box moved by a photo pixel.
    best = error(0, 0)
    assert best < 6.0
    assert all(error(dx, dy) > best + 1.0 for dx, dy in [(1, 0), (-1, 0), (0, 1), (0, -1)])


def test_module_exports():
    assert set(camera_paths.__all__) >= {"CameraPath", "render_clip", "sample_path"}
