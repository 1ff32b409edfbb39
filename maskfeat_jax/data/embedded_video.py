"""Default video dataset: real photos filmed by a moving virtual camera, encoded to H.264.

Nothing is downloaded. Every photo that ships inside the pinned scikit-image and
scikit-learn wheels (``embedded.PHOTO_NAMES``, 21 photos) is one class. Each video is a
deterministic camera path over its photo (pan, zoom and a small rotation; see
``camera_paths``) rendered at 240 x 320 and 30 fps, encoded with libx264 (the encoder in
PyAV's wheel) into mp4 with a key frame every 2 s, so clip decoding must seek as it does on
real videos. The ``train`` split has ``videos_per_photo`` paths per photo, ``validation``
one other path per photo. Both are written as the record shards of ``video_records`` (the
same format ``prepare_video`` makes from real videos) the first time they are needed.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import io
import json
import multiprocessing
import os
import shutil
import tempfile

import numpy as np

from maskfeat_jax.data import camera_paths, embedded, video_records

__all__ = ["EmbeddedVideos", "encode_h264", "ensure", "render_video"]

_SPLIT_SEED = {"train": 0, "validation": 1}
_SETTINGS_FILE = "embedded_videos.json"


@dataclasses.dataclass(frozen=True)
class EmbeddedVideos:
    """How the embedded videos are made (the defaults are the dataset configs use)."""

    videos_per_photo: int = 4  # train; validation has one per photo
    num_frames: int = 120
    height: int = 240
    width: int = 320
    fps: int = 30
    gop: int = 60  # frames between key frames
    crf: int = 23
    seed: int = 0

    def __post_init__(self):
        for field in dataclasses.fields(self):
            value = getattr(self, field.name)
            if not isinstance(value, int) or (value < 1 and field.name not in ("crf", "seed")):
                raise ValueError(
                    f"EmbeddedVideos.{field.name} must be a positive int, got {value!r}"
                )
        if self.height % 2 or self.width % 2:
            raise ValueError(
                f"H.264 (yuv420p) needs even frame sizes, got {self.height}x{self.width}"
            )


def encode_h264(frames: np.ndarray, fps: int, gop: int = 60, crf: int = 23) -> bytes:
    """uint8 ``[T, H, W, 3]`` RGB frames -> mp4 bytes (H.264, yuv420p, constant frame rate)."""
    import av

    frames = np.asarray(frames)
    if frames.dtype != np.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"frames must be uint8 [T, H, W, 3], got {frames.dtype} {frames.shape}")
    buffer = io.BytesIO()
    with av.open(buffer, mode="w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=int(fps))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        # Fixed key-frame interval (no scene-cut key frames) and one thread: the same bytes
        # on every machine.
        stream.options = {
            "crf": str(crf),
            "preset": "veryfast",
            "g": str(gop),
            "keyint_min": str(gop),
            "sc_threshold": "0",
            "threads": "1",
        }
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")))
        container.mux(stream.encode())
    return buffer.getvalue()


def render_video(name: str, split: str, index: int, settings: EmbeddedVideos) -> np.ndarray:
    """Frames of the ``index``-th video of photo ``name`` in ``split``, uint8 [T, H, W, 3]."""
    photo = embedded.load_photo(name)
    photo_index = embedded.PHOTO_NAMES.index(name)
    rng = np.random.default_rng([settings.seed, _SPLIT_SEED[split], photo_index, index])
    aspect = settings.width / settings.height  # frames show the box undistorted
    path = camera_paths.sample_path(
        rng,
        photo.shape,
        scale=(0.3, 0.8),
        ratio=(aspect, aspect),
        max_shift=0.25,
        max_zoom=1.5,
        max_rotation=10.0,
    )
    return camera_paths.render_clip(
        photo, path, settings.num_frames, (settings.height, settings.width)
    )


def _encoded(job: tuple[str, str, int, EmbeddedVideos]) -> tuple[str, bytes]:
    name, split, index, settings = job
    frames = render_video(name, split, index, settings)
    return f"{split}/{name}/{index}", encode_h264(frames, settings.fps, settings.gop, settings.crf)


def _build_split(directory: str, split: str, settings: EmbeddedVideos, workers: int) -> None:
    per_photo = settings.videos_per_photo if split == "train" else 1
    jobs = [(name, split, k, settings) for name in embedded.PHOTO_NAMES for k in range(per_photo)]
    labels = {name: i for i, name in enumerate(embedded.PHOTO_NAMES)}
    if workers > 1:
        # Fresh interpreters: forking a process that already runs JAX's threads can hang.
        spawn = multiprocessing.get_context("spawn")
        with concurrent.futures.ProcessPoolExecutor(workers, mp_context=spawn) as pool:
            videos = list(pool.map(_encoded, jobs))
    else:
        videos = [_encoded(job) for job in jobs]
    num_shards = max(1, len(videos) // 48)  # a few MB per shard
    shards = []
    for s in range(num_shards):
        file = video_records.shard_name(split, s, num_shards)
        with video_records.ShardWriter(os.path.join(directory, file)) as writer:
            for video_id, data in videos[s::num_shards]:
                meta = video_records.probe_video(data)
                writer.write(
                    video_records.encode_record(
                        video_id, labels[video_id.split("/")[1]], data, meta
                    )
                )
        shards.append(dict(file=file, num_records=writer.num_records))
    video_records.write_info(directory, split, shards, embedded.PHOTO_NAMES)


def ensure(
    directory: str,
    settings: EmbeddedVideos = EmbeddedVideos(),
    workers: int | None = None,
) -> str:
    """Builds the embedded video dataset in ``directory`` unless it is already there (made
    with the same settings); returns ``directory``. Safe when several processes race: each
    builds in a temporary folder and the first complete one is moved into place."""
    wanted = dataclasses.asdict(settings)
    settings_path = os.path.join(directory, _SETTINGS_FILE)
    if os.path.isfile(settings_path):
        with open(settings_path) as f:
            found = json.load(f)
        if found != wanted:
            raise ValueError(
                f"{directory} holds embedded videos made with {found}, not {wanted}; delete "
                "it or point config.input.data_dir elsewhere"
            )
        return directory
    parent = os.path.dirname(os.path.abspath(directory))
    os.makedirs(parent, exist_ok=True)
    staging = tempfile.mkdtemp(prefix=".embedded_videos-", dir=parent)
    os.chmod(staging, 0o755)  # mkdtemp's 0700 would stay with the dataset after the rename
    try:
        workers = workers or min(4, os.cpu_count() or 1)
        for split in _SPLIT_SEED:
            _build_split(staging, split, settings, workers)
        with open(os.path.join(staging, _SETTINGS_FILE), "w") as f:
            json.dump(wanted, f, indent=1)
        try:
            os.rename(staging, directory)
        except OSError:
            if not os.path.isfile(settings_path):  # not a lost race: a real error
                raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return directory
