"""Tests for the SlowFast-style block (image) and cube (video) mask generators."""

import ml_collections
import numpy as np
import pytest

from maskfeat_jax import masking

# SlowFast statistics over 2000 draws (reference spec, section B).
SF_BLOCK_MEAN, SF_BLOCK_MIN, SF_BLOCK_EXACT_FRACTION = 77.54, 70, 0.71
SF_CUBE_MEAN, SF_CUBE_MIN = 155.65, 143


def _counts(gen, n, seed):
    rng = np.random.default_rng(seed)
    return np.array([gen(rng).sum() for _ in range(n)])


def test_block_defaults_match_slowfast():
    gen = masking.BlockMaskGenerator()
    assert gen.grid == (14, 14)
    assert gen.num_masking_patches == 78
    assert gen.min_patches == 15
    assert gen.max_patches == 78
    assert gen.min_aspect == pytest.approx(0.3)
    assert gen.max_aspect == pytest.approx(1 / 0.3)
    assert gen.max_attempts == 10


def test_cube_defaults_match_slowfast():
    gen = masking.CubeMaskGenerator()
    assert gen.grid == (8, 7, 7)
    assert gen.num_masking_patches == 157
    assert gen.max_patches == 49
    assert gen.min_patches == 9
    assert gen.max_attempts == 100


def test_block_statistics_match_slowfast():
    gen = masking.BlockMaskGenerator()
    rng = np.random.default_rng(0)
    masks = np.stack([gen(rng) for _ in range(2000)])
    assert masks.dtype == bool and masks.shape == (2000, 14, 14)
    counts = masks.sum(axis=(1, 2))
    assert abs(counts.mean() - SF_BLOCK_MEAN) < 0.3, counts.mean()
    assert abs((counts == 78).mean() - SF_BLOCK_EXACT_FRACTION) < 0.05
    assert counts.max() == 78  # never overshoots
    assert SF_BLOCK_MIN - 8 <= counts.min() < 78  # under-fills sometimes
    # Inclusive top/left ranges: every cell, including the last row and
    # column, gets masked; a half-open range would never reach them.
    freq = masks.mean(axis=0)
    assert freq.min() > 0.02, freq.min()
    assert freq[-1].mean() > 0.1 and freq[:, -1].mean() > 0.1


def test_cube_statistics_match_slowfast():
    counts = _counts(masking.CubeMaskGenerator(), 2000, seed=1)
    assert abs(counts.mean() - SF_CUBE_MEAN) < 0.3, counts.mean()
    assert counts.max() == 157
    assert SF_CUBE_MIN - 10 <= counts.min() < 157


def _area_bounds(h, w):
    """Range of the drawn real area that rounds to an h x w block."""
    return (h - 0.5) * (w - 0.5), (h + 0.5) * (w + 0.5)


def _aspect_bounds(h, w):
    return (h - 0.5) / (w + 0.5), (h + 0.5) / max(w - 0.5, 1e-9)


def test_blocks_are_rectangles_with_valid_sizes():
    gen = masking.BlockMaskGenerator()
    rng = np.random.default_rng(3)
    for _ in range(300):
        mask, boxes = gen.sample_with_boxes(rng)
        assert boxes, "at least one block is always placed"
        replay = np.zeros_like(mask)
        count = 0
        for top, left, h, w in boxes:
            assert 1 <= h < 14 and 1 <= w < 14
            assert 0 <= top <= 14 - h and 0 <= left <= 14 - w
            cap = min(78 - count, gen.max_patches)
            lo_area, hi_area = _area_bounds(h, w)
            # The drawn area lies in U(min, cap) (or [cap, min] if cap < min).
            assert hi_area >= min(gen.min_patches, cap)
            assert lo_area <= max(gen.min_patches, cap)
            lo_ar, hi_ar = _aspect_bounds(h, w)
            assert lo_ar <= gen.max_aspect and hi_ar >= gen.min_aspect
            new = (~replay[top : top + h, left : left + w]).sum()
            assert 0 < new <= cap  # overshooting blocks are never applied
            replay[top : top + h, left : left + w] = True
            count += new
        np.testing.assert_array_equal(replay, mask)
        assert count == mask.sum() <= 78


