"""Class folders of short rendered videos for prepare_video, and checks of its records."""

import os

import pytest

from maskfeat_jax.data.embedded_video import EmbeddedVideos, encode_h264, render_video

SETTINGS = EmbeddedVideos(num_frames=40, height=64, width=80, gop=16)


# (class, file) -> which photo's path it shows; the .m4v checks other extensions are found.
LAYOUT = {
    ("rocket", "r0.mp4"): ("rocket", 0),
    ("rocket", "r1.mp4"): ("rocket", 1),
    ("chelsea", "c0.mp4"): ("chelsea", 0),
    ("chelsea", "c1.m4v"): ("chelsea", 1),
    ("coffee", "f0.mp4"): ("coffee", 0),
    ("coffee", "f1.mp4"): ("coffee", 1),
    ("coffee", "f2.mp4"): ("coffee", 2),
}


CLASSES = ["chelsea", "coffee", "rocket"]


def check_records(found, expected):
    """``expected``: id -> (label, bytes)."""
    assert sorted(r["id"] for r in found) == sorted(expected)
    for record in found:
        label, data = expected[record["id"]]
        assert record["label"] == label
        assert record["video"] == data
        assert (record["num_frames"], record["fps"]) == (SETTINGS.num_frames, SETTINGS.fps)
        assert (record["height"], record["width"]) == (SETTINGS.height, SETTINGS.width)


def expected_from_folders(encoded):
    return {
        os.path.join(label, file): (CLASSES.index(label), data)
        for (label, file), data in encoded.items()
    }


@pytest.fixture(scope="module")
def encoded():
    """(class, file) -> mp4 bytes, made once."""
    return {
        key: encode_h264(render_video(name, "train", k, SETTINGS), SETTINGS.fps, SETTINGS.gop)
        for key, (name, k) in LAYOUT.items()
    }


@pytest.fixture
def class_folders(tmp_path, encoded):
    """``videos/<class>/<file>`` plus a non-video file that must be ignored."""
    root = tmp_path / "videos"
    for (label, file), data in encoded.items():
        (root / label).mkdir(parents=True, exist_ok=True)
        (root / label / file).write_bytes(data)
    (root / "coffee" / "notes.txt").write_text("not a video")
    return str(root)
