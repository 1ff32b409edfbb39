"""Videos as users have them, encoded in the test with PyAV: variable and odd frame rates,
jittered and gapped timestamps, late starts, rotation metadata, other codecs and containers,
near-empty and damaged files, and the folder debris around them.

Each frame ``i`` is a flat colour ``colour(i)`` (with a white corner square marking the
stored top-left), so a decoded frame tells which source frame it is (``frame_number``),
whatever the codec's losses.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from fractions import Fraction

import av
import numpy as np

MS = Fraction(1, 1000)


def colour(i: int) -> np.ndarray:
    """A colour per frame number, far apart for neighbouring numbers."""
    return np.array([(i * 53) % 256, (i * 97 + 60) % 256, (i * 29 + 120) % 256], np.float64)


def frame_image(i: int, height: int, width: int) -> np.ndarray:
    image = np.empty((height, width, 3), np.uint8)
    image[:] = colour(i).astype(np.uint8)
    side = max(2, min(height, width) // 4)
    image[:side, :side] = 255  # the stored top-left corner
    return image


def frame_number(image: np.ndarray, candidates) -> int:
    """The source frame (among ``candidates``) whose colour the decoded ``image`` shows."""
    h, w = image.shape[:2]
    mean = image[h // 2 :, w // 2 :].reshape(-1, 3).mean(axis=0)
    return min(candidates, key=lambda i: float(np.sum((colour(i) - mean) ** 2)))


def white_corner(image: np.ndarray) -> str:
    """Which corner of a decoded frame holds the white square."""
    h, w = image.shape[:2]
    corners = {
        "top-left": image[: h // 8, : w // 8],
        "top-right": image[: h // 8, -(w // 8) :],
        "bottom-left": image[-(h // 8) :, : w // 8],
        "bottom-right": image[-(h // 8) :, -(w // 8) :],
    }
    return max(corners, key=lambda k: float(corners[k].mean()))


@dataclasses.dataclass
class Spec:
    """How to encode one video: frame ``i`` is shown from ``times_ms[i]``."""

    times_ms: list[int]
    fps: float = 30.0  # the rate the header announces
    height: int = 48
    width: int = 64
    codec: str = "libx264"
    container: str = "mp4"
    pix_fmt: str = "yuv420p"
    rotation: int = 0  # display matrix, counter-clockwise degrees
    audio_first: bool = False
    options: dict | None = None
    faststart: bool = True  # mp4: the index before the frames


def even_times(count: int, fps: float, start_ms: int = 0) -> list[int]:
    return [start_ms + round(1000 * i / fps) for i in range(count)]


def encode(spec: Spec) -> bytes:
    """The encoded file's bytes (mp4 with its index at the front)."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "video")
        _encode_to(path, spec)
        with open(path, "rb") as f:
            return f.read()


def _encode_to(path: str, spec: Spec) -> None:
    options = {"movflags": "faststart"} if spec.container == "mp4" and spec.faststart else {}
    with av.open(path, "w", format=spec.container, options=options) as container:
        if spec.audio_first:
            audio = container.add_stream("aac", rate=16000)
            audio.layout = "mono"
        stream = container.add_stream(
            spec.codec, rate=Fraction(spec.fps).limit_denominator(1001), options=spec.options or {}
        )
        stream.height, stream.width, stream.pix_fmt = spec.height, spec.width, spec.pix_fmt
        stream.codec_context.time_base = MS
        stream.time_base = MS
        if spec.rotation:
            stream.set_display_rotation(spec.rotation)
        if spec.audio_first:
            samples = np.zeros((1, 1024), np.float32)
            for k in range(4):
                chunk = av.AudioFrame.from_ndarray(samples, format="fltp", layout="mono")
                chunk.sample_rate, chunk.pts = 16000, k * 1024
                container.mux(audio.encode(chunk))
            container.mux(audio.encode())
        for i, ms in enumerate(spec.times_ms):
            frame = av.VideoFrame.from_ndarray(
                frame_image(i, spec.height, spec.width), format="rgb24"
            )
            frame.pts, frame.time_base = ms, MS
            container.mux(stream.encode(frame))
        container.mux(stream.encode())


def shown_at(times_ms: list[int], t_ms: float) -> int:
    """The frame a player shows at ``t_ms``: the last one whose time has come."""
    shown = [i for i, ms in enumerate(times_ms) if ms <= t_ms]
    return shown[-1] if shown else 0


