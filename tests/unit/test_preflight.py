"""The checks before compiling, in process: the eval split of a fine-tuning run, and the first
batch read and rewound."""

import grain
import numpy as np
import pytest

from configs import in1k_vit_b_finetune
from maskfeat_jax import errors, preflight, tasks
from tests.support import tfds_fixture


def test_fine_tuning_checks_its_eval_split_too(tmp_path):
    tfds_fixture.write_imagenet2012(str(tmp_path / "tfds"), examples_per_split={"train": 8})
    config = in1k_vit_b_finetune.get_config()
    config.input.data_dir = str(tmp_path / "tfds")
    with pytest.raises(errors.DataError, match=r"has no split 'validation' \(it has \['train'\]\)"):
        preflight.describe_data(tasks.from_config(config), str(tmp_path))
    config.eval.split = "train"
    assert preflight.describe_data(tasks.from_config(config), str(tmp_path)) == [
        f"Data: imagenet2012 split 'train' ({tmp_path}/tfds): 8 records."
    ]


def test_first_batch_is_read_then_rewound():
    ds = grain.MapDataset.range(10).map(lambda i: {"x": np.full(2, i)}).batch(3)
    it = iter(ds.to_iter_dataset())
    first = preflight.read_first_batch(it)
    np.testing.assert_array_equal(next(it)["x"], first["x"])

    def broken(_):
        raise OSError("shard 3 is unreadable\nsecond line")

    it = iter(grain.MapDataset.range(4).map(broken).to_iter_dataset())
    with pytest.raises(errors.DataError) as e:
        preflight.read_first_batch(it)
    assert (
        str(e.value) == "the first training batch could not be read: OSError: shard 3 is unreadable"
    )
