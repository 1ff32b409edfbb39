"""RandAugment and random erasing checked against timm (the reference implementation).

timm draws from Python's ``random`` and ``np.random``; to compare whole pipelines, timm's
modules are pointed at shims that serve the same primitive draws (uniform, normal, integer
choice) from a numpy Generator, so identical draw order and semantics give bit-identical
outputs."""

import types

import numpy as np
import pytest
from PIL import Image

from maskfeat_jax.data import augment
from tests.support.augment_cases import ALL_OPS, FILL, SIGNED_OPS, box_mask

torch = pytest.importorskip("torch")
timm_auto_augment = pytest.importorskip("timm.data.auto_augment")
timm_random_erasing = pytest.importorskip("timm.data.random_erasing")


def timm_hparams(image_size=224):
    return dict(
        translate_const=int(image_size * 0.45),
        img_mean=FILL,
        interpolation=Image.Resampling.BICUBIC,
    )


class PythonRandomFromGenerator:
    """Stands in for Python's ``random`` module, serving draws from a numpy Generator."""

    def __init__(self, rng: np.random.Generator):
        self.rng = rng

    def random(self):
        return float(self.rng.random())

    def gauss(self, mu, sigma):
        return float(self.rng.normal(mu, sigma))

    def uniform(self, low, high):
        return float(self.rng.uniform(low, high))

    def randint(self, low, high):
        return int(self.rng.integers(low, high + 1))


def numpy_choice_from_generator(rng):
    def choice(options, size, replace=True, p=None):
        assert replace and p is None
        return [options[i] for i in rng.integers(0, len(options), size=size)]

    return types.SimpleNamespace(random=types.SimpleNamespace(choice=choice))


def posterizes_to_zero_bits(ops):
    """Current PIL rejects posterize(bits=0), so timm raises on such draws; skip them."""
    return any(
        op.name.startswith("Posterize") and augment._op_argument(op.name, op.magnitude, False) < 1
        for op in ops
    )


# --------------------------------------------------------------------------- single ops


@pytest.mark.parametrize("name", ALL_OPS)
def test_each_op_matches_timm(name, photo, monkeypatch):
    ours = augment.RandAugment("rand-m9", image_size=224)
    pil_photo = Image.fromarray(photo)
    signs = (False, True) if name in SIGNED_OPS else (False,)
    for magnitude in (0.0, 3.0, 5.5, 9.0, 10.0):
        for negate in signs:
            monkeypatch.setattr(
                timm_auto_augment, "_randomly_negate", lambda v, n=negate: -v if n else v
            )
            timm_op = timm_auto_augment.AugmentOp(
                name, prob=1.0, magnitude=magnitude, hparams=timm_hparams()
            )
            result = ours.apply(photo, [augment.SampledOp(name, magnitude, negate)])
            assert result.dtype == np.uint8 and result.shape == photo.shape
            try:
                expected = np.asarray(timm_op(pil_photo))
            except ValueError:
                # PIL now refuses posterize(bits=0); timm's intent (and older PIL) is all black.
                assert name.startswith("Posterize")
                np.testing.assert_array_equal(result, 0)
                continue
            np.testing.assert_array_equal(
                result, expected, err_msg=f"{name} m={magnitude} neg={negate}"
            )


# --------------------------------------------------------------------------- full RandAugment


@pytest.mark.parametrize(
    "spec",
    [
        "rand-m9-mstd0.5-inc1",
        "rand-m7-mstd0.5-inc1",
        "rand-m9-n3-mstd0.5",
        "rand-m6-mstd101-inc1",
        "rand-m12-mmax15-mstd1-n4-inc1",
        "rand-m8-p0.8-inc1",
        "rand-m9-p1.0-n1-inc1",
    ],
)
def test_randaugment_matches_timm_with_shared_draws(spec, photo, monkeypatch):
    ours = augment.RandAugment(spec, image_size=224)
    theirs = timm_auto_augment.rand_augment_transform(spec, timm_hparams())
    pil_photo = Image.fromarray(photo)
    compared = 0
    for seed in range(12):
        if posterizes_to_zero_bits(ours.sample(np.random.default_rng(seed))):
            continue
        result = ours(photo, np.random.default_rng(seed))
        shared_rng = np.random.default_rng(seed)
        monkeypatch.setattr(timm_auto_augment, "random", PythonRandomFromGenerator(shared_rng))
        monkeypatch.setattr(timm_auto_augment, "np", numpy_choice_from_generator(shared_rng))
        expected = np.asarray(theirs(pil_photo))
        monkeypatch.undo()
        np.testing.assert_array_equal(result, expected, err_msg=f"{spec} seed {seed}")
        compared += 1
    assert compared >= 8


# --------------------------------------------------------------------------- spec parsing


@pytest.mark.parametrize(
    "spec",
    ["rand-m9-mstd0.5-inc1", "rand-m7-mstd0.5-inc1", "rand-m9-n3-mstd0.5", "rand-n1-p0.7-mmax20"],
)
def test_spec_parsing_matches_timm(spec):
    config = augment.parse_rand_augment_spec(spec)
    theirs = timm_auto_augment.rand_augment_transform(spec, timm_hparams())
    assert config.num_layers == theirs.num_layers
    names = tuple(op.name for op in theirs.ops)
    assert names == (augment.INCREASING_OPS if config.increasing else augment.RAND_OPS)
    for op in theirs.ops:
        assert (op.magnitude, op.prob) == (config.magnitude, config.prob)
        assert (op.magnitude_std, op.magnitude_max) == (config.magnitude_std, config.magnitude_max)


# --------------------------------------------------------------------------- erase boxes


@pytest.mark.parametrize("max_count", [1, 3])
def test_erase_boxes_match_timm_with_shared_draws(max_count, monkeypatch):
    height, width = 48, 40
    theirs = timm_random_erasing.RandomErasing(
        probability=0.6, mode="const", max_count=max_count, device="cpu"
    )
    for seed in range(40):
        boxes = augment.sample_erase_boxes(
            np.random.default_rng(seed), height, width, probability=0.6, max_count=max_count
        )
        monkeypatch.setattr(
            timm_random_erasing, "random", PythonRandomFromGenerator(np.random.default_rng(seed))
        )
        erased = theirs(torch.ones(3, height, width))  # 'const' mode writes zeros
        np.testing.assert_array_equal(box_mask(boxes, height, width), erased[0].numpy() == 0)


# --------------------------------------------------------------------------- erase (device)
