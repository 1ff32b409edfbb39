"""Which frames a clip takes, and decoding only those with PyAV.

Clip sampling follows SlowFast's decoder (``get_start_end_idx`` + ``temporal_sampling``):
a clip of ``num_frames`` at ``stride`` spans ``stride * num_frames / target_fps`` seconds,
i.e. ``clip_size = stride * num_frames * fps / target_fps`` frames of the video. Its start
is uniform in ``[0, max(n - clip_size, 0)]`` for training; for testing, clip ``k`` of ``K``
starts at ``k * floor(delta / (K - 1))`` ("offset sampling", the centre for ``K = 1``).
The frames taken are ``floor(linspace(start, start + clip_size - 1, num_frames))``.

Those positions are times on the video's presentation timeline (position ``i`` is
``start + i / fps`` seconds, ``n = round(duration * fps)``), and each takes the frame a
player shows at that time: the last frame whose timestamp is at most half a frame after it.
For a constant-frame-rate video that is frame ``i`` itself, as in SlowFast; a variable frame
rate, timestamp jitter, dropped frames and freezes then cost nothing (a freeze repeats the
frozen frame, as on screen).

Videos shorter than a clip (``short_videos``): ``"pad"`` repeats the last frame for the
positions past the end, which is what SlowFast's ``temporal_sampling`` does (it clamps the
indices); ``"loop"`` wraps them around to the start instead.

``decode_images`` seeks to the key frame before the first wanted time, decodes forward to
the last one and converts to RGB only the frames the clip takes (a 16 x 4 clip decodes
about 64 frames but converts 16). A packet that does not decode is passed over, as a player
does; a video is bad only if the data ends before the frames the clip needs. Frames come out
turned as the record's display ``rotation`` says.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from maskfeat_jax.data.video_records import BadVideo, decodable_frames, describe_error

__all__ = [
    "SHORT_VIDEO_POLICIES",
    "Timeline",
    "clip_frame_indices",
    "clip_times",
    "decode_frames",
    "decode_images",
    "short_side_size",
]

SHORT_VIDEO_POLICIES = ("pad", "loop")


@dataclasses.dataclass(frozen=True)
class Timeline:
    """A video's presentation timeline, in seconds, as its record describes it."""

    fps: float
    start: float  # timestamp of the first frame
    end: float  # timestamp of the last frame
    duration: float  # end - start + the last frame's duration
    rotation: int = 0  # counter-clockwise quarter turns x 90 a player applies

    @classmethod
    def of_record(cls, record: Mapping[str, Any]) -> Timeline:
        """From a record; records made before timelines were stored are read as constant
        frame rate from 0 s."""
        fps, n = float(record["fps"]), int(record["num_frames"])
        if fps <= 0 or n < 1:
            raise BadVideo(f"the record says {n} frames at {fps} fps; prepare it again")
        return cls(
            fps=fps,
            start=float(record.get("start", 0.0)),
            end=float(record.get("end", (n - 1) / fps)),
            duration=float(record.get("duration", n / fps)),
            rotation=int(record.get("rotation", 0)),
        )

    @property
    def positions(self) -> int:
        """How many frame positions the timeline holds at ``fps`` (the frame count of a
        constant-rate video)."""
        return max(1, round(self.duration * self.fps))


def clip_frame_indices(
    video_frames: int,
    *,
    num_frames: int,
    stride: int,
    fps: float,
    target_fps: float,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
    short_videos: str = "pad",
) -> np.ndarray:
    """Frame positions (int64 ``[num_frames]``) of a random (``rng``) or the
    ``clip_index``-th of ``num_clips`` uniformly spaced clips of a ``video_frames``-frame
    video; positions past the end are padded or looped (``short_videos``)."""
    if video_frames < 1:
        raise BadVideo("video has no frames")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"need 0 <= clip_index < num_clips, got {clip_index} of {num_clips}")
    if short_videos not in SHORT_VIDEO_POLICIES:
        raise ValueError(
            f"short_videos must be one of {SHORT_VIDEO_POLICIES}, got {short_videos!r}"
        )
    clip_size = stride * num_frames * float(fps) / float(target_fps)
    delta = max(video_frames - clip_size, 0.0)
    if rng is not None:
        start = rng.uniform(0.0, delta)
    elif num_clips == 1:
        start = math.floor(delta / 2)
    else:
        start = clip_index * math.floor(delta / (num_clips - 1))
    points = np.linspace(start, start + clip_size - 1, num_frames).astype(np.int64)
    if short_videos == "loop":
        return np.maximum(points, 0) % video_frames
    return np.clip(points, 0, video_frames - 1)


