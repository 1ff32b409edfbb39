"""Input pipelines: clips/s (images/s) of ours (grain) vs a PyTorch DataLoader baseline, per core.

Run from the repository root:

    python -m benchmarks.data [--batches 20] [--repeats 3] [--out data.json]
        [--data_dir /tmp/maskfeat_bench/embedded_videos] [--skip_images] [--skip_all_cores]

Video (K400 MaskFeat pretraining clips): 16 frames at stride 4 on a 30 fps timeline,
RandomResizedCrop area (0.5, 1) aspect (3/4, 4/3) to 224 x 224, horizontal flip, cube mask
(8, 7, 7) at ratio 0.4, frames used at their stored size (short side not rescaled, like the
reference on videos scaled offline), batches of 8, over the embedded videos (84 train videos
of 120 frames at 240 x 320, H.264 with a key frame every 60 frames; built on first use).

- ours: ``videos.make_video_pretrain_dataset(VideoRecords(dir, 'train'), ...)``; seeks,
  decodes up to the clip's last frame, converts only the 16 frames it keeps to RGB, resamples
  the crop with one bilinear resize per frame and keeps uint8 (normalized on the device).
- baseline: ``ClipDataset`` below in a ``torch.utils.data.DataLoader``, the way the reference
  (SlowFast's Kinetics loader) does it: PyAV with its default decoder threading (SlowFast's
  multi-thread decode option, off by default, is ``--baseline_thread_type AUTO``), seek 1024
  pts before the clip, every frame of the clip decoded and converted to RGB, stacked to a uint8
  tensor, 16 picked with ``linspace`` + ``index_select``, float / 255, mean 0.45 / std 0.225,
  [C, T, H, W], torchvision-style crop box + ``interpolate(bilinear)``, flip; the same cube
  mask generator as ours (same cost both sides).

Images (ImageNet MaskFeat pretraining): ours ``images.make_pretrain_dataset`` over the bundled
train photos (224 px, bicubic RandomResizedCrop, flip, block mask (14, 14) at 0.4) vs
torchvision ``v2`` (RandomResizedCrop bicubic, flip, ToImage, ToDtype float, ImageNet
Normalize) + the same block mask in a DataLoader over the same in-memory photos.

Every measurement runs in a fresh child process pinned with ``os.sched_setaffinity``:
``1 core`` runs in-process (ours ``worker_count=0`` with ``--read_threads`` threads; the
DataLoader with ``num_workers=0`` and one torch thread); ``N cores`` uses every core this
process may run on, ours with ``worker_count=N`` worker processes vs ``num_workers=N``, once
as the loaders set their workers up and once with a worker init (both loaders take one) that
pins worker i to core i. The first ``--warmup`` batches (process and worker start-up
included) are skipped, then ``--batches`` batches are timed as they arrive. Repeats are
interleaved (ours, baseline, ours, ...) across all cases so load from other processes hits
both alike; medians. ``--breakdown_clips`` clips are also loaded step by step on one core to
show where a clip's time goes on each side.

Unpinned workers (and their threads) migrate between cores; on small virtual machines that
alone can cost a quarter (ours) to over half (the DataLoader) of the throughput, so compare
the pinned N-core figures with N times the one-core ones.
"""

from __future__ import annotations

import argparse
import io
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time

import numpy as np
import torch
from PIL import Image

from benchmarks.hog import write_json
from maskfeat_jax import masking
from maskfeat_jax.data import video_records

DEFAULT_DATA_DIR = "/tmp/maskfeat_bench/embedded_videos"
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# The K400 MaskFeat pretraining clip.
NUM_FRAMES, STRIDE, TARGET_FPS, CLIP_SIZE = 16, 4, 30.0, 224
SCALE, RATIO = (0.5, 1.0), (3 / 4, 4 / 3)
CUBE_GRID, BLOCK_GRID, MASK_RATIO = (8, 7, 7), (14, 14), 0.4
K400_MEAN, K400_STD = 0.45, 0.225
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SEEK_MARGIN_PTS = 1024  # the reference seeks this far before the clip's first timestamp


# ---------------------------------------------------------------------------------------------
# Baseline: the reference's clip loading, step by step.


