"""Mixup/CutMix settings and batches the mixup tests share."""

import jax
import numpy as np

from maskfeat_jax import mixup
from maskfeat_jax.mixup import MixupConfig

NUM_CLASSES = 10


MIXUP_ONLY = MixupConfig(num_classes=NUM_CLASSES, cutmix_alpha=0.0)


CUTMIX_ONLY = MixupConfig(num_classes=NUM_CLASSES, mixup_alpha=0.0)


RECIPE = MixupConfig(num_classes=NUM_CLASSES)


mix_batch_jit = jax.jit(mixup.mix_batch, static_argnames=("cfg", "groups"))


def batch(seed, shape, num_classes=NUM_CLASSES):
    """Random float images (every pixel differs from its partner's) and int32 labels."""
    rng = np.random.default_rng(seed)
    images = rng.normal(size=shape).astype(np.float32)
    labels = rng.integers(0, num_classes, size=shape[0]).astype(np.int32)
    return images, labels
