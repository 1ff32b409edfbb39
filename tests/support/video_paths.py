"""Short and long clips to lay out as awkward folders for prepare_video."""

import dataclasses
import os

import pytest

from maskfeat_jax.data.embedded_video import encode_h264, render_video
from tests.support.video_folders import SETTINGS

RUN = dict(workers=1, progress=False)


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


@pytest.fixture(scope="module")
def clips():
    """Two 40-frame videos (1.3 s, shorter than the default clip) and an 80-frame one."""
    long = dataclasses.replace(SETTINGS, num_frames=80)
    return dict(
        short0=encode_h264(render_video("rocket", "train", 0, SETTINGS), 30, 16),
        short1=encode_h264(render_video("coffee", "train", 0, SETTINGS), 30, 16),
        long=encode_h264(render_video("chelsea", "train", 0, long), 30, 16),
    )
