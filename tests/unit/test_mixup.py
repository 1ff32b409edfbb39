"""The jittable Mixup/CutMix and soft-target loss: smoothing, box rounding, lam draws, single
kinds, video boxes, group flips, jit and sharded batches. (Against timm:
tests/parity/test_mixup.py.)"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from maskfeat_jax import mixup
from maskfeat_jax.mixup import MixupConfig
from tests.support.mixup_cases import (
    CUTMIX_ONLY,
    MIXUP_ONLY,
    NUM_CLASSES,
    RECIPE,
    batch,
    mix_batch_jit,
)

# --- targets -------------------------------------------------------------------------------


def test_one_hot_smoothed_values():
    targets = mixup.one_hot_smoothed(jnp.array([2, 0], jnp.int32), 5, 0.1)
    off = np.float32(0.1 / 5)
    np.testing.assert_array_equal(targets[0], [off, off, np.float32(0.9 + 0.1 / 5), off, off])
    np.testing.assert_array_equal(mixup.one_hot_smoothed(jnp.array([1]), 3, 0.0), [[0, 1, 0]])


# --- mixing against timm -------------------------------------------------------------------


def test_slowfast_box_rounding():
    """SlowFast's copy extends cut // 2 after the centre: odd cuts lose a row and a column."""
    lam = 1.0 - (5 / 20) ** 2  # cut of 5 on a 20 x 20 image
    assert [int(v) for v in mixup.cutmix_box(lam, 20, 20, 10, 10)] == [8, 13, 8, 13]
    assert [int(v) for v in mixup.cutmix_box(lam, 20, 20, 10, 10, slowfast=True)] == [8, 12, 8, 12]


# --- random draws --------------------------------------------------------------------------


def _draws(cfg, n=4000, seed=0):
    keys = jax.random.split(jax.random.key(seed), n)
    params = jax.jit(jax.vmap(lambda k: mixup.sample_mix_params(k, cfg, 16, 20)))(keys)
    return jax.tree.map(np.asarray, params)


def test_lam_distribution_and_switch_prob():
    draws = _draws(RECIPE)
    cut = draws.use_cutmix
    assert abs(cut.mean() - 0.5) < 0.04
    mixup_lams, cutmix_lams = draws.lam[~cut], draws.lam[cut]
    # Beta(0.8, 0.8): mean 1/2, variance a^2 / ((2a)^2 (2a + 1)) = 0.0962; Beta(1, 1): 1/12.
    assert abs(mixup_lams.mean() - 0.5) < 0.02
    assert abs(mixup_lams.var() - 0.64 / (2.56 * 2.6)) < 0.006
    assert abs(cutmix_lams.mean() - 0.5) < 0.02
    assert abs(cutmix_lams.var() - 1 / 12) < 0.006
    assert np.all((draws.lam >= 0) & (draws.lam <= 1))
    # Box centres uniform over the rows and columns.
    assert draws.center_y.min() == 0 and draws.center_y.max() == 15
    assert draws.center_x.min() == 0 and draws.center_x.max() == 19
    assert abs(draws.center_x.mean() - 9.5) < 0.4


def test_prob_below_one_leaves_batches_unmixed():
    draws = _draws(MixupConfig(num_classes=NUM_CLASSES, prob=0.3), seed=1)
    mixed = draws.lam < 1.0
    assert abs(mixed.mean() - 0.3) < 0.04
    assert not np.any(draws.use_cutmix[~mixed])
    assert abs(draws.use_cutmix[mixed].mean() - 0.5) < 0.06


def test_single_kind_configs():
    assert not _draws(MIXUP_ONLY, n=200).use_cutmix.any()
    assert _draws(CUTMIX_ONLY, n=200).use_cutmix.all()


# --- video, groups, jit, sharding ----------------------------------------------------------


