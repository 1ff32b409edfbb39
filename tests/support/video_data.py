"""Video data for the tests: the embedded videos with unusable records appended, records
read back from a prepared split, and the prepare_video command in a child process."""

import io
import os
import subprocess
import sys

import av
import numpy as np
import pytest

from maskfeat_jax.data import embedded_video, video_records
from tests.support.runs import ROOT

EMBEDDED = embedded_video.EmbeddedVideos(
    videos_per_photo=1, num_frames=24, height=48, width=64, gop=8
)
GOOD = 21  # one video per bundled photo


def frames_of(data: bytes) -> np.ndarray:
    with av.open(io.BytesIO(data)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


def unusable_records(good: dict) -> dict[str, bytes]:
    """Two unreadable records and a readable 3-frame one, made from a good record."""
    short = embedded_video.encode_h264(frames_of(good["video"])[:3], 30)
    return {
        "cut.mp4": video_records.encode_record(
            "cut.mp4", 0, good["video"][: len(good["video"]) // 3], good
        ),
        "text.mp4": video_records.encode_record("text.mp4", 1, b"not a video " * 30, good),
        "short.mp4": video_records.encode_record(
            "short.mp4", 2, short, video_records.probe_video(short)
        ),
    }


def add_records(data_dir: str, split: str, records: list[bytes]) -> None:
    """Appends a shard of ``records`` to ``split`` (after its existing records)."""
    info = video_records.read_info(data_dir, split)
    file = f"{split}.extra.array_record"
    with video_records.ShardWriter(os.path.join(data_dir, file)) as writer:
        for record in records:
            writer.write(record)
    shards = [*info["shards"], {"file": file, "num_records": writer.num_records}]
    video_records.write_info(data_dir, split, shards, info["classes"])


def video_dataset(root, names=("cut.mp4", "text.mp4", "short.mp4")) -> str:
    """The 21 embedded videos per split plus the ``names`` of ``unusable_records`` after
    them (train records 21, 22, ...; the same in validation)."""
    data_dir = embedded_video.ensure(str(root / "videos"), EMBEDDED, workers=1)
    for split in ("train", "validation"):
        good = video_records.decode_record(video_records.VideoRecords(data_dir, split)[0])
        extra = unusable_records(good)
        add_records(data_dir, split, [extra[n] for n in names])
    return data_dir


def records(out, split):
    source = video_records.VideoRecords(out, split)
    return [video_records.decode_record(source[i]) for i in range(len(source))]


def run_prepare_video(*args):
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.data.prepare_video", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bad_video_dir(tmp_path_factory):
    """A records folder of the embedded videos with ``unusable_records`` after them."""
    return video_dataset(tmp_path_factory.mktemp("bad_inputs"))
