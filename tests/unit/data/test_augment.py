"""RandAugment and random erasing: sampling, magnitudes, options, spec parsing, box
distributions and clips. (Against timm: tests/parity/test_augment.py.)"""

import math

import numpy as np
import pytest

from maskfeat_jax.data import augment
from tests.support.augment_cases import (
    ALL_OPS,
    FILL,
    HEIGHT,
    SIGNED_OPS,
    WIDTH,
    box_mask,
    skimage_data,
)


@pytest.fixture(scope="module")
def clip() -> np.ndarray:
    """Four different frames: shifted crops of a second photo."""
    cat = skimage_data.chelsea()
    frames = [
        cat[20 * i : 20 * i + 2 * HEIGHT : 2, 30 * i : 30 * i + 2 * WIDTH : 2] for i in range(4)
    ]
    return np.ascontiguousarray(np.stack(frames))


# --------------------------------------------------------------------------- single ops


def test_every_op_changes_the_photo(photo):
    ours = augment.RandAugment("rand-m9", image_size=224)
    for name in ALL_OPS:
        result = ours.apply(photo, [augment.SampledOp(name, 3.0, False)])
        assert not np.array_equal(result, photo), name


# --------------------------------------------------------------------------- full RandAugment


def test_sampling_distribution():
    ours = augment.RandAugment("rand-m9-mstd0.5-inc1", image_size=224)
    rng = np.random.default_rng(0)
    trials = 6000
    ops = [op for _ in range(trials) for op in ours.sample(rng)]
    # Each of the 2 layers applies with probability 0.5.
    assert abs(len(ops) / (2 * trials) - 0.5) < 0.015
    # Ops chosen uniformly (with replacement) from the increasing set.
    counts = np.array([sum(op.name == name for op in ops) for name in augment.INCREASING_OPS])
    expected = len(ops) / len(augment.INCREASING_OPS)
    assert np.all(np.abs(counts - expected) < 5 * math.sqrt(expected))
    # Magnitudes ~ N(9, 0.5) clipped to [0, 10]: P(clipped at 10) = P(z > 2) ~ 2.3%.
    magnitudes = np.array([op.magnitude for op in ops])
    assert magnitudes.min() >= 0 and magnitudes.max() == 10.0
    assert abs(np.mean(magnitudes == 10.0) - 0.0228) < 0.006
    # Below the clip they follow N(9, 0.5) truncated at z = 2.
    density, mass = math.exp(-2) / math.sqrt(2 * math.pi), 0.5 * (1 + math.erf(math.sqrt(2)))
    truncated_mean = 9.0 - 0.5 * density / mass
    truncated_std = 0.5 * math.sqrt(1 - 2 * density / mass - (density / mass) ** 2)
    unclipped = magnitudes[magnitudes < 10]
    assert abs(unclipped.mean() - truncated_mean) < 0.02
    assert abs(unclipped.std() - truncated_std) < 0.02
    # Signs are fair for signed ops and never set for the others.
    signed = [op.negate for op in ops if op.name in SIGNED_OPS]
    assert abs(np.mean(signed) - 0.5) < 0.03
    assert not any(op.negate for op in ops if op.name not in SIGNED_OPS)


def test_magnitude_clip_and_uniform_modes():
    rng = np.random.default_rng(1)
    high = augment.RandAugment("rand-m12-mmax15-mstd1-p1.0-inc1", image_size=224)
    magnitudes = np.array([op.magnitude for _ in range(2000) for op in high.sample(rng)])
    assert magnitudes.max() > 10.0 and magnitudes.max() <= 15.0
    uniform = augment.RandAugment("rand-m6-mstd101-p1.0-inc1", image_size=224)
    magnitudes = np.array([op.magnitude for _ in range(2000) for op in uniform.sample(rng)])
    assert magnitudes.min() >= 0 and magnitudes.max() <= 6
    assert abs(magnitudes.mean() - 3.0) < 0.1
    fixed = augment.RandAugment("rand-m7-p1.0-inc1", image_size=224)
    assert {op.magnitude for _ in range(50) for op in fixed.sample(rng)} == {7.0}