def decode_clip(
    data: bytes, *, num_frames: int, stride: int, target_fps: float, thread_type: str = "SLICE"
):
    """A random clip's decoded frames (PyAV ``VideoFrame``s in display order) and the
    ``(start, end)`` span of the clip within them, as the reference decodes.

    The clip spans ``clip_size = stride * num_frames * fps / target_fps`` video frames and
    starts uniformly in ``[0, max(frames - clip_size, 0)]``; everything from the key frame
    before it to its last timestamp is decoded. Without a duration in the container the
    whole video is decoded and the clip is placed among its frames instead.
    """
    import av

    with av.open(io.BytesIO(data)) as container:
        stream = container.streams.video[0]
        stream.thread_type = thread_type
        fps = float(stream.average_rate)
        clip_size = stride * num_frames * fps / target_fps
        if not stream.duration or not stream.frames:
            frames = list(container.decode(stream))
            start = random.uniform(0.0, max(len(frames) - clip_size, 0.0))
            return frames, (start, start + clip_size - 1)
        pts_per_frame = stream.duration / stream.frames
        first = random.uniform(0.0, max(stream.frames - clip_size, 0.0))
        start_pts = int(first * pts_per_frame)
        end_pts = int((first + clip_size - 1) * pts_per_frame)
        container.seek(
            max(start_pts - SEEK_MARGIN_PTS, 0), any_frame=False, backward=True, stream=stream
        )
        by_pts = {}
        for frame in container.decode(stream):
            if frame.pts < start_pts:
                continue  # decoded only to reach the clip from its key frame
            if frame.pts > end_pts:
                break
            by_pts[frame.pts] = frame
    return [by_pts[pts] for pts in sorted(by_pts)], (0.0, clip_size - 1)


def frames_to_tensor(frames) -> torch.Tensor:
    """uint8 [N, H, W, 3]: every decoded frame converted to RGB and stacked."""
    return torch.as_tensor(np.stack([frame.to_rgb().to_ndarray() for frame in frames]))


def temporal_sampling(frames: torch.Tensor, start: float, end: float, num: int) -> torch.Tensor:
    """``num`` frames evenly spaced over [start, end], clamped to the decoded ones."""
    index = torch.linspace(start, end, num).clamp(0, frames.shape[0] - 1).long()
    return torch.index_select(frames, 0, index)


def normalize(frames: torch.Tensor, mean: float = K400_MEAN, std: float = K400_STD):
    """uint8 [T, H, W, C] -> float [C, T, H, W] with (x / 255 - mean) / std."""
    frames = frames.float() / 255.0
    frames = (frames - mean) / std
    return frames.permute(3, 0, 1, 2)


