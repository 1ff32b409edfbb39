"""Default offline dataset: real photos that ship inside pinned wheels.

Nothing is downloaded. The files are read straight from the installed
packages (the "legacy" images that scikit-image 0.26.0 still bundles in its
wheel, and scikit-learn 1.9.1's sample images), decoded with Pillow and
converted to RGB uint8 ``[H, W, 3]``; grayscale photos are replicated to three
channels. Files that scikit-image would fetch over the network are not used.

The order of ``PHOTO_NAMES`` is fixed, so indices are stable. A deterministic
split keeps ``VALIDATION_NAMES`` out of training (for validation pictures);
``TRAIN_NAMES`` is everything else in ``PHOTO_NAMES`` order.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os

import numpy as np
from PIL import Image

__all__ = [
    "PHOTO_NAMES",
    "TRAIN_NAMES",
    "VALIDATION_NAMES",
    "EmbeddedDataError",
    "load_photo",
    "load_photos",
    "load_split",
    "photo_path",
    "split_names",
]

# name -> (distribution, module, path inside the module's directory).
_SKIMAGE = ("scikit-image", "skimage", "data")
_SKLEARN = ("scikit-learn", "sklearn", os.path.join("datasets", "images"))
_PINNED = {"scikit-image": "0.26.0", "scikit-learn": "1.9.1"}

_FILES = {
    # RGB photos bundled with scikit-image.
    "astronaut": (_SKIMAGE, "astronaut.png"),
    "chelsea": (_SKIMAGE, "chelsea.png"),
    "coffee": (_SKIMAGE, "coffee.png"),
    "rocket": (_SKIMAGE, "rocket.jpg"),
    "hubble_deep_field": (_SKIMAGE, "hubble_deep_field.jpg"),
    "immunohistochemistry": (_SKIMAGE, "ihc.png"),
    "retina": (_SKIMAGE, "retina.jpg"),
    "motorcycle_left": (_SKIMAGE, "motorcycle_left.png"),
    "motorcycle_right": (_SKIMAGE, "motorcycle_right.png"),
    # Grayscale photos bundled with scikit-image (made RGB).
    "camera": (_SKIMAGE, "camera.png"),
    "brick": (_SKIMAGE, "brick.png"),
    "grass": (_SKIMAGE, "grass.png"),
    "gravel": (_SKIMAGE, "gravel.png"),
    "moon": (_SKIMAGE, "moon.png"),
    "coins": (_SKIMAGE, "coins.png"),
    "cell": (_SKIMAGE, "cell.png"),
    "clock": (_SKIMAGE, "clock_motion.png"),
    "page": (_SKIMAGE, "page.png"),
    "text": (_SKIMAGE, "text.png"),
    # scikit-learn sample images.
    "china": (_SKLEARN, "china.jpg"),
    "flower": (_SKLEARN, "flower.jpg"),
}

PHOTO_NAMES: tuple[str, ...] = tuple(_FILES)
# One photo per source/kind (RGB, grayscale, scikit-learn) is held out.
VALIDATION_NAMES: tuple[str, ...] = ("chelsea", "coins", "flower")
TRAIN_NAMES: tuple[str, ...] = tuple(n for n in PHOTO_NAMES if n not in VALIDATION_NAMES)


class EmbeddedDataError(FileNotFoundError):
    """A bundled photo is missing from its (pinned) package."""


def _installed_version(dist: str) -> str:
    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def photo_path(name: str) -> str:
    """Absolute path of a bundled photo inside its installed package."""
    if name not in _FILES:
        raise KeyError(f"unknown embedded photo {name!r}; available: {list(PHOTO_NAMES)}")
    (dist, module, subdir), filename = _FILES[name]
    pin = f"{dist}=={_PINNED[dist]}"
    # find_spec locates the package without importing it.
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise EmbeddedDataError(
            f"embedded photo {name!r} needs the package {pin}, which is not "
            f"installed; run `pip install {pin}` (see requirements.txt)"
        )
    path = os.path.join(spec.submodule_search_locations[0], subdir, filename)
    if not os.path.isfile(path):
        raise EmbeddedDataError(
            f"embedded photo {name!r} is missing: expected {path} inside "
            f"{dist} (installed: {_installed_version(dist)}). It ships in the "
            f"{pin} wheel; install that exact version (`pip install {pin}`), "
            "newer releases may drop bundled data"
        )
    return path


@functools.cache
def _load_cached(name: str) -> np.ndarray:
    with Image.open(photo_path(name)) as img:
        array = np.asarray(img.convert("RGB"), dtype=np.uint8)
    array.setflags(write=False)  # Shared by every caller via the cache.
    return array


def load_photo(name: str) -> np.ndarray:
    """One bundled photo as read-only uint8 ``[H, W, 3]`` (cached)."""
    return _load_cached(name)


def split_names(split: str = "all") -> tuple[str, ...]:
    """Photo names of ``split``: 'all', 'train' or 'validation'."""
    splits = {"all": PHOTO_NAMES, "train": TRAIN_NAMES, "validation": VALIDATION_NAMES}
    if split not in splits:
        raise ValueError(f"unknown split {split!r}; use one of {sorted(splits)}")
    return splits[split]


def load_photos(names: tuple[str, ...] | None = None) -> list[np.ndarray]:
    """Photos in ``names`` order (default ``PHOTO_NAMES``), uint8 [H, W, 3]."""
    names = PHOTO_NAMES if names is None else tuple(names)
    return [load_photo(n) for n in names]


def load_split(split: str = "train") -> list[np.ndarray]:
    """Photos of a deterministic split: 'train', 'validation' or 'all'."""
    return load_photos(split_names(split))