def test_single_block_draws_are_uniformly_placed_rectangles():
    # Square blocks of area == num: each draw is exactly one 4x4 block.
    gen = masking.BlockMaskGenerator(grid=(10, 10), ratio=0.16, min_patches=16, min_aspect=1.0)
    rng = np.random.default_rng(0)
    tops = np.zeros(7, int)
    lefts = np.zeros(7, int)
    for _ in range(700):
        mask = gen(rng)
        rows, cols = np.nonzero(mask)
        assert mask.sum() == 16
        assert np.ptp(rows) == 3 and np.ptp(cols) == 3  # filled 4x4 box
        tops[rows.min()] += 1
        lefts[cols.min()] += 1
    # top/left uniform over the inclusive range [0, 10 - 4].
    assert (np.abs(tops - 100) < 40).all(), tops
    assert (np.abs(lefts - 100) < 40).all(), lefts


def test_cubes_are_boxes_with_valid_sizes():
    gen = masking.CubeMaskGenerator()
    rng = np.random.default_rng(4)
    ts = []
    for _ in range(200):
        mask, boxes = gen.sample_with_boxes(rng)
        replay = np.zeros_like(mask)
        count = 0
        for front, top, left, t, h, w in boxes:
            ts.append(t)
            assert 1 <= t <= 8 and 1 <= h < 7 and 1 <= w < 7
            assert 0 <= front <= 8 - t
            assert 0 <= top <= 7 - h and 0 <= left <= 7 - w
            lo_area, hi_area = _area_bounds(h, w)
            # Spatial area ~ U(9, 49), independent of what remains.
            assert hi_area >= 9 and lo_area <= 49
            sl = (slice(front, front + t), slice(top, top + h), slice(left, left + w))
            new = (~replay[sl]).sum()
            assert 0 < new <= 157 - count
            replay[sl] = True
            count += new
        np.testing.assert_array_equal(replay, mask)
    # Temporal extent is uniform over 1..8 inclusive: both ends occur.
    assert min(ts) == 1 and max(ts) == 8


def test_exact_mode_always_reaches_num():
    for grid, ratio in [((14, 14), 0.4), ((6, 6), 0.5), ((4, 4), 0.4)]:
        gen = masking.BlockMaskGenerator(grid=grid, ratio=ratio, exact=True)
        counts = _counts(gen, 300, seed=5)
        assert (counts == gen.num_masking_patches).all(), (grid, counts.min())


def test_determinism_and_seed_dependence():
    for gen in (masking.BlockMaskGenerator(), masking.CubeMaskGenerator()):
        a = gen(np.random.default_rng(11))
        b = gen(np.random.default_rng(11))
        c = gen(np.random.default_rng(12))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        rng1, rng2 = np.random.default_rng(7), np.random.default_rng(7)
        seq1 = np.stack([gen(rng1) for _ in range(5)])
        seq2 = np.stack([gen(rng2) for _ in range(5)])
        np.testing.assert_array_equal(seq1, seq2)
        assert len({m.tobytes() for m in seq1}) == 5  # successive draws differ


def test_from_config_configdict():
    cfg = ml_collections.ConfigDict(
        dict(
            kind="block",
            grid=(14, 14),
            ratio=0.4,
            min_aspect=0.3,
            min_patches=None,
            max_patches=None,
            exact=False,
        )
    )
    gen = masking.from_config(cfg)
    assert isinstance(gen, masking.BlockMaskGenerator)
    assert gen == masking.BlockMaskGenerator()
    cube = masking.from_config(dict(kind="cube", grid=[8, 7, 7], ratio=0.4))
    assert cube == masking.CubeMaskGenerator()
    assert cube(np.random.default_rng(0)).shape == (8, 7, 7)
    # grid=None takes the caller's token grid; an explicit grid wins.
    cfg.grid = None
    assert masking.from_config(cfg, grid=(4, 4)).grid == (4, 4)
    cfg.grid = (6, 6)
    assert masking.from_config(cfg, grid=(4, 4)).grid == (6, 6)
    cfg.grid = None
    with pytest.raises(ValueError, match="grid is None"):
        masking.from_config(cfg)
    small = masking.make_mask_generator("block", grid=(4, 4), ratio=0.4)
    assert small.num_masking_patches == 6 and small.min_patches == 1