def crop_box(height: int, width: int, scale=SCALE, ratio=RATIO, attempts: int = 10):
    """torchvision-style RandomResizedCrop box (top, left, h, w): up to ``attempts`` draws of
    an area fraction ~ U(scale) and a log-uniform aspect w/h at a uniform position; if none
    fits, the largest centred box with its aspect clamped to ``ratio``."""
    area = height * width
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    for _ in range(attempts):
        target = area * random.uniform(*scale)
        aspect = math.exp(random.uniform(log_lo, log_hi))
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return random.randint(0, height - h), random.randint(0, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        h, w = int(round(width / ratio[0])), width
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


def random_resized_crop(clip: torch.Tensor, size: int, scale=SCALE, ratio=RATIO):
    """float [C, T, H, W] -> [C, T, size, size]: one box for the whole clip, bilinear."""
    top, left, h, w = crop_box(clip.shape[2], clip.shape[3], scale, ratio)
    cropped = clip[:, :, top : top + h, left : left + w]
    # C plays the batch and T the channels, so all frames share one resize call.
    return torch.nn.functional.interpolate(
        cropped, size=(size, size), mode="bilinear", align_corners=False
    )


def horizontal_flip(clip: torch.Tensor, prob: float = 0.5) -> torch.Tensor:
    return clip.flip(-1) if random.random() < prob else clip


class _MaskRng:
    """A numpy generator per process, made on first use so that loader workers (which torch
    seeds differently) do not share one inherited across fork."""

    def __init__(self):
        self._rng = None

    def __call__(self) -> np.random.Generator:
        if self._rng is None:
            self._rng = np.random.default_rng(torch.initial_seed())
        return self._rng


class ClipDataset(torch.utils.data.Dataset):
    """Reference-style training clips over video records: ``{"image": float [C, T, S, S],
    "mask": bool [gt, gh, gw], "label": int}`` (see the module docstring)."""

    def __init__(
        self,
        data_dir: str,
        split: str = "train",
        *,
        num_frames: int = NUM_FRAMES,
        stride: int = STRIDE,
        target_fps: float = TARGET_FPS,
        crop_size: int = CLIP_SIZE,
        mask_generator=None,
        thread_type: str = "SLICE",
    ):
        self.data_dir, self.split = data_dir, split
        self.thread_type = thread_type
        self.num_frames, self.stride, self.target_fps = num_frames, stride, target_fps
        self.crop_size = crop_size
        self.mask_generator = mask_generator or masking.CubeMaskGenerator(CUBE_GRID, MASK_RATIO)
        self.num_records = video_records.read_info(data_dir, split)["num_records"]
        self._source = None
        self._mask_rng = _MaskRng()

    def __len__(self) -> int:
        return self.num_records

    def record(self, index: int) -> dict:
        # Opened on first use, i.e. in each loader worker: no reader is shared across fork.
        if self._source is None:
            self._source = video_records.VideoRecords(self.data_dir, self.split)
        return video_records.decode_record(self._source[index])

    def __getitem__(self, index: int) -> dict:
        record = self.record(index)
        frames, (start, end) = decode_clip(
            record["video"],
            num_frames=self.num_frames,
            stride=self.stride,
            target_fps=self.target_fps,
            thread_type=self.thread_type,
        )
        frames = temporal_sampling(frames_to_tensor(frames), start, end, self.num_frames)
        clip = random_resized_crop(normalize(frames), self.crop_size)
        clip = horizontal_flip(clip)
        mask = torch.from_numpy(np.asarray(self.mask_generator(self._mask_rng()), dtype=bool))
        return {"image": clip, "mask": mask, "label": record["label"]}


class ImageDataset(torch.utils.data.Dataset):
    """torchvision v2 pretraining views of in-memory photos: ``{"image": float [3, S, S],
    "mask": bool [gh, gw]}``."""

    def __init__(self, photos, *, image_size: int = 224, mask_generator=None):
        from torchvision.transforms import v2

        # Held decoded, as PIL images: what an image folder's loader hands the transforms.
        self.photos = [Image.fromarray(np.asarray(p)) for p in photos]
        self.transform = v2.Compose(
            [
                v2.RandomResizedCrop(
                    image_size,
                    scale=SCALE,
                    ratio=RATIO,
                    interpolation=v2.InterpolationMode.BICUBIC,
                ),
                v2.RandomHorizontalFlip(),
                v2.ToImage(),
                v2.ToDtype(torch.float32, scale=True),
                v2.Normalize(IMAGENET_MEAN, IMAGENET_STD),
            ]
        )
        self.mask_generator = mask_generator or masking.BlockMaskGenerator(BLOCK_GRID, MASK_RATIO)
        self._mask_rng = _MaskRng()

    def __len__(self) -> int:
        return len(self.photos)

    def __getitem__(self, index: int) -> dict:
        image = self.transform(self.photos[index])
        mask = torch.from_numpy(np.asarray(self.mask_generator(self._mask_rng()), dtype=bool))
        return {"image": image, "mask": mask}


def baseline_loader(
    dataset, batch: int, workers: int, num_batches: int, seed: int, pin_workers: bool = False
):
    """A shuffling DataLoader that yields at least ``num_batches`` full batches."""
    torch.manual_seed(seed)
    random.seed(seed)
    # More samples than one pass: the small datasets are reshuffled and read again.
    sampler = torch.utils.data.RandomSampler(dataset, num_samples=batch * (num_batches + 8))
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=workers,
        drop_last=True,
        worker_init_fn=pin_to_one_core if pin_workers else None,
    )


def pin_to_one_core(worker_index: int, *_) -> None:
    """Worker init (either loader): keeps worker i on the i-th core of those allowed."""
    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, {cores[worker_index % len(cores)]})


# ---------------------------------------------------------------------------------------------
# Ours.


def with_pinned_workers(ds, workers: int, worker_buffer_size: int = 2):
    """``ds`` (built in-process) in ``workers`` processes as the library's ``worker_count``
    sets them up, each pinned to one core by its init."""
    import grain
    from absl import flags

    # As the library does: worker processes read grain's absl flags.
    if not flags.FLAGS.is_parsed():
        flags.FLAGS.mark_as_parsed()
    options = grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=worker_buffer_size
    )
    return ds.mp_prefetch(options, worker_init_fn=pin_to_one_core)