def jittered(count: int, fps: float, jitter_ms: int, drop: tuple[int, ...], seed: int = 0):
    rng = np.random.default_rng(seed)
    times = [round(1000 * i / fps + rng.integers(-jitter_ms, jitter_ms + 1)) for i in range(count)]
    times[0] = max(times[0], 0)
    return [t for i, t in enumerate(times) if i not in drop]


def variable_rate(count: int, seed: int = 0) -> list[int]:
    """Frame intervals from 15 to 60 ms, as a phone's variable frame rate gives."""
    rng = np.random.default_rng(seed)
    return [int(t) for t in np.cumsum([0, *rng.integers(15, 61, count - 1)])]


def with_freeze(count: int, fps: float, at: int, freeze_ms: int) -> list[int]:
    return [round(1000 * i / fps) + (freeze_ms if i >= at else 0) for i in range(count)]


# Playable videos by name: each must give clips. Names carry the oddities of real folders.
PLAYABLE = {
    "cfr25.mp4": Spec(even_times(75, 25), fps=25),
    "ntsc 29.97.mp4": Spec(even_times(90, 30000 / 1001), fps=30000 / 1001),
    "fast60.MP4": Spec(even_times(150, 60), fps=60),
    "vfr.mp4": Spec(variable_rate(90), fps=30),
    "jitter_dropped.mp4": Spec(jittered(90, 30, 3, drop=(20, 51)), fps=30),
    "freeze.mp4": Spec(with_freeze(90, 30, at=40, freeze_ms=1000), fps=30),
    "late_start.mp4": Spec(even_times(60, 30, start_ms=3000), fps=30),
    "rotated 90.mp4": Spec(even_times(45, 30), rotation=90),
    "rotated -90.mov": Spec(even_times(45, 30), rotation=-90, container="mov"),
    "portrait.mp4": Spec(even_times(45, 30), height=64, width=48),
    "tiny.mp4": Spec(even_times(45, 30), height=24, width=32),
    "vp9.webm": Spec(even_times(45, 30), codec="libvpx-vp9", container="webm"),
    "mjpeg.avi": Spec(even_times(45, 30), codec="mjpeg", container="avi", pix_fmt="yuvj420p"),
    "matroska.mkv": Spec(even_times(45, 30), container="matroska"),
    "audio_first.mp4": Spec(even_times(45, 30), audio_first=True),
    "grey.mp4": Spec(even_times(45, 30), pix_fmt="gray"),
    "ten bit.mp4": Spec(even_times(45, 30), pix_fmt="yuv420p10le"),
    "one_frame.mp4": Spec([0]),
    "three_frames.mp4": Spec(even_times(3, 30)),
    "vidéo ünïcode.mp4": Spec(even_times(45, 30)),
}


def unplayable(good: bytes) -> dict[str, bytes]:
    """Files no player plays, made from a good file's bytes ``good`` (index at the front)."""
    index_at_end = encode(Spec(even_times(45, 30), faststart=False))
    return {
        "empty.mp4": b"",
        "text.mp4": b"this is a text file with a video's name\n" * 10,
        "truncated_index_at_end.mp4": index_at_end[: 2 * len(index_at_end) // 3],
        "garbage.mp4": bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)),
    }


def damaged(good: bytes) -> dict[str, bytes]:
    """Files a player still plays (in part): it shows what decodes."""
    hole = bytearray(good)
    middle = len(hole) // 2
    hole[middle : middle + 600] = bytes(600)
    flipped = bytearray(good)
    for k in range(len(flipped) // 3, len(flipped), 997):
        flipped[k] ^= 0x5A
    return {
        "zeroed_hole.mp4": bytes(hole),
        "corrupted_bytes.mp4": bytes(flipped),
        "truncated_index_at_front.mp4": good[: len(good) // 2],
    }


def write_zoo(folder: str, label: str = "cls") -> dict[str, str]:
    """Writes the zoo under ``folder/label/`` with the debris of real folders; returns
    {file name: "playable" | "unplayable" | "damaged"}."""
    target = os.path.join(folder, label)
    os.makedirs(target, exist_ok=True)
    kinds = {}
    for name, spec in PLAYABLE.items():
        with open(os.path.join(target, name), "wb") as f:
            f.write(encode(spec))
        kinds[name] = "playable"
    good = encode(Spec(even_times(90, 30)))
    for group, files in (("unplayable", unplayable(good)), ("damaged", damaged(good))):
        for name, data in files.items():
            with open(os.path.join(target, name), "wb") as f:
                f.write(data)
            kinds[name] = group
    for debris in (".DS_Store", "._cfr25.mp4"):
        with open(os.path.join(target, debris), "wb") as f:
            f.write(b"\x00\x05\x16\x07 metadata")
    return kinds
