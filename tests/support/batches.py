"""Helpers shared by the input-pipeline tests."""

import numpy as np


def take(ds_or_it, n):
    it = iter(ds_or_it)
    return [next(it) for _ in range(n)]


def assert_batches_equal(a, b, required=("image", "mask")):
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.keys() == y.keys() and set(required) <= x.keys()
        for key in x:
            np.testing.assert_array_equal(x[key], y[key])