def test_same_seed_same_result_and_call_equals_sample_then_apply(photo):
    ours = augment.RandAugment("rand-m9-mstd0.5-inc1", image_size=224)
    first = ours(photo, np.random.default_rng(7))
    np.testing.assert_array_equal(first, ours(photo, np.random.default_rng(7)))
    ops = ours.sample(np.random.default_rng(7))
    np.testing.assert_array_equal(first, ours.apply(photo, ops))


def test_clip_gets_one_op_sequence(clip):
    ours = augment.RandAugment("rand-m7-mstd0.5-inc1", image_size=(HEIGHT, WIDTH))
    # Every op once (both sets, both signs) so each code path sees a multi-frame clip.
    every_op = [augment.SampledOp(name, 7.0, negate=i % 2 == 1) for i, name in enumerate(ALL_OPS)]
    for ops in [every_op[:8], every_op[8:14], every_op[14:], ours.sample(np.random.default_rng(3))]:
        augmented = ours.apply(clip, ops)
        assert augmented.shape == clip.shape and augmented.dtype == np.uint8
        for i in range(len(clip)):
            np.testing.assert_array_equal(augmented[i], ours.apply(clip[i], ops))
    # __call__ on a clip draws once for the whole clip.
    augmented = ours(clip, np.random.default_rng(5))
    ops = ours.sample(np.random.default_rng(5))
    for i in range(len(clip)):
        np.testing.assert_array_equal(augmented[i], ours.apply(clip[i], ops))


def test_fill_and_interpolation_options(photo):
    grey = augment.RandAugment("rand-m9", image_size=224, mean=(128 / 255,) * 3)
    assert grey.fill == (128, 128, 128)
    assert augment.RandAugment("rand-m9", image_size=224).fill == FILL
    assert augment.RandAugment("rand-m9", image_size=(180, 320)).translate_const == 81
    rotated = grey.apply(photo, [augment.SampledOp("Rotate", 10.0, False)])
    assert tuple(rotated[0, 0]) == (128, 128, 128)  # corner rotated out of view
    with pytest.raises(ValueError, match="interpolation"):
        augment.RandAugment("rand-m9", image_size=224, interpolation="random")
    with pytest.raises(ValueError, match="uint8"):
        grey.apply(photo.astype(np.float32), [])


# --------------------------------------------------------------------------- spec parsing


def test_spec_parsing_values():
    assert augment.parse_rand_augment_spec("rand") == augment.RandAugmentConfig()
    assert augment.parse_rand_augment_spec("rand-m9-mstd0.5-inc1") == augment.RandAugmentConfig(
        magnitude=9, magnitude_std=0.5, increasing=True
    )
    assert augment.parse_rand_augment_spec("rand-mstd200").magnitude_std == math.inf


@pytest.mark.parametrize(
    "spec, problem",
    [
        ("", "must start with 'rand'"),
        ("augmix-m9", "must start with 'rand'"),
        ("rand-x3", "unknown key 'x'"),
        ("rand-m9-foo", "cannot parse section 'foo'"),
        ("rand-m9--n2", "cannot parse section ''"),
        ("rand-tweights", "transform sets"),
        ("rand-m9.5", "needs an integer"),
        ("rand-p0.5x", "needs a number"),
        ("rand-m9-m7", "given twice"),
        ("rand-inc2", "inc0 or inc1"),
        ("rand-p1.5", "probability"),
        ("rand-mmax0", ">= 1"),
    ],
)
def test_spec_parsing_errors(spec, problem):
    with pytest.raises(ValueError, match=problem.replace(".", r"\.")):
        augment.parse_rand_augment_spec(spec)


# --------------------------------------------------------------------------- erase boxes


