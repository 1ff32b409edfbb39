"""A tiny, real imagenet2012 tfds build on disk, written offline and without TensorFlow.

``write_imagenet2012(data_dir)`` prepares ``data_dir/imagenet2012/<version>/`` with tfds's own
builder machinery, so that an unmodified ``tfds.data_source("imagenet2012", split=...,
data_dir=data_dir)`` in any process reads it like the real ImageNet build: the same
dataset_info.json and features.json (image jpeg, 1000-class label, file_name), and one
ArrayRecord shard per split holding serialized ``tf.train.Example`` records.

The examples are crops of the colour photos bundled with scikit-image, JPEG-encoded, with
labels spread over the 1000 classes; the real train/validation archives are not needed.
"""

from __future__ import annotations

import functools
import inspect
import io
import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import tensorflow_datasets as tfds
from etils import epath
from PIL import Image
from tensorflow_datasets.datasets.imagenet2012 import imagenet2012_dataset_builder as imagenet
from tensorflow_datasets.datasets.imagenet2012 import imagenet_common

__all__ = [
    "JPEG_QUALITY",
    "PHOTOS",
    "SYNSETS",
    "example_file_name",
    "example_image",
    "example_label",
    "write_imagenet2012",
]

# Colour photos that scikit-image ships in its wheel (read without a download).
PHOTOS: tuple[str, ...] = (
    "astronaut",
    "coffee",
    "chelsea",
    "rocket",
    "hubble_deep_field",
    "immunohistochemistry",
    "retina",
)
# Most ImageNet JPEGs are saved at quality 90-96.
JPEG_QUALITY = 90
# The 1000 ImageNet synsets in label order (the ClassLabel's names).
SYNSETS: tuple[str, ...] = tuple(
    tfds.features.ClassLabel(names_file=imagenet_common.label_names_file()).names
)


@functools.lru_cache(maxsize=None)
def _photo(name: str) -> np.ndarray:
    import skimage.data  # only the writer and the tests that compare pixels need the photos

    return getattr(skimage.data, name)()


def example_image(
    split: str, index: int, image_size: tuple[int, int] = (64, 80), seed: int = 0
) -> np.ndarray:
    """The uint8 [H, W, 3] picture behind example ``index`` of ``split`` (before JPEG).

    A box covering 30-100% of one scikit-image photo, of about the target's aspect, resized
    to ``image_size`` (H, W). Each example has its own generator, so tests can recompute
    any one of them.
    """
    photo = _photo(PHOTOS[index % len(PHOTOS)])
    rng = np.random.default_rng((seed, zlib.crc32(split.encode()), index))
    height, width = photo.shape[:2]
    area = rng.uniform(0.3, 1.0) * height * width
    aspect = image_size[1] / image_size[0] * np.exp(rng.uniform(-0.2, 0.2))
    h = int(min(height, round(np.sqrt(area / aspect))))
    w = int(min(width, round(np.sqrt(area * aspect))))
    top = int(rng.integers(0, height - h + 1))
    left = int(rng.integers(0, width - w + 1))
    crop = Image.fromarray(photo[top : top + h, left : left + w])
    return np.asarray(crop.resize((image_size[1], image_size[0]), Image.Resampling.BICUBIC))


def example_label(index: int, num_classes: int = 1000) -> int:
    """Example ``index``'s label: a prime stride, so even a few examples cover many classes."""
    return index * 7919 % num_classes


def example_file_name(split: str, index: int, num_classes: int = 1000) -> str:
    """ImageNet's naming: ``<synset>_<n>.JPEG`` in train, ``ILSVRC2012_val_<n>.JPEG`` else."""
    if split == "train":
        return f"{SYNSETS[example_label(index, num_classes)]}_{index}.JPEG"
    return f"ILSVRC2012_{'val' if split == 'validation' else split}_{index + 1:08d}.JPEG"


def _jpeg(image: np.ndarray, quality: int = JPEG_QUALITY) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


class _TinyImagenet2012(imagenet.Builder, skip_registration=True):
    """The registered Imagenet2012 builder (name, version, features, metadata), fed from memory.

    Registration is skipped so this class does not shadow the real builder, which is what
    ``tfds.data_source`` finds when it reads the build back.
    """

    name = "imagenet2012"
    # dataset_info.json records the builder's module, and tfds reads the description and
    # citation from that module's package: both are the real builder's.
    __module__ = imagenet.__name__
    # Given, not looked up: the lookup uses `importlib_resources`, which tfds 4.9.10 imports
    # but does not require on Python >= 3.9 (so it is missing here).
    code_path = epath.Path(inspect.getfile(imagenet.Builder))

    def __init__(self, *, split_examples: Mapping[str, Sequence[dict]], **kwargs):
        self._split_examples = split_examples
        super().__init__(**kwargs)

    def _split_generators(self, dl_manager):
        # The real builder reads tar archives from the manual dir (through tf.io.gfile).
        del dl_manager
        return {split: self._generate_examples(split) for split in self._split_examples}

    def _generate_examples(self, split):
        for example in self._split_examples[split]:
            yield example["file_name"], example


def write_imagenet2012(
    data_dir,
    examples_per_split: Mapping[str, int] = {"train": 32, "validation": 16},  # noqa: B006
    image_size: tuple[int, int] = (64, 80),
    num_classes: int = 1000,
    seed: int = 0,
) -> str:
    """Prepares a small imagenet2012 build in ``data_dir``; returns its version directory.

    Every split gets ``examples_per_split[split]`` JPEG images (quality ``JPEG_QUALITY``) of
    ``image_size`` (H, W) cut from the scikit-image photos (``example_image``), labels
    ``example_label`` (the first ``num_classes`` of the real 1000-class ClassLabel) and
    ImageNet-style file names (``example_file_name``). The same arguments give the same bytes;
    tfds stores each split's examples in the order of its hashed file names.
    """
    if not 1 <= num_classes <= 1000:
        raise ValueError(f"num_classes must be in [1, 1000], got {num_classes}")
    split_examples = {
        split: [
            {
                # Bytes are stored as they are, like the real builder's JPEG files (a numpy
                # array would be encoded with tf.image.encode_jpeg).
                "image": _jpeg(example_image(split, i, image_size, seed)),
                "label": example_label(i, num_classes),
                "file_name": example_file_name(split, i, num_classes),
            }
            for i in range(count)
        ]
        for split, count in examples_per_split.items()
    }
    builder = _TinyImagenet2012(split_examples=split_examples, data_dir=str(data_dir))
    if builder.is_prepared():  # tfds would keep the old build and ignore these arguments
        raise FileExistsError(f"{builder.data_dir} already holds an imagenet2012 build")
    builder.download_and_prepare(
        file_format="array_record",
        download_config=tfds.download.DownloadConfig(
            # Statistics are computed with tf.data; the splits' example counts come anyway.
            compute_stats=tfds.download.ComputeStatsMode.SKIP,
        ),
    )
    return str(builder.data_dir)
