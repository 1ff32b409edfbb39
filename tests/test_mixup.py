"""Tests for the jittable Mixup/CutMix and soft-target loss, checked against timm where it can be
the reference (its ``Mixup`` in mode 'batch', ``mixup_target``, ``cutmix_bbox_and_lam`` and the
cross-entropy losses)."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import AxisType, NamedSharding, PartitionSpec as P

from maskfeat_jax import mixup
from maskfeat_jax.mixup import MixParams, MixupConfig

NUM_CLASSES = 10
MIXUP_ONLY = MixupConfig(num_classes=NUM_CLASSES, cutmix_alpha=0.0)
CUTMIX_ONLY = MixupConfig(num_classes=NUM_CLASSES, mixup_alpha=0.0)
NO_MIX = MixupConfig(num_classes=NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0)
RECIPE = MixupConfig(num_classes=NUM_CLASSES)

mix_batch_jit = jax.jit(mixup.mix_batch, static_argnames=("cfg", "groups"))
apply_mix_jit = jax.jit(mixup.apply_mix, static_argnames=("cfg", "groups"))


@pytest.fixture(scope="module")
def timm():
    pytest.importorskip("torch")
    # Importing the submodules makes them attributes of the package.
    pytest.importorskip("timm.data.mixup")
    pytest.importorskip("timm.loss")
    return pytest.importorskip("timm")


def _batch(seed, shape, num_classes=NUM_CLASSES):
    """Random float images (every pixel differs from its partner's) and int32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape[0]).astype(np.int32)
    return images, labels


def _params(lam, use_cutmix=False, center_y=0, center_x=0):
    return MixParams(
        lam=jnp.float32(lam),
        use_cutmix=jnp.asarray(use_cutmix),
        center_y=jnp.int32(center_y),
        center_x=jnp.int32(center_x),
    )


def _timm_mix(timm, monkeypatch, images_nhwc, labels, lam, use_cutmix, seed=0):
    """timm's batch-mode Mixup with its (lam, use_cutmix) draw forced; returns NHWC numpy."""
    import torch

    mixer = timm.data.Mixup(
        mixup_alpha=0.8,
        cutmix_alpha=1.0,
        prob=1.0,
        switch_prob=0.5,
        mode="batch",
        correct_lam=True,
        label_smoothing=0.1,
        num_classes=NUM_CLASSES,
    )
    monkeypatch.setattr(mixer, "_params_per_batch", lambda: (float(lam), use_cutmix))
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc.transpose(0, 3, 1, 2)))
    np.random.seed(seed)  # the box centre draws
    x, targets = mixer(x, torch.from_numpy(labels).long())
    return x.numpy().transpose(0, 2, 3, 1), targets.numpy()


# --- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize("cfg", [MIXUP_ONLY, CUTMIX_ONLY, NO_MIX], ids=["mixup", "cutmix", "off"])
def test_targets_sum_to_one_and_match_timm_mixup_target(timm, cfg):
    import torch

    images, labels = _batch(0, (8, 12, 10, 3))
    for seed in range(3):
        mixed, targets, lam = mix_batch_jit(jax.random.key(seed), images, labels, cfg)
        assert targets.shape == (8, NUM_CLASSES) and targets.dtype == jnp.float32
        np.testing.assert_allclose(np.sum(targets, axis=1), 1.0, atol=1e-6)
        expected = timm.data.mixup.mixup_target(
            torch.from_numpy(labels).long(), NUM_CLASSES, float(lam), smoothing=0.1
        )
        np.testing.assert_allclose(targets, expected.numpy(), rtol=0, atol=1e-7)
        if cfg is NO_MIX:
            assert float(lam) == 1.0
            np.testing.assert_array_equal(mixed, images)
        else:
            assert 0.0 <= float(lam) < 1.0


def test_one_hot_smoothed_values():
    targets = mixup.one_hot_smoothed(jnp.array([2, 0], jnp.int32), 5, 0.1)
    off = np.float32(0.1 / 5)
    np.testing.assert_array_equal(targets[0], [off, off, np.float32(0.9 + 0.1 / 5), off, off])
    np.testing.assert_array_equal(mixup.one_hot_smoothed(jnp.array([1]), 3, 0.0), [[0, 1, 0]])


# --- mixing against timm -------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.8125, 0.3137, 0.0, 1.0])
def test_mixup_equals_timm(timm, monkeypatch, lam):
    images, labels = _batch(1, (6, 7, 9, 3))
    lam = np.float32(lam)
    mixed, targets, lam_out = apply_mix_jit(images, labels, _params(lam), RECIPE)
    timm_images, timm_targets = _timm_mix(timm, monkeypatch, images, labels, lam, False)
    np.testing.assert_allclose(mixed, timm_images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets, timm_targets, rtol=0, atol=1e-7)
    assert float(lam_out) == float(lam)


@pytest.mark.parametrize("lam, seed", [(0.7, 0), (0.3137, 1), (0.05, 2), (0.9, 3)])
def test_cutmix_equals_timm(timm, monkeypatch, lam, seed):
    images, labels = _batch(2, (6, 9, 12, 3))
    lam = np.float32(lam)
    timm_images, timm_targets = _timm_mix(timm, monkeypatch, images, labels, lam, True, seed)
    np.random.seed(seed)  # replay timm's centre draws: row, then column
    center_y, center_x = np.random.randint(0, 9), np.random.randint(0, 12)
    params = _params(lam, True, center_y, center_x)
    mixed, targets, lam_out = apply_mix_jit(images, labels, params, RECIPE)
    np.testing.assert_array_equal(mixed, timm_images)
    np.testing.assert_allclose(targets, timm_targets, rtol=0, atol=1e-6)
    # The corrected lam is the share of pixels each example kept.
    kept = np.mean(np.all(mixed == images, axis=-1), axis=(1, 2))
    np.testing.assert_allclose(kept, float(lam_out), atol=1e-6)