def clip_times(
    timeline: Timeline,
    *,
    num_frames: int,
    stride: int,
    target_fps: float,
    rng: np.random.Generator | None = None,
    clip_index: int = 0,
    num_clips: int = 1,
    short_videos: str = "pad",
) -> np.ndarray:
    """Seconds from the first frame (float64 ``[num_frames]``) that a clip shows."""
    positions = clip_frame_indices(
        timeline.positions,
        num_frames=num_frames,
        stride=stride,
        fps=timeline.fps,
        target_fps=target_fps,
        rng=rng,
        clip_index=clip_index,
        num_clips=num_clips,
        short_videos=short_videos,
    )
    return positions / timeline.fps


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``short_side`` and the other scaled and floored
    (SlowFast's ``short_side_scale``); ``short_side <= 0`` keeps the size."""
    if short_side <= 0:
        return height, width
    if height <= width:
        return short_side, int(math.floor(width / height * short_side))
    return int(math.floor(height / width * short_side)), short_side


def decode_frames(data: bytes, times: Sequence[float], timeline: Timeline) -> np.ndarray:
    """The frames shown at ``times`` (seconds from the first frame, any order, repeats
    allowed) as uint8 ``[T, H, W, 3]``, upright.

    Raises ``BadVideo`` if the data does not decode or ends before the frames wanted.
    """
    turns = timeline.rotation // 90
    frames = _decode(data, times, timeline, lambda f: np.rot90(f.to_ndarray(format="rgb24"), turns))
    return np.stack([frames[t] for t in times])


def decode_images(data: bytes, times: Sequence[float], timeline: Timeline) -> list:
    """As ``decode_frames``, but RGB PIL images (one per time; repeats share an image),
    which the pipeline resizes without a round trip through numpy."""
    from PIL import Image

    turn = {
        90: Image.Transpose.ROTATE_90,  # PIL's turns are counter-clockwise too
        180: Image.Transpose.ROTATE_180,
        270: Image.Transpose.ROTATE_270,
    }.get(timeline.rotation)

    def convert(frame):
        image = frame.to_image()
        return image if turn is None else image.transpose(turn)

    frames = _decode(data, times, timeline, convert)
    return [frames[t] for t in times]


def _decode(data: bytes, times: Sequence[float], timeline: Timeline, convert) -> dict:
    """{wanted time: convert(frame shown then)} for the unique ``times``."""
    import av

    wanted = sorted({float(t) for t in times})
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            # One decoding thread: parallelism comes from the pipeline's workers.
            stream.codec_context.thread_count = 1
            reader = _ShownFrames(container, stream, wanted, timeline, convert)
            frames = reader.read(seek=True)
            if frames is None:
                # The seek landed after the first wanted time (an inexact index): from the start.
                frames = reader.read(seek=False)
    except BadVideo:
        raise
    except (av.FFmpegError, ValueError, OSError, MemoryError) as e:
        raise BadVideo(f"decoding failed ({describe_error(e)})") from e
    return frames


class _ShownFrames:
    """Walks the decoded frames of one stream and keeps, for each wanted time, the frame a
    player shows then."""

    def __init__(self, container, stream, wanted: list[float], timeline: Timeline, convert):
        self.container, self.stream, self.convert = container, stream, convert
        self.timeline = timeline
        self.time_base = float(stream.time_base)
        self.tolerance = 0.5 / timeline.fps  # timestamp jitter, in seconds
        self.wanted = wanted
        self.undecodable = 0

    def _seconds(self, frame) -> float | None:
        stamp = frame.pts if frame.pts is not None else frame.dts
        if stamp is None:
            return None
        return stamp * self.time_base - self.timeline.start

    def _count_undecodable(self) -> None:
        self.undecodable += 1

    def read(self, seek: bool) -> dict | None:
        """The frames, or ``None`` if ``seek`` landed after the first wanted time or past
        the data."""
        first = self.wanted[0] - self.tolerance if seek else 0.0
        target = int((self.timeline.start + max(first, 0.0)) / self.time_base)
        self.container.seek(target, stream=self.stream, backward=True, any_frame=False)
        out: dict[float, Any] = {}
        pending = iter(self.wanted)
        time = next(pending)
        shown = converted = None
        last_seen = None
        for frame in decodable_frames(self.container, self.stream, self._count_undecodable):
            seconds = self._seconds(frame)
            if seconds is None:
                continue
            while time is not None and time + self.tolerance < seconds:
                if shown is None:
                    if seek:
                        return None
                    shown = frame  # before the first frame: the first is on screen
                if converted is None:
                    converted = self.convert(shown)
                out[time] = converted
                time = next(pending, None)
            if time is None:
                return out
            shown, converted, last_seen = frame, None, seconds
        # The stream ended: the last frame stays on screen to the end of the video, unless
        # the data stopped short of the frames the record lists.
        end = self.timeline.end - self.timeline.start
        if shown is None and seek:
            return None  # nothing after the seek point: from the start, to say how far it goes
        if shown is None or last_seen < end - self.tolerance:
            got = "no frame" if last_seen is None else f"frames up to {last_seen:.2f} s"
            damaged = f", {self.undecodable} packets did not decode" if self.undecodable else ""
            raise BadVideo(
                f"truncated: the data gives {got} of a video that lasts {end:.2f} s"
                f"{damaged}; the clip needs {time:.2f} s"
            )
        converted = self.convert(shown)
        while time is not None:
            out[time] = converted
            time = next(pending, None)
        return out