def ours_video_dataset(data_dir: str, batch: int, workers: int, read_threads: int, seed: int):
    from maskfeat_jax.data import batching, videos

    return videos.make_video_pretrain_dataset(
        video_records.VideoRecords(data_dir, "train"),
        videos.ClipSampling(
            num_frames=NUM_FRAMES,
            stride=STRIDE,
            target_fps=TARGET_FPS,
            image_size=CLIP_SIZE,
            short_side=0,
        ),
        batching.StreamOptions(
            per_host_batch=batch, seed=seed, worker_count=workers, read_threads=read_threads
        ),
        mask_generator=masking.CubeMaskGenerator(CUBE_GRID, MASK_RATIO),
        scale=SCALE,
        ratio=RATIO,
        hflip=True,
    )


def ours_image_dataset(batch: int, workers: int, read_threads: int, seed: int):
    from maskfeat_jax.data import batching, embedded, images

    return images.make_pretrain_dataset(
        embedded.load_split("train"),
        batching.StreamOptions(
            per_host_batch=batch, seed=seed, worker_count=workers, read_threads=read_threads
        ),
        image_size=224,
        patch_size=16,
        mask_generator=masking.BlockMaskGenerator(BLOCK_GRID, MASK_RATIO),
        scale=SCALE,
        ratio=RATIO,
    )


# ---------------------------------------------------------------------------------------------
# One measurement, in a pinned child process.


def _batches(spec: dict):
    """The iterable of batches the spec names (built after pinning)."""
    batch, workers, seed, pin = spec["batch"], spec["workers"], spec["seed"], spec["pin_workers"]
    if spec["side"] == "ours":
        build = ours_video_dataset if spec["pipeline"] == "video" else ours_image_dataset
        args = (spec["data_dir"],) if spec["pipeline"] == "video" else ()
        if not pin:
            return build(*args, batch, workers, spec["read_threads"], seed)
        return with_pinned_workers(build(*args, batch, 0, spec["read_threads"], seed), workers)
    if spec["pipeline"] == "video":
        dataset = ClipDataset(spec["data_dir"], thread_type=spec["thread_type"])
    else:
        from maskfeat_jax.data import embedded

        dataset = ImageDataset(embedded.load_split("train"))
    total = spec["warmup"] + spec["batches"]
    return baseline_loader(dataset, batch, workers, total, seed, pin_workers=pin)


def time_batches(batches, warmup: int, count: int) -> float:
    """Seconds from the arrival of the ``warmup``-th batch to that of ``count`` more."""
    it = iter(batches)
    for _ in range(warmup):
        next(it)
    start = time.perf_counter()
    for _ in range(count):
        next(it)
    return time.perf_counter() - start


def run_child(spec: dict) -> dict:
    os.sched_setaffinity(0, spec["cores"])
    # Thread pools that were sized at import follow the pinned cores from here on.
    torch.set_num_threads(len(spec["cores"]))
    if spec["pipeline"] == "breakdown":
        return breakdown(spec["data_dir"], spec["clips"], spec["thread_type"])
    seconds = time_batches(_batches(spec), spec["warmup"], spec["batches"])
    items = spec["batch"] * spec["batches"]
    return {
        "seconds": seconds,
        "per_s": items / seconds,
        "affinity": sorted(os.sched_getaffinity(0)),
    }


