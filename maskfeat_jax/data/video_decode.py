"""Which frames a clip takes, and decoding only those with PyAV.

Clip sampling follows SlowFast's decoder (``get_start_end_idx`` + ``temporal_sampling``):
a clip of ``num_frames`` at ``stride`` spans ``stride * num_frames / target_fps`` seconds,
i.e. ``clip_size = stride * num_frames * fps / target_fps`` frames of the video. Its start
is uniform in ``[0, max(n - clip_size, 0)]`` for training; for testing, clip ``k`` of ``K``
starts at ``k * floor(delta / (K - 1))`` ("offset sampling", the centre for ``K = 1``).
The frames taken are ``floor(linspace(start, start + clip_size - 1, num_frames))``
clamped to the video, so a video shorter than the clip repeats its last frames.

``decode_frames`` seeks to the key frame before the first wanted frame, decodes forward to
the last one and converts to RGB only the frames the clip takes (a 16 x 4 clip decodes
about 64 frames but converts 16).
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence

import numpy as np

from maskfeat_jax.data.video_records import BadVideo

__all__ = ["clip_frame_indices", "decode_frames", "decode_images", "short_side_size"]


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
) -> np.ndarray:
    """Frame indices (int64 ``[num_frames]``) of a random (``rng``) or the ``clip_index``-th
    of ``num_clips`` uniformly spaced clips of a ``video_frames``-frame video."""
    if video_frames < 1:
        raise BadVideo("video has no frames")
    if not 0 <= clip_index < num_clips:
        raise ValueError(f"need 0 <= clip_index < num_clips, got {clip_index} of {num_clips}")
    clip_size = stride * num_frames * float(fps) / float(target_fps)
    delta = max(video_frames - clip_size, 0.0)
    if rng is not None:
        start = rng.uniform(0.0, delta)
    elif num_clips == 1:
        start = math.floor(delta / 2)
    else:
        start = clip_index * math.floor(delta / (num_clips - 1))
    points = np.linspace(start, start + clip_size - 1, num_frames)
    return np.clip(points, 0, video_frames - 1).astype(np.int64)


def short_side_size(height: int, width: int, short_side: int) -> tuple[int, int]:
    """(h, w) with the shorter side ``short_side`` and the other scaled and floored
    (SlowFast's ``short_side_scale``); ``short_side <= 0`` keeps the size."""
    if short_side <= 0:
        return height, width
    if height <= width:
        return short_side, int(math.floor(width / height * short_side))
    return int(math.floor(height / width * short_side)), short_side


def decode_frames(data: bytes, indices: Sequence[int], fps: float) -> np.ndarray:
    """The frames at ``indices`` (with repeats, in that order) as uint8 ``[T, H, W, 3]``.

    ``fps`` maps frame indices to timestamps (constant frame rate, as stored in the record).
    Raises ``BadVideo`` if the data does not decode or ends before the last wanted frame.
    """
    frames = _decode(data, indices, fps, lambda f: f.to_ndarray(format="rgb24"))
    return np.stack([frames[i] for i in indices])


def decode_images(data: bytes, indices: Sequence[int], fps: float) -> list:
    """As ``decode_frames``, but RGB PIL images (one per index; repeats share an image),
    which the pipeline resizes without a round trip through numpy."""
    frames = _decode(data, indices, fps, lambda f: f.to_image())
    return [frames[i] for i in indices]


def _decode(data: bytes, indices: Sequence[int], fps: float, convert) -> dict:
    """{wanted index: convert(frame)} for the unique ``indices``."""
    import av

    wanted = sorted({int(i) for i in indices})
    try:
        with av.open(io.BytesIO(data), mode="r") as container:
            if not container.streams.video:
                raise BadVideo("no video stream")
            stream = container.streams.video[0]
            # One decoding thread: parallelism comes from the pipeline's workers.
            stream.codec_context.thread_count = 1
            args = (container, stream, wanted, float(fps), convert)
            first, frames = _decode_wanted(*args, seek=True)
            if first > wanted[0]:
                # The seek landed after the first wanted frame (inexact index): from the start.
                first, frames = _decode_wanted(*args, seek=False)
    except BadVideo:
        raise
    except (av.FFmpegError, ValueError, OSError, MemoryError) as e:
        raise BadVideo(f"decoding failed ({type(e).__name__}: {e})") from e
    missing = [i for i in wanted if i not in frames]
    if missing:
        got = max(frames) if frames else -1
        raise BadVideo(
            f"truncated: frames {missing[0]}..{missing[-1]} are missing (decoding stopped "
            f"after frame {got})"
        )
    return frames


def _decode_wanted(container, stream, wanted: list[int], fps: float, convert, seek: bool):
    """(index of the first decoded frame, {wanted index: convert(frame)})."""
    time_base = float(stream.time_base)
    start_pts = stream.start_time or 0
    frame_pts = 1.0 / (fps * time_base)  # pts units per frame
    if seek:
        # Half a frame early so rounding cannot skip the wanted frame's key frame.
        target = int(start_pts + (wanted[0] - 0.5) * frame_pts)
        container.seek(max(target, start_pts), stream=stream, backward=True, any_frame=False)
    else:
        container.seek(start_pts, stream=stream, backward=True, any_frame=False)
    wanted_set, last = set(wanted), wanted[-1]
    first, out = None, {}
    for frame in container.decode(stream):
        if frame.pts is None:
            continue
        index = int(round((frame.pts - start_pts) / frame_pts))
        first = index if first is None else first
        if index in wanted_set:
            out[index] = convert(frame)
        if index >= last:
            break
    return (wanted[0] if first is None else first), out
