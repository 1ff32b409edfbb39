"""Video datasets stored as ArrayRecord shards: one record per video, the encoded file as is.

A dataset directory holds, per split, shards named like tfds's
(``train.array_record-00000-of-00004``) and one ``train.json`` that lists them::

    {"format": "maskfeat-video-records/1", "split": "train",
     "shards": [{"file": "train.array_record-00000-of-00004", "num_records": 311}, ...],
     "num_records": 1240, "classes": ["abseiling", ...],
     "failures": [{"path": "x/broken.mp4", "reason": "no video stream"}, ...]}

Each record is a msgpack map: ``id`` (the source path or name), ``label`` (int, -1 if
unlabelled), ``video`` (the file's bytes: mp4, webm, ... exactly as downloaded) and what a
sampler needs without opening the file: ``num_frames`` (counted from the packets),
``fps``, ``height``, ``width``. Records are written with ``group_size:1`` so grain reads
any one without decompressing its neighbours. ``probe_video`` checks a file while it is
stored (container, a video stream, a first frame that decodes); what goes wrong later
(truncated data) is caught when clips are decoded.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

__all__ = [
    "FORMAT",
    "BadVideo",
    "DatasetInfoError",
    "ShardWriter",
    "VideoRecords",
    "decode_record",
    "encode_record",
    "info_path",
    "probe_video",
    "read_info",
    "shard_name",
    "write_info",
]

FORMAT = "maskfeat-video-records/1"
_RECORD_KEYS = ("id", "label", "video", "num_frames", "fps", "height", "width")


class BadVideo(ValueError):
    """A video that cannot be used: not a video, corrupt, truncated or too short."""


class DatasetInfoError(FileNotFoundError):
    """A dataset directory without (readable) shards for the split."""


def probe_video(data: bytes) -> dict[str, Any]:
    """``{num_frames, fps, height, width}`` of an encoded video, or ``BadVideo`` saying why.

    Frames are counted from the demuxed packets (no decoding); the first frame is decoded
    to prove the codec can read the stream.
    """
    import av  # Decoding needs PyAV; reading records does not.

    if not data:
        raise BadVideo("empty file")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            if not rate or float(rate) <= 0:
                raise BadVideo("no frame rate")
            num_frames = sum(1 for packet in container.demux(stream) if packet.size)
            if num_frames < 1:
                raise BadVideo("no frames")
            container.seek(0, stream=stream)
            first = next(container.decode(stream), None)
            if first is None:
                raise BadVideo("no frame decodes")
            return dict(
                num_frames=int(num_frames),
                fps=float(rate),
                height=int(first.height),
                width=int(first.width),
            )
    except BadVideo:
        raise
    except (av.FFmpegError, StopIteration, ValueError, OSError) as e:
        raise BadVideo(f"unreadable ({type(e).__name__}: {e})") from e


def encode_record(id: str, label: int, video: bytes, meta: Mapping[str, Any]) -> bytes:
    """One record's bytes (``meta`` as returned by ``probe_video``)."""
    record = dict(
        id=str(id),
        label=int(label),
        video=bytes(video),
        num_frames=int(meta["num_frames"]),
        fps=float(meta["fps"]),
        height=int(meta["height"]),
        width=int(meta["width"]),
    )
    return msgpack.packb(record, use_bin_type=True)


def decode_record(data: bytes) -> dict[str, Any]:
    """Record bytes -> dict with the keys ``encode_record`` wrote."""
    try:
        record = msgpack.unpackb(data, raw=False)
    except (ValueError, msgpack.UnpackException) as e:
        raise BadVideo(f"record is not a video record ({e})") from e
    if not isinstance(record, dict) or any(k not in record for k in _RECORD_KEYS):
        raise BadVideo(f"record lacks some of the keys {_RECORD_KEYS}")
    return record


def shard_name(split: str, index: int, count: int) -> str:
    return f"{split}.array_record-{index:05d}-of-{count:05d}"


