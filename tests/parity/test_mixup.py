"""Mixup/CutMix and the losses checked against timm: its ``Mixup`` in mode 'batch',
``mixup_target``, ``cutmix_bbox_and_lam`` and the cross-entropy losses."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from maskfeat_jax import mixup
from maskfeat_jax.mixup import MixParams, MixupConfig
from tests.support.mixup_cases import (
    CUTMIX_ONLY,
    MIXUP_ONLY,
    NUM_CLASSES,
    RECIPE,
    batch,
    mix_batch_jit,
)

NO_MIX = MixupConfig(num_classes=NUM_CLASSES, mixup_alpha=0.0, cutmix_alpha=0.0)

apply_mix_jit = jax.jit(mixup.apply_mix, static_argnames=("cfg", "groups"))


@pytest.fixture(scope="module")
def timm():
    pytest.importorskip("torch")
    # Importing the submodules makes them attributes of the package.
    pytest.importorskip("timm.data.mixup")
    pytest.importorskip("timm.loss")
    return pytest.importorskip("timm")


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

    images, labels = batch(0, (8, 12, 10, 3))
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


# --- mixing against timm -------------------------------------------------------------------


@pytest.mark.parametrize("lam", [0.8125, 0.3137, 0.0, 1.0])
def test_mixup_equals_timm(timm, monkeypatch, lam):
    images, labels = batch(1, (6, 7, 9, 3))
    lam = np.float32(lam)
    mixed, targets, lam_out = apply_mix_jit(images, labels, _params(lam), RECIPE)
    timm_images, timm_targets = _timm_mix(timm, monkeypatch, images, labels, lam, False)
    np.testing.assert_allclose(mixed, timm_images, rtol=0, atol=1e-6)
    np.testing.assert_allclose(targets, timm_targets, rtol=0, atol=1e-7)
    assert float(lam_out) == float(lam)


@pytest.mark.parametrize("lam, seed", [(0.7, 0), (0.3137, 1), (0.05, 2), (0.9, 3)])
def test_cutmix_equals_timm(timm, monkeypatch, lam, seed):
    images, labels = batch(2, (6, 9, 12, 3))
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
    images, labels = batch(3, (2, height, width, 1))
    correct = jax.jit(jax.vmap(lambda p: mixup.apply_mix(images, labels, p, RECIPE)[2]))
    ours_lams = correct(_params(lams, np.ones(lams.shape, bool), center_y, center_x))
    np.testing.assert_allclose(ours_lams, timm_lams, rtol=0, atol=1e-6)


# --- random draws --------------------------------------------------------------------------


# --- video, groups, jit, sharding ----------------------------------------------------------


def test_groups_pair_within_each_half(timm, monkeypatch):
    images, labels = batch(5, (8, 7, 9, 3))
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