def measure(spec: dict) -> dict:
    """Runs one measurement in a fresh process of this module and returns its result."""
    cmd = [sys.executable, "-m", "benchmarks.data", "--_child", json.dumps(spec)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(
        f"measurement {spec} failed (exit {proc.returncode}):\n{proc.stderr[-4000:]}"
    )


# ---------------------------------------------------------------------------------------------
# Where one clip's time goes (one core, in-process, no pipeline).


def _timed(times: dict, name: str, fn, *args):
    start = time.perf_counter()
    out = fn(*args)
    times[name] = times.get(name, 0.0) + time.perf_counter() - start
    return out


def breakdown(data_dir: str, clips: int, thread_type: str = "SLICE", seed: int = 0) -> dict:
    """Mean ms per clip of each step, ours (the steps of ``VideoTrainTransform``) and the
    baseline (those of ``ClipDataset``), over the same ``clips`` records (random clips,
    crops and flips on both sides)."""
    from maskfeat_jax.data import images, video_decode, videos

    source = video_records.VideoRecords(data_dir, "train")
    sampling = videos.ClipSampling(
        num_frames=NUM_FRAMES,
        stride=STRIDE,
        target_fps=TARGET_FPS,
        image_size=CLIP_SIZE,
        short_side=0,
    )
    cube = masking.CubeMaskGenerator(CUBE_GRID, MASK_RATIO)
    baseline = ClipDataset(data_dir, thread_type=thread_type)
    rng = np.random.default_rng(seed)
    random.seed(seed)
    # Steps in pipeline order (a flip is only timed when drawn, as in the pipelines).
    ours = dict.fromkeys(
        ("read record", "decode (+RGB of kept frames)", "crop + resize + flip", "mask"), 0.0
    )
    base: dict[str, float] = {}
    for index in range(clips):
        index = index % len(source)
        record = _timed(ours, "read record", lambda: video_records.decode_record(source[index]))
        timeline = video_decode.Timeline.of_record(record)
        times = video_decode.clip_times(
            timeline, num_frames=NUM_FRAMES, stride=STRIDE, target_fps=TARGET_FPS, rng=rng
        )
        frames = _timed(
            ours,
            "decode (+RGB of kept frames)",
            video_decode.decode_images,
            record["video"],
            times,
            timeline,
        )
        box = images.sample_crop_box(rng, *sampling.scaled_size(record), SCALE, RATIO)
        flip = rng.random() < 0.5
        _timed(ours, "crop + resize + flip", sampling.resample, frames, box, flip)
        _timed(ours, "mask", cube, rng)

        record = _timed(base, "read record", baseline.record, index)
        decoded, (start, end) = _timed(
            base,
            "decode",
            lambda: decode_clip(
                record["video"],
                num_frames=NUM_FRAMES,
                stride=STRIDE,
                target_fps=TARGET_FPS,
                thread_type=thread_type,
            ),
        )
        frames = _timed(base, "RGB of every decoded frame", frames_to_tensor, decoded)
        frames = _timed(base, "pick frames", temporal_sampling, frames, start, end, NUM_FRAMES)
        clip = _timed(base, "normalize", normalize, frames)
        clip = _timed(base, "crop + resize", random_resized_crop, clip, CLIP_SIZE)
        _timed(base, "flip", horizontal_flip, clip)
        _timed(base, "mask", cube, rng)
    return {
        "clips": clips,
        "ours_ms": {k: 1e3 * v / clips for k, v in ours.items()},
        "baseline_ms": {k: 1e3 * v / clips for k, v in base.items()},
    }


# ---------------------------------------------------------------------------------------------
# The parent: cases, interleaved repeats, the table.


def machine_info() -> dict:
    import importlib.metadata

    model = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            model = next(line.split(":", 1)[1].strip() for line in f if "model name" in line)
    except (OSError, StopIteration):
        pass
    versions = {}
    for dist in ("jax", "torch", "torchvision", "av", "grain", "numpy", "pillow"):
        try:
            versions[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            versions[dist] = None
    return {
        "cpu": model,
        "cores": len(os.sched_getaffinity(0)),
        "python": platform.python_version(),
        **versions,
    }


def make_cases(args, cores: list[int]) -> list[dict]:
    """One dict per (pipeline, setting): the spec fields both sides share."""
    n = len(cores)
    settings = [("1 core, in-process", [cores[-1]], 0, False)]
    if not args.skip_all_cores and n > 1:
        settings.append((f"{n} cores, {n} workers", cores, n, False))
        settings.append((f"{n} cores, {n} workers pinned 1/core", cores, n, True))
    pipelines = [("video", args.batch, args.batches)]
    if not args.skip_images:
        pipelines.append(("image", args.image_batch, args.image_batches))
    return [
        dict(
            pipeline=pipeline,
            setting=name,
            cores=pinned,
            workers=workers,
            pin_workers=pin,
            batch=batch,
            batches=batches,
            warmup=args.warmup,
            read_threads=args.read_threads,
            data_dir=args.data_dir,
            thread_type=args.baseline_thread_type,
        )
        for pipeline, batch, batches in pipelines
        for name, pinned, workers, pin in settings
    ]


def run_cases(cases: list[dict], repeats: int) -> list[dict]:
    """Interleaved repeats (every case, ours then baseline, per round); medians per side."""
    results = [dict(case, ours=[], baseline=[]) for case in cases]
    for repeat in range(repeats):
        for result, case in zip(results, cases):
            for side in ("ours", "baseline"):
                r = measure(dict(case, side=side, seed=repeat))
                result[side].append(r["per_s"])
                print(
                    f"  [{repeat + 1}/{repeats}] {case['pipeline']:<5} {case['setting']:<32} "
                    f"{side:<8} {r['per_s']:7.2f}/s",
                    flush=True,
                )
    for result in results:
        result["ours_median"] = statistics.median(result["ours"])
        result["baseline_median"] = statistics.median(result["baseline"])
        result["ratio"] = result["ours_median"] / result["baseline_median"]
    return results


def print_table(results: list[dict]) -> None:
    print("| pipeline | setting | ours | baseline | ratio ours/baseline |")
    print("|---|---|---:|---:|---:|")
    for r in results:
        unit = "clips/s" if r["pipeline"] == "video" else "images/s"
        batch, setting = f"batch {r['batch']}", r["setting"]
        rows = [(unit, 1)]
        if len(r["cores"]) > 1:
            rows.append((f"{unit} per core", len(r["cores"])))
        for what, per in rows:
            print(
                f"| {r['pipeline']} {what} ({batch}) | {setting} | {r['ours_median'] / per:.2f} "
                f"| {r['baseline_median'] / per:.2f} | {r['ratio']:.2f}x |"
            )


def print_breakdown(b: dict) -> None:
    for side in ("ours", "baseline"):
        steps = b[f"{side}_ms"]
        parts = ", ".join(f"{k} {v:.1f}" for k, v in steps.items())
        print(f"  {side:<8} {sum(steps.values()):6.1f} ms/clip: {parts}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--data_dir", default=DEFAULT_DATA_DIR, help="embedded videos (built here if missing)"
    )
    parser.add_argument("--batch", type=int, default=8, help="clips per video batch")
    parser.add_argument("--batches", type=int, default=20, help="timed video batches per run")
    parser.add_argument("--image_batch", type=int, default=32)
    parser.add_argument("--image_batches", type=int, default=24)
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches per run")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved runs per side")
    parser.add_argument(
        "--read_threads",
        type=int,
        default=1,
        help="our in-process threads (per worker process with workers)",
    )
    parser.add_argument(
        "--baseline_thread_type",
        default="SLICE",
        choices=("AUTO", "SLICE"),
        help="baseline decoder threads: AUTO (the reference's multi-thread decode option) "
        "or SLICE (PyAV's default, what the reference does with that option off)",
    )
    parser.add_argument(
        "--breakdown_clips",
        type=int,
        default=32,
        help="clips timed step by step on one core (0: skip)",
    )
    parser.add_argument("--skip_images", action="store_true")
    parser.add_argument("--skip_all_cores", action="store_true")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--_child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args._child:
        print("RESULT " + json.dumps(run_child(json.loads(args._child))), flush=True)
        return {}

    from maskfeat_jax.data import embedded_video

    if not os.path.isdir(args.data_dir):
        print(f"building the embedded videos in {args.data_dir} (once, ~1 min)", flush=True)
    embedded_video.ensure(args.data_dir, embedded_video.EmbeddedVideos())
    machine = machine_info()
    cores = sorted(os.sched_getaffinity(0))
    result: dict = {"machine": machine, "settings": vars(args)}
    if args.breakdown_clips:
        spec = dict(
            pipeline="breakdown",
            cores=[cores[-1]],
            data_dir=args.data_dir,
            clips=args.breakdown_clips,
            thread_type=args.baseline_thread_type,
        )
        result["breakdown"] = measure(spec)
    result["cases"] = run_cases(make_cases(args, cores), args.repeats)

    print(
        f"\nInput pipelines, {args.repeats} interleaved repeats, medians; {args.warmup} warm-up "
        f"batches then {args.batches} video / {args.image_batches} image batches timed; "
        f"ours read_threads={args.read_threads}, baseline decoder threads "
        f"{args.baseline_thread_type}"
    )
    print(
        f"machine: {machine['cpu']}, {machine['cores']} cores; python {machine['python']}, "
        f"jax {machine['jax']}, torch {machine['torch']}, torchvision {machine['torchvision']}, "
        f"av {machine['av']}, grain {machine['grain']}\n"
    )
    print_table(result["cases"])
    if args.breakdown_clips:
        print(f"\nPer clip on one core, in-process ({args.breakdown_clips} clips, mean ms):")
        print_breakdown(result["breakdown"])
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