@pytest.mark.parametrize("height, width", [(224, 224), (7, 10), (16, 9), (3, 5)])
def test_cutmix_box_matches_timm_bit_for_bit(timm, height, width):
    """Same lam and same centre draws -> the same box and corrected lam as timm."""
    rng = np.random.default_rng(height * width)
    lams = np.concatenate([[0.0, 1.0, 0.75, 0.5, 0.19], rng.uniform(size=95)]).astype(np.float32)
    timm_boxes, timm_lams, centers = [], [], []
    for seed, lam in enumerate(lams):
        np.random.seed(seed)
        box, lam_corrected = timm.data.mixup.cutmix_bbox_and_lam(
            (1, 3, height, width), float(lam), correct_lam=True
        )
        np.random.seed(seed)
        centers.append((np.random.randint(0, height), np.random.randint(0, width)))
        timm_boxes.append(box)
        timm_lams.append(lam_corrected)
    center_y, center_x = np.array(centers, np.int32).T
    ours = jax.jit(mixup.cutmix_box, static_argnums=(1, 2))(lams, height, width, center_y, center_x)
    np.testing.assert_array_equal(np.stack(ours, axis=1), np.array(timm_boxes))
    # apply_mix's lam correction on the same boxes, through a tiny batch per lam.
    images, labels = _batch(3, (2, height, width, 1))
    correct = jax.jit(jax.vmap(lambda p: mixup.apply_mix(images, labels, p, RECIPE)[2]))
    ours_lams = correct(_params(lams, np.ones(lams.shape, bool), center_y, center_x))
    np.testing.assert_allclose(ours_lams, timm_lams, rtol=0, atol=1e-6)


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
    video, labels = _batch(4, (4, 3, 10, 12, 2))
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


def test_groups_pair_within_each_half(timm, monkeypatch):
    images, labels = _batch(5, (8, 7, 9, 3))
    lam = np.float32(0.6)
    mixed, targets, _ = apply_mix_jit(images, labels, _params(lam), RECIPE, groups=2)
    for half in (slice(0, 4), slice(4, 8)):
        timm_images, timm_targets = _timm_mix(
            timm, monkeypatch, images[half], labels[half], lam, False
        )
        np.testing.assert_allclose(mixed[half], timm_images, rtol=0, atol=1e-6)
        np.testing.assert_allclose(targets[half], timm_targets, rtol=0, atol=1e-7)
    params = _params(lam, True, center_y=3, center_x=4)
    pasted, _, _ = apply_mix_jit(images, labels, params, RECIPE, groups=2)
    partner = np.array([3, 2, 1, 0, 7, 6, 5, 4])
    inside = np.all(pasted != images, axis=(0, 3))
    assert inside.any()
    np.testing.assert_array_equal(pasted[:, inside], images[partner][:, inside])
    np.testing.assert_array_equal(pasted[:, ~inside], images[:, ~inside])


def test_jit_matches_eager_and_bad_inputs_raise():
    images, labels = _batch(6, (4, 8, 8, 3))
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


@pytest.mark.parametrize("axis_type", [AxisType.Auto, AxisType.Explicit])
def test_sharded_batch(axis_type):
    if jax.device_count() < 8:
        pytest.skip("needs the 8 simulated CPU devices of conftest.py")
    mesh = jax.make_mesh((4, 2), ("data", "fsdp"), axis_types=(axis_type,) * 2)
    images, labels = _batch(7, (16, 6, 8, 3))
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


def test_soft_target_cross_entropy_equals_timm(timm):
    import torch

    rng = np.random.default_rng(8)
    logits = (3 * rng.normal(size=(16, NUM_CLASSES))).astype(np.float32)
    targets = rng.dirichlet(np.ones(NUM_CLASSES), size=16).astype(np.float32)
    expected = timm.loss.SoftTargetCrossEntropy()(
        torch.from_numpy(logits), torch.from_numpy(targets)
    )
    ours = mixup.soft_target_cross_entropy(logits, targets)
    assert ours.dtype == jnp.float32
    np.testing.assert_allclose(ours, expected.item(), rtol=1e-6)


def test_cross_entropy_with_smoothing_equals_timm(timm):
    import torch

    rng = np.random.default_rng(9)
    logits = (3 * rng.normal(size=(16, NUM_CLASSES))).astype(np.float32)
    labels = rng.integers(0, NUM_CLASSES, size=16)
    logits_t, labels_t = torch.from_numpy(logits), torch.from_numpy(labels)
    smoothed = timm.loss.LabelSmoothingCrossEntropy(0.1)(logits_t, labels_t).item()
    plain = torch.nn.functional.cross_entropy(logits_t, labels_t).item()
    np.testing.assert_allclose(
        mixup.cross_entropy_with_smoothing(logits, labels, 0.1), smoothed, rtol=1e-6
    )
    np.testing.assert_allclose(mixup.cross_entropy_with_smoothing(logits, labels), plain, rtol=1e-6)


def test_soft_target_cross_entropy_bfloat16_is_float32():
    rng = np.random.default_rng(10)
    logits = jnp.asarray(30 * rng.normal(size=(8, 1000)), jnp.bfloat16)
    targets = mixup.one_hot_smoothed(jnp.arange(8), 1000, 0.1)
    loss, grad = jax.value_and_grad(mixup.soft_target_cross_entropy)(logits, targets)
    assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
    assert grad.dtype == jnp.bfloat16 and np.all(np.isfinite(np.asarray(grad, np.float32)))
    reference = mixup.soft_target_cross_entropy(logits.astype(jnp.float32), targets)
    assert float(loss) == float(reference)