def test_video_uses_the_same_box_on_every_frame():
    video, labels = batch(4, (4, 3, 10, 12, 2))
    for seed in range(4):
        key = jax.random.key(seed)
        mixed, targets, lam = mix_batch_jit(key, video, labels, CUTMIX_ONLY)
        pasted = np.all(mixed != video, axis=-1)  # [B, T, H, W]
        assert pasted.any()
        np.testing.assert_array_equal(pasted, np.broadcast_to(pasted[:1, :1], pasted.shape))
        np.testing.assert_allclose(1.0 - pasted[0, 0].mean(), float(lam), atol=1e-6)
        # Each frame is mixed exactly as an image batch with the same key would be.
        for t in range(video.shape[1]):
            frame_mixed, frame_targets, _ = mix_batch_jit(key, video[:, t], labels, CUTMIX_ONLY)
            np.testing.assert_array_equal(mixed[:, t], frame_mixed)
            np.testing.assert_array_equal(targets, frame_targets)


def test_flip_within_groups():
    order = jnp.arange(8)
    np.testing.assert_array_equal(mixup.flip_within_groups(order), [7, 6, 5, 4, 3, 2, 1, 0])
    np.testing.assert_array_equal(mixup.flip_within_groups(order, 2), [3, 2, 1, 0, 7, 6, 5, 4])
    np.testing.assert_array_equal(mixup.flip_within_groups(order, 4), [1, 0, 3, 2, 5, 4, 7, 6])


@pytest.mark.slow
def test_jit_matches_eager_and_bad_inputs_raise():
    images, labels = batch(6, (4, 8, 8, 3))
    key = jax.random.key(3)
    eager = mixup.mix_batch(key, images, labels, RECIPE)
    for a, b in zip(eager, mix_batch_jit(key, images, labels, RECIPE)):
        np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="groups"):
        mixup.mix_batch(key, images, labels, RECIPE, groups=3)
    with pytest.raises(ValueError, match="images"):
        mixup.mix_batch(key, images[0], labels, RECIPE)
    with pytest.raises(ValueError, match="cutmix_minmax"):
        MixupConfig(num_classes=NUM_CLASSES, cutmix_minmax=(0.2, 0.8))
    with pytest.raises(ValueError, match="mode"):
        MixupConfig(num_classes=NUM_CLASSES, mode="elem")


def test_from_config():
    cfg = ml_collections.ConfigDict(
        dict(mixup_alpha=0.8, cutmix_alpha=1.0, prob=1.0, switch_prob=0.5, label_smoothing=0.1)
    )
    assert MixupConfig.from_config(cfg, NUM_CLASSES) == RECIPE
    cfg.cutmix_minmax = None
    assert MixupConfig.from_config(cfg, NUM_CLASSES) == RECIPE
    cfg.mixup_alhpa = 0.8
    with pytest.raises(ValueError, match="mixup_alhpa"):
        MixupConfig.from_config(cfg, NUM_CLASSES)


@pytest.mark.slow
@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_batch(axis_type):
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(axis_type,) * 2)
    images, labels = batch(7, (16, 6, 8, 3))
    batch_sharding = NamedSharding(mesh, P(("data", "fsdp")))
    sharded = (jax.device_put(images, batch_sharding), jax.device_put(labels, batch_sharding))
    for seed, groups in [(0, 8), (1, 1)]:
        key = jax.random.key(seed)
        expected = mix_batch_jit(key, images, labels, RECIPE, groups=groups)
        compiled = mix_batch_jit.lower(key, *sharded, RECIPE, groups=groups).compile()
        got = compiled(key, *sharded)
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)
        assert got[0].sharding.is_equivalent_to(batch_sharding, 4)
        if groups == 8:  # pairs stay on their device: no communication at all
            hlo = compiled.as_text()
            for collective in ("all-gather", "all-to-all", "collective-permute", "all-reduce"):
                assert collective not in hlo
    if axis_type == AxisType.Explicit:
        with pytest.raises(ValueError, match="multiple of the 8 batch shards"):
            mix_batch_jit(jax.random.key(0), *sharded, RECIPE, groups=2)


# --- losses --------------------------------------------------------------------------------


def test_soft_target_cross_entropy_bfloat16_is_float32():
    rng = np.random.default_rng(10)
    logits = jnp.asarray(30 * rng.normal(size=(8, 1000)), jnp.bfloat16)
    targets = mixup.one_hot_smoothed(jnp.arange(8), 1000, 0.1)
    loss, grad = jax.value_and_grad(mixup.soft_target_cross_entropy)(logits, targets)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
    reference = mixup.soft_target_cross_entropy(logits.astype(jnp.float32), targets)
    assert float(loss) == float(reference)