@pytest.mark.parametrize(
    "params, match",
    [
        (dict(kind="block", ratio=0.0), r"ratio.*\(0, 1\)"),
        (dict(kind="block", ratio=1.0), r"ratio.*\(0, 1\)"),
        (dict(kind="cube", ratio=-0.2), r"ratio.*\(0, 1\)"),
        (dict(kind="block", ratio=1.5), r"ratio.*\(0, 1\)"),
        (dict(kind="block", grid=(0, 14)), "positive"),
        (dict(kind="block", grid=(14,)), "2 entries"),
        (dict(kind="cube", grid=(7, 7)), "3 entries"),
        (dict(kind="block", grid=(1, 14)), "at least 2x2"),
        (dict(kind="block", grid=(4, 4), min_patches=13, max_patches=16), "cannot fit a block"),
        (dict(kind="block", min_patches=200, max_patches=300), "cannot fit a block"),
        (dict(kind="cube", min_patches=45), "cannot fit a block"),
        (dict(kind="block", min_patches=50, max_patches=20), "must not exceed"),
        (dict(kind="cube", min_patches=30, max_patches=20), "must not exceed"),
        (dict(kind="block", min_aspect=0.0), r"min_aspect.*\(0, 1\]"),
        (dict(kind="block", min_aspect=-1.0), r"min_aspect.*\(0, 1\]"),
        (dict(kind="cube", min_aspect=1.5), r"min_aspect.*\(0, 1\]"),
        (dict(kind="block", min_aspect=0.5, max_aspect=0.4), "max_aspect"),
        (dict(kind="block", grid=(3, 3), ratio=0.01), "masks no cell"),
        (dict(kind="tube"), "unknown mask kind 'tube'"),
        (dict(kind="block", ratoi=0.4), r"unknown option.*ratoi"),
        (dict(kind="block", max_attempts=0), "max_attempts"),
        (dict(grid=(14, 14)), "needs a 'kind'"),
    ],
)
def test_invalid_configs_raise_helpful_errors(params, match):
    with pytest.raises(ValueError, match=match):
        masking.from_config(params)


def test_upsample_numpy():
    rng = np.random.default_rng(0)
    gen = masking.CubeMaskGenerator()
    m = np.stack([gen(rng) for _ in range(2)])  # (2, 8, 7, 7)
    up = masking.upsample_mask(m, (1, 2, 2))
    assert up.shape == (2, 8, 14, 14) and up.dtype == bool
    assert isinstance(up, np.ndarray)
    np.testing.assert_array_equal(up[:, :, ::2, ::2], m)
    np.testing.assert_array_equal(up[:, :, 1::2, 1::2], m)
    np.testing.assert_array_equal(up, np.kron(m, np.ones((1, 1, 2, 2))) > 0)
    up56 = masking.upsample_mask(m, (1, 8, 8))
    assert up56.shape == (2, 8, 56, 56)
    np.testing.assert_array_equal(up56[..., 7::8, 3::8], m)
    assert up56.sum() == m.sum() * 64
    np.testing.assert_array_equal(masking.upsample_mask_to(m, (8, 56, 56)), up56)
    # Images: one unit = one token.
    img = masking.BlockMaskGenerator()(rng)
    np.testing.assert_array_equal(masking.upsample_mask(img, (1, 1)), img)


def test_upsample_jax():
    jnp = pytest.importorskip("jax.numpy")
    m = np.random.default_rng(1).random((2, 8, 7, 7)) < 0.4
    up = masking.upsample_mask(jnp.asarray(m), (1, 2, 2))
    assert not isinstance(up, np.ndarray)  # stays a jax array
    assert up.shape == (2, 8, 14, 14) and up.dtype == jnp.bool_
    np.testing.assert_array_equal(np.asarray(up), masking.upsample_mask(m, (1, 2, 2)))
    up56 = masking.upsample_mask_to(jnp.asarray(m), (56, 56))
    assert up56.shape == (2, 8, 56, 56)
    np.testing.assert_array_equal(np.asarray(up56), m.repeat(8, axis=2).repeat(8, axis=3))


def test_upsample_rejects_bad_factors():
    m = np.zeros((2, 7, 7), bool)
    with pytest.raises(ValueError, match="positive ints"):
        masking.upsample_mask(m, (0, 2))
    with pytest.raises(ValueError, match="positive ints"):
        masking.upsample_mask(m, (1.5, 2))
    with pytest.raises(ValueError, match="factors given"):
        masking.upsample_mask(m, (1, 1, 2, 2))
    with pytest.raises(ValueError, match="integer multiples"):
        masking.upsample_mask_to(m, (15, 14))
