"""scikit-learn's handwritten digits as a small labelled image dataset (ships in the wheel).

1,797 8x8 scans with 17 grey levels (UCI optdigits test set), ten classes. Each is scaled to
``image_size`` with bicubic interpolation (so gradients are smooth enough for HOG) and
repeated over three channels. A fixed, stratified split holds out 30% of every class as
``test``; ``train`` is the rest. ``train_<n>`` keeps only the first n images of every class
of ``train`` (a low-label fine-tuning set), in a fixed random order.
"""

from __future__ import annotations

import functools
import re

import numpy as np
from PIL import Image

NUM_CLASSES = 10
TEST_FRACTION = 0.3
_SPLIT_SEED = 0


@functools.lru_cache(maxsize=4)
def _scaled(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)
    scaled = np.stack(
        [
            np.asarray(
                Image.fromarray(im).resize((image_size, image_size), Image.Resampling.BICUBIC)
            )
            for im in images
        ]
    )
    return np.repeat(scaled[..., None], 3, axis=-1), digits.target.astype(np.int32)


def split_indices(labels: np.ndarray, split: str) -> np.ndarray:
    """Indices of ``split`` ('train', 'test', 'all' or 'train_<n per class>')."""
    rng = np.random.default_rng(_SPLIT_SEED)
    train, test = [], []
    for c in range(NUM_CLASSES):
        members = rng.permutation(np.flatnonzero(labels == c))
        n_test = int(round(len(members) * TEST_FRACTION))
        test.append(members[:n_test])
        train.append(members[n_test:])
    if split == "all":
        return np.arange(len(labels))
    if split == "test":
        return np.sort(np.concatenate(test))
    if split == "train":
        return np.sort(np.concatenate(train))
    if m := re.fullmatch(r"train_(\d+)", split):
        per_class = int(m.group(1))
        if not 0 < per_class <= min(len(t) for t in train):
            raise ValueError(
                f"digits split {split!r}: per-class count must be in 1.."
                f"{min(len(t) for t in train)}"
            )
        return np.sort(np.concatenate([t[:per_class] for t in train]))
    raise ValueError(
        f"unknown digits split {split!r}; use 'train', 'test', 'all' or 'train_<n per class>'."
    )


def load_split(split: str, image_size: int = 32) -> list[dict[str, np.ndarray]]:
    """Records ``{"image": uint8 [S, S, 3], "label": int32}`` of one split."""
    images, labels = _scaled(int(image_size))
    return [{"image": images[i], "label": labels[i]} for i in split_indices(labels, split).tolist()]
