"""Video datasets stored as ArrayRecord shards: one record per video, the encoded file as is.

A dataset directory holds, per split, shards named like tfds's
(``train.array_record-00000-of-00004``) and one ``train.json`` that lists them::

    {"format": "maskfeat-video-records/1", "split": "train",
     "shards": [{"file": "train.array_record-00000-of-00004", "num_records": 311}, ...],
     "num_records": 1240, "classes": ["abseiling", ...],
     "failures": [{"path": "x/broken.mp4", "reason": "no video stream"}, ...]}

Each record is a msgpack map: ``id`` (the source path or name), ``label`` (int, -1 if
unlabelled), ``video`` (the file's bytes: mp4, webm, ... exactly as downloaded) and what a
sampler needs without opening the file: ``num_frames`` (counted from the packets), ``fps``,
``height``, ``width`` (as shown), the presentation timeline ``start``, ``end``, ``duration``
(seconds) and the display ``rotation`` (``probe_video``). Records are written with
``group_size:1`` so grain reads any one without decompressing its neighbours.
``probe_video`` checks a file while it is stored (container, a video stream, a first frame
that decodes, how far the end decodes); what goes wrong later is caught when clips are
decoded.
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
    "decodable_frames",
    "decode_record",
    "describe_error",
    "encode_record",
    "info_path",
    "probe_video",
    "read_info",
    "shard_name",
    "splits_in",
    "write_info",
]

FORMAT = "maskfeat-video-records/1"
_RECORD_KEYS = ("id", "label", "video", "num_frames", "fps", "height", "width")
# Written since the presentation timeline is sampled; records without them are read as
# constant frame rate from 0 s, unrotated.
_TIMELINE_KEYS = ("start", "end", "duration")


class BadVideo(ValueError):
    """A video that cannot be used: not a video, corrupt, truncated or too short."""


class DatasetInfoError(FileNotFoundError):
    """A dataset directory without (readable) shards for the split."""


def probe_video(data: bytes) -> dict[str, Any]:
    """What sampling needs to know of an encoded video, or ``BadVideo`` saying why.

    ``num_frames`` (frames in the stream), ``fps`` (average rate), ``height`` and ``width``
    as a player shows them (after ``rotation``), and the presentation timeline in seconds:
    ``start`` (the first frame's timestamp; files cut from longer ones often start late),
    ``end`` (the last frame's) and ``duration`` (``end - start`` plus the last frame's
    duration). ``rotation`` is the counter-clockwise turn, a multiple of 90 degrees, that the
    display matrix asks a player to apply (phones store portrait video as rotated landscape).
    Frames and timestamps come from the demuxed packets (no decoding); the first frame is
    decoded to prove the codec can read the stream.
    """
    import av  # Decoding needs PyAV; reading records does not.

    if not data:
        raise BadVideo("empty file")
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate or stream.base_rate
            stamps, durations = [], []
            for packet in container.demux(stream):
                if not packet.size:
                    continue
                stamp = packet.pts if packet.pts is not None else packet.dts
                stamps.append(stamp)
                durations.append(packet.duration or 0)
            if not stamps:
                raise BadVideo("no frames")
            fps = float(rate) if rate and float(rate) > 0 else None
            timeline = _timeline(stamps, durations, float(stream.time_base or 0), fps)
            if timeline is None:
                raise BadVideo("no frame rate and no timestamps")
            container.seek(0, stream=stream)
            first = next(decodable_frames(container, stream), None)
            if first is None:
                raise BadVideo("no frame decodes")
            rotation = _quarter_turns(first.rotation) * 90
            height, width = int(first.height), int(first.width)
            if rotation in (90, 270):
                height, width = width, height
            end = _decodable_end(
                container, stream, max((s for s in stamps if s is not None), default=None)
            )
            if end is not None and end < timeline["end"]:
                # The file was cut (or its tail is damaged): the timeline ends where a player
                # stops showing new frames.
                timeline["duration"] -= timeline["end"] - end
                timeline["end"] = end
            return dict(
                num_frames=len(stamps),
                height=height,
                width=width,
                rotation=rotation,
                **timeline,
            )
    except BadVideo:
        raise
    except (av.FFmpegError, StopIteration, ValueError, OSError) as e:
        raise BadVideo(f"unreadable ({describe_error(e)})") from e


def decodable_frames(container, stream, on_error=None):
    """The stream's frames from where it was sought, passing over packets that do not
    decode (``on_error()`` is called for each), as players do."""
    import av

    for packet in container.demux(stream):
        try:
            yield from packet.decode()
        except av.error.InvalidDataError:
            if on_error is not None:
                on_error()


def _decodable_end(container, stream, last_stamp) -> float | None:
    """Seconds of the last frame that decodes, from the last key frame on (``None`` if the
    timestamps are unknown)."""
    time_base = float(stream.time_base or 0)
    if last_stamp is None or time_base <= 0:
        return None
    container.seek(int(last_stamp), stream=stream, backward=True, any_frame=False)
    stamps = [f.pts if f.pts is not None else f.dts for f in decodable_frames(container, stream)]
    stamps = [s for s in stamps if s is not None]
    return max(stamps) * time_base if stamps else None


def _timeline(stamps, durations, time_base: float, fps: float | None) -> dict | None:
    """``{fps, start, end, duration}`` in seconds from packet timestamps (``None`` where a
    container gives none: frames are then evenly spaced at ``fps``)."""
    known = [s for s in stamps if s is not None]
    if len(known) < len(stamps) or time_base <= 0:
        if fps is None:
            return None
        return dict(fps=fps, start=0.0, end=(len(stamps) - 1) / fps, duration=len(stamps) / fps)
    order = sorted(range(len(stamps)), key=stamps.__getitem__)
    start, end = stamps[order[0]] * time_base, stamps[order[-1]] * time_base
    if end > start:
        # The header's rate unless the timestamps contradict it (some muxers write the
        # time base's rate): then the mean spacing of the frames.
        spaced = (len(stamps) - 1) / (end - start)
        if fps is None or not 2 / 3 < fps / spaced < 3 / 2:
            fps = spaced
    elif fps is None:
        fps = 1.0
    last = durations[order[-1]] * time_base
    return dict(fps=fps, start=start, end=end, duration=end - start + (last or 1.0 / fps))


def _quarter_turns(degrees) -> int:
    """Display rotation (degrees, counter-clockwise) as quarter turns 0..3; other angles,
    which no camera writes, are shown as stored."""
    if degrees is None:
        return 0
    turns = round(float(degrees) / 90.0)
    return turns % 4 if abs(float(degrees) - 90.0 * turns) < 1.0 else 0


def describe_error(e: BaseException) -> str:
    """An exception in words: FFmpeg's own message without its error number and the
    ``'<none>'`` it names an in-memory file by; other errors with their type."""
    import av

    if isinstance(e, av.FFmpegError) and e.strerror:
        return str(e.strerror)
    text = str(e)
    for suffix in (": '<none>'", ": <none>"):
        if text.endswith(suffix):
            text = text[: -len(suffix)]
    return f"{type(e).__name__}: {text}"


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
    record.update({k: float(meta[k]) for k in _TIMELINE_KEYS if k in meta})
    if "rotation" in meta:
        record["rotation"] = int(meta["rotation"])
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


def splits_in(data_dir: str) -> list[str]:
    """Names of the splits in ``data_dir``: the ``*.json`` files that are split infos
    (preparation plans and shard sidecars are JSON too)."""
    if not os.path.isdir(data_dir):
        return []
    found = []
    for name in sorted(os.listdir(data_dir)):
        if not name.endswith(".json"):
            continue
        try:
            with open(os.path.join(data_dir, name)) as f:
                info = json.load(f)
        except (OSError, ValueError):
            continue
        if isinstance(info, dict) and info.get("format") == FORMAT:
            found.append(name[: -len(".json")])
    return found


def read_info(data_dir: str, split: str) -> dict[str, Any]:
    """The split's info, after checking that every listed shard exists."""
    path = info_path(data_dir, split)
    if not os.path.isfile(path):
        present = splits_in(data_dir)
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