def info_path(data_dir: str, split: str) -> str:
    return os.path.join(data_dir, f"{split}.json")


class ShardWriter:
    """Writes records to ``path`` atomically: a temporary file renamed on ``close``.

    A shard is either complete or absent, so an interrupted preparation can be rerun.
    """

    def __init__(self, path: str):
        from array_record.python.array_record_module import ArrayRecordWriter

        self.path = path
        self._tmp = f"{path}.tmp-{os.getpid()}"
        self._writer = ArrayRecordWriter(self._tmp, "group_size:1")
        self.num_records = 0

    def write(self, record: bytes) -> None:
        self._writer.write(record)
        self.num_records += 1

    def close(self) -> None:
        self._writer.close()
        os.replace(self._tmp, self.path)

    def abort(self) -> None:
        self._writer.close()
        if os.path.exists(self._tmp):
            os.remove(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        if exc_type is None:
            self.close()
        else:
            self.abort()


def write_info(
    data_dir: str,
    split: str,
    shards: Sequence[Mapping[str, Any]],
    classes: Sequence[str],
    failures: Sequence[Mapping[str, str]] = (),
) -> dict[str, Any]:
    """Writes ``split.json`` (atomically) and returns it."""
    info = dict(
        format=FORMAT,
        split=split,
        shards=[dict(file=s["file"], num_records=int(s["num_records"])) for s in shards],
        num_records=int(sum(int(s["num_records"]) for s in shards)),
        classes=list(classes),
        failures=[dict(path=f["path"], reason=f["reason"]) for f in failures],
    )
    path = info_path(data_dir, split)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(info, f, indent=1)
    os.replace(tmp, path)
    return info


def read_info(data_dir: str, split: str) -> dict[str, Any]:
    """The split's info, after checking that every listed shard exists."""
    path = info_path(data_dir, split)
    if not os.path.isfile(path):
        present = (
            sorted(f[:-5] for f in os.listdir(data_dir) if f.endswith(".json"))
            if (os.path.isdir(data_dir))
            else []
        )
        raise DatasetInfoError(
            f"no split {split!r} in {data_dir} (missing {path}; splits there: {present}). "
            "Make one with `python -m maskfeat_jax.data.prepare_video --videos_dir ... "
            f"--out {data_dir} --split {split}`."
        )
    with open(path) as f:
        info = json.load(f)
    if info.get("format") != FORMAT:
        raise DatasetInfoError(f"{path} is not a {FORMAT} dataset (format {info.get('format')!r})")
    missing = [
        s["file"] for s in info["shards"] if not os.path.isfile(os.path.join(data_dir, s["file"]))
    ]
    if missing:
        raise DatasetInfoError(
            f"{path} lists shards that are missing: {missing}; rerun prepare_video with the "
            "same arguments to finish them"
        )
    if info["num_records"] < 1:
        raise DatasetInfoError(f"split {split!r} in {data_dir} has no records")
    return info


class VideoRecords:
    """Random-access source over a split's shards (grain ``RandomAccessDataSource``).

    Items are the raw record bytes; ``decode_record`` (in the pipeline's transform) turns
    them into dicts, so a bad record fails where it can be skipped and counted.
    """

    def __init__(self, data_dir: str, split: str):
        import grain

        self.data_dir, self.split = data_dir, split
        self.info = read_info(data_dir, split)
        self.classes = tuple(self.info["classes"])
        paths = [os.path.join(data_dir, s["file"]) for s in self.info["shards"] if s["num_records"]]
        self._source = grain.sources.ArrayRecordDataSource(paths)
        if len(self._source) != self.info["num_records"]:
            raise DatasetInfoError(
                f"{info_path(data_dir, split)} counts {self.info['num_records']} records but the "
                f"shards hold {len(self._source)}; rerun prepare_video"
            )

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> bytes:
        return self._source[index]

    def __repr__(self) -> str:
        return f"VideoRecords({self.data_dir!r}, {self.split!r}, {len(self)} records)"
