"""The tiny imagenet2012 build of tests/tfds_fixture.py reads back like real ImageNet: through
plain tfds in a fresh process, and through the project's own `sources.open_image_source`."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from maskfeat_jax import defaults
from maskfeat_jax.data import images, sources
from tests.support.tfds_fixture import SYNSETS, example_image, example_label, write_imagenet2012

SPLITS = {"train": 32, "validation": 16}
SIZE = (64, 80)

# Run in a fresh interpreter: only tfds, nothing of the writer is imported or patched.
READER = """
import json, sys
import numpy as np
import tensorflow_datasets as tfds

data_dir, out = sys.argv[1], sys.argv[2]
result = {}
for split in ("train", "validation"):
    source = tfds.data_source("imagenet2012", split=split, data_dir=data_dir)
    item = source[3]
    np.save(f"{out}/{split}.npy", item["image"])
    result[split] = {
        "len": len(source),
        "keys": sorted(item),
        "dtype": str(item["image"].dtype),
        "label": int(item["label"]),
        "file_name": item["file_name"].decode(),
    }
print(json.dumps(result))
"""


@pytest.fixture(scope="module")
def imagenet_dir(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("tfds")
    version_dir = write_imagenet2012(data_dir, SPLITS, image_size=SIZE)
    assert version_dir == str(data_dir / "imagenet2012" / "5.1.0")
    return str(data_dir)


def example_index(split: str, file_name: str) -> int:
    """The writer's example index, from the ImageNet-style file name."""
    if split == "train":
        synset, index = re.fullmatch(r"(n\d{8})_(\d+)\.JPEG", file_name).groups()
        assert synset == SYNSETS[example_label(int(index))]
        return int(index)
    return int(re.fullmatch(r"ILSVRC2012_val_(\d{8})\.JPEG", file_name).group(1)) - 1


def check_picture(image: np.ndarray, split: str, index: int):
    """The decoded JPEG is example ``index``'s photo crop (and no other example's)."""
    assert image.dtype == np.uint8 and image.shape == (*SIZE, 3)
    error = np.abs(image.astype(np.float32) - example_image(split, index, SIZE)).mean()
    other = example_image(split, index + 1, SIZE)
    assert error < 8, error  # JPEG quality 90 on these small crops: 2-6 levels
    assert np.abs(image.astype(np.float32) - other).mean() > 4 * error


def test_tfds_reads_the_build_in_a_fresh_process(imagenet_dir, tmp_path):
    proc = subprocess.run(
        [sys.executable, "-c", READER, imagenet_dir, str(tmp_path)],
        env=dict(os.environ),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for split, count in SPLITS.items():
        got = result[split]
        assert got["len"] == count
        assert got["keys"] == ["file_name", "image", "label"]
        index = example_index(split, got["file_name"])
        assert got["label"] == example_label(index)
        check_picture(np.load(tmp_path / f"{split}.npy"), split, index)


def test_records_are_tf_examples_with_jpeg_bytes(imagenet_dir):
    # What TensorFlow's own parser would see: tf.train.Example protos (tfds ships the same
    # message definitions), the image as the JPEG file's bytes.
    from array_record.python.array_record_module import ArrayRecordReader
    from tensorflow_datasets.proto import tf_example_pb2

    shard = os.path.join(
        imagenet_dir, "imagenet2012", "5.1.0", "imagenet2012-train.array_record-00000-of-00001"
    )
    reader = ArrayRecordReader(shard)
    try:
        assert reader.num_records() == SPLITS["train"]
        example = tf_example_pb2.Example.FromString(reader.read([0])[0])
    finally:
        reader.close()
    features = example.features.feature
    assert sorted(features) == ["file_name", "image", "label"]
    (jpeg,) = features["image"].bytes_list.value
    assert jpeg[:3] == b"\xff\xd8\xff"  # JPEG start-of-image marker
    (label,) = features["label"].int64_list.value
    (file_name,) = features["file_name"].bytes_list.value
    assert label == example_label(example_index("train", file_name.decode()))


def test_open_source_reads_the_build(imagenet_dir):
    config = defaults.pretrain_config()
    config.input.dataset = "imagenet2012"
    config.input.data_dir = imagenet_dir
    train = sources.open_image_source(config, "train")
    assert len(train) == SPLITS["train"]
    assert len(sources.open_image_source(config, "validation")) == SPLITS["validation"]
    labels = set()
    for i in (0, 17, 31):
        record = images.read_image(train, i)
        index = example_index("train", record["file_name"].decode())
        assert int(record["label"]) == example_label(index)
        check_picture(record["image"], "train", index)
        labels.add(int(record["label"]))
    assert len(labels) == 3