def test_erase_box_distribution():
    height, width, probability = 224, 192, 0.25
    rng = np.random.default_rng(0)
    boxes = np.stack(
        [
            augment.sample_erase_boxes(rng, height, width, probability=probability)
            for _ in range(4000)
        ]
    )
    assert boxes.shape == (4000, 1, 4) and boxes.dtype == np.int32
    top, left, h, w = boxes[:, 0].T
    erased = h > 0
    assert abs(erased.mean() - probability) < 0.02
    top, left, h, w = top[erased], left[erased], h[erased], w[erased]
    assert np.all((top >= 0) & (left >= 0) & (top + h <= height) & (left + w <= width))
    assert np.all((h < height) & (w < width) & (w > 0))
    # Area and aspect are drawn before rounding h and w to integers.
    area = height * width
    assert np.all((h - 0.5) * (w - 0.5) <= area / 3) and np.all(
        (h + 0.5) * (w + 0.5) >= 0.02 * area
    )
    assert np.all((h - 0.5) / (w + 0.5) <= 1 / 0.3) and np.all((h + 0.5) / (w - 0.5) >= 0.3)
    assert 0.08 < (h * w / area).mean() < 0.2  # U(0.02, 1/3) has mean 0.177, minus rejections
    # Positions are uniform over the valid range: mean relative offset ~ 0.5.
    assert abs((top / (height - h)).mean() - 0.5) < 0.03
    never = [augment.sample_erase_boxes(rng, height, width, probability=0.0) for _ in range(100)]
    assert not np.any(never)


def test_erase_box_count_and_determinism():
    rng = np.random.default_rng(2)
    boxes = np.stack(
        [augment.sample_erase_boxes(rng, 64, 64, probability=1.0, max_count=3) for _ in range(3000)]
    )
    counts = (boxes[..., 2] > 0).sum(axis=1)
    assert set(np.unique(counts)) == {1, 2, 3}
    assert np.all(np.abs(np.bincount(counts)[1:] / len(counts) - 1 / 3) < 0.04)
    # Used rows come first; the area budget is shared by the count.
    assert np.all((boxes[..., 2] > 0)[:, :-1] >= (boxes[..., 2] > 0)[:, 1:])
    one_box = boxes[counts == 1, 0]
    three_boxes = boxes[counts == 3]
    assert (three_boxes[..., 2] * three_boxes[..., 3]).mean() < 0.5 * (
        one_box[:, 2] * one_box[:, 3]
    ).mean()
    first = augment.sample_erase_boxes(np.random.default_rng(9), 64, 64, probability=1, max_count=3)
    again = augment.sample_erase_boxes(np.random.default_rng(9), 64, 64, probability=1, max_count=3)
    np.testing.assert_array_equal(first, again)


# --------------------------------------------------------------------------- erase (device)


def test_erase_fills_boxes_with_standard_normal_noise():
    import jax

    height, width = 48, 64
    images = np.full((3, height, width, 3), 5.0, dtype=np.float32)
    images[1] = np.random.default_rng(0).normal(size=(height, width, 3))
    boxes = np.array(
        [
            [[0, 0, 0, 0], [0, 0, 0, 0]],  # no box
            [[4, 6, 40, 50], [0, 0, 0, 0]],
            [[0, 0, 10, 10], [30, 40, 12, 20]],  # two boxes
        ],
        dtype=np.int32,
    )
    out = np.asarray(augment.erase(images, boxes, jax.random.key(0)))
    assert out.shape == images.shape and out.dtype == np.float32
    for i in range(3):
        inside = box_mask(boxes[i], height, width)
        np.testing.assert_array_equal(out[i][~inside], images[i][~inside])
        assert np.all(out[i][inside] != images[i][inside])
    noise = out[1][box_mask(boxes[1], height, width)]  # 40*50*3 = 6000 values
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1.0) < 0.05
    assert abs(np.corrcoef(noise[:, 0], noise[:, 1])[0, 1]) < 0.06  # channels independent
    # jit with static shapes gives the same result for the same key.
    jitted = jax.jit(augment.erase)(images, boxes, jax.random.key(0))
    np.testing.assert_array_equal(np.asarray(jitted), out)


def test_erase_video_uses_one_box_for_all_frames():
    import jax

    images = np.full((2, 4, 32, 40, 3), -3.0, dtype=np.float32)
    boxes = np.array([[[5, 7, 10, 12]], [[0, 0, 0, 0]]], dtype=np.int32)
    out = np.asarray(jax.jit(augment.erase)(images, boxes, jax.random.key(1)))
    inside = box_mask(boxes[0], 32, 40)
    for frame in range(4):
        np.testing.assert_array_equal(out[0, frame][~inside], -3.0)
        assert np.all(out[0, frame][inside] != -3.0)
    assert not np.array_equal(out[0, 0][inside], out[0, 1][inside])  # fresh noise per frame
    np.testing.assert_array_equal(out[1], images[1])
