"""The RandAugment ops, fill values and photos the augmentation tests share."""

import numpy as np
import pytest
from PIL import Image

from maskfeat_jax.data import augment

skimage_data = pytest.importorskip("skimage.data")


HEIGHT, WIDTH = 64, 80


FILL = (124, 116, 104)  # round(255 * ImageNet mean)


ALL_OPS = sorted(set(augment.RAND_OPS) | set(augment.INCREASING_OPS))


SIGNED_OPS = {
    "Rotate",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
}


def box_mask(boxes, height, width):
    mask = np.zeros((height, width), dtype=bool)
    for top, left, h, w in boxes:
        mask[top : top + h, left : left + w] = True
    return mask


@pytest.fixture(scope="module")
def photo() -> np.ndarray:
    image = Image.fromarray(skimage_data.astronaut()).resize((WIDTH, HEIGHT), Image.BICUBIC)
    # Squeeze the range to [20, 224] so that AutoContrast has something to do.
    return (np.asarray(image) * 0.8 + 20).astype(np.uint8)
