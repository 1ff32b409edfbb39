"""HOG throughput: maskfeat_jax.hog vs a faithful PyTorch implementation (CPU).

Run from the repository root:

    python -m benchmarks.hog [--batch 64] [--size 224] [--repeats 10] [--out hog.json]

Both sides get the same float32 batch: crops of the photos bundled with
scikit-image / scikit-learn as raw 0..255 pixel values (the default; what the
train step feeds the HOG), ImageNet-normalized (``--input normalized``), or
Gaussian noise (``--input noise``). JAX functions are jitted and warmed up; every timing ends
with ``block_until_ready``. PyTorch runs under ``torch.no_grad`` with as many
intra-op threads as JAX's CPU client has cores. Repeats are interleaved
(jax, torch, jax, torch, ...) so load from other processes hits both alike;
medians are reported.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from maskfeat_jax import hog as hog_lib
from maskfeat_jax import hog_gradients
from maskfeat_jax.hog import hog, hog_targets

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def cpu_threads() -> int:
    """Cores available to this process (what XLA's CPU thread pool uses)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def _photos() -> list[np.ndarray]:
    import skimage.data
    from sklearn.datasets import load_sample_image

    return [
        skimage.data.astronaut(),
        skimage.data.chelsea(),
        skimage.data.coffee(),
        skimage.data.rocket(),
        load_sample_image("china.jpg"),
        load_sample_image("flower.jpg"),
    ]


def make_batch(batch: int, size: int, kind: str = "pixels", seed: int = 0) -> np.ndarray:
    """float32 NHWC batch: random crops of real photos (raw pixels or normalized), or noise."""
    rng = np.random.default_rng(seed)
    if kind == "noise":
        return rng.standard_normal((batch, size, size, 3), dtype=np.float32)
    photos = [p for p in _photos() if min(p.shape[:2]) >= size]
    if not photos:
        raise ValueError(f"no bundled photo is at least {size}px; use --input noise.")
    crops = []
    for i in range(batch):
        p = photos[i % len(photos)]
        y = rng.integers(0, p.shape[0] - size + 1)
        x = rng.integers(0, p.shape[1] - size + 1)
        crop = p[y : y + size, x : x + size]
        crops.append(crop[:, ::-1] if rng.random() < 0.5 else crop)
    x = np.stack(crops).astype(np.float32)
    if kind == "pixels":
        return x
    return (x / 255.0 - IMAGENET_MEAN) / IMAGENET_STD


def write_json(path: str | None, result: dict) -> None:
    """The benchmark's figures as JSON at ``path`` (nothing when no path was asked for)."""
    if path:
        with open(path, "w") as f:
            json.dump(result, f, indent=2)


def _timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def magnitude_dtype(input_dtype=jnp.bfloat16) -> str:
    """dtype of the gradient magnitude inside hog() for a given input dtype."""
    spec = jax.ShapeDtypeStruct((1, 16, 16, 3), input_dtype)
    magnitude = lambda v: hog_gradients.magnitude(*hog_gradients.gradients(v))
    return str(jax.eval_shape(magnitude, spec).dtype)


def measure_hog(
    batch: int = 64,
    size: int = 224,
    repeats: int = 10,
    *,
    warmup: int = 2,
    kind: str = "pixels",
    with_torch: bool = True,
    with_atan2: bool = False,
) -> dict:
    """Median seconds per batch for HOG and the 108-d target path.

    Returns a dict with the medians (``*_s``), images/s, the JAX/PyTorch
    throughput ratios and the settings. PyTorch entries are None if torch is
    not installed or ``with_torch`` is False. ``with_atan2`` also times our
    HOG with the plain jnp.arctan2 binning (same result, the CPU default uses
    sign tests).
    """
    x_np = make_batch(batch, size, kind)
    x = jax.device_put(jnp.asarray(x_np))
    cases: dict[str, Callable[[], object]] = {
        "jax_hog": lambda: hog(x).block_until_ready(),
        "jax_targets": lambda: hog_targets(x).block_until_ready(),
    }
    if with_atan2:
        plain = jax.jit(lambda v: hog_lib._hog_cells(v, 9, 8, 0, method="atan2"))
        cases["jax_hog_atan2"] = lambda: plain(x).block_until_ready()

    torch_threads = None
    if with_torch:
        try:
            import torch
        except ImportError:
            with_torch = False
    if with_torch:
        from benchmarks.torch_reference import TorchHOG, torch_hog_targets

        torch_threads = cpu_threads()
        torch.set_num_threads(torch_threads)
        xt = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
        module = TorchHOG()

        def torch_hog():
            with torch.no_grad():
                return module(xt)

        def torch_targets():
            with torch.no_grad():
                return torch_hog_targets(xt)

        cases["torch_hog"] = torch_hog
        cases["torch_targets"] = torch_targets

    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times: dict[str, list[float]] = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            times[name].append(_timed(fn))

    result: dict = {
        "batch": batch,
        "size": size,
        "repeats": repeats,
        "input": kind,
        "jax_backend": jax.default_backend(),
        "jax_version": jax.__version__,
        "cpu_threads": cpu_threads(),
        "torch_threads": torch_threads,
        "machine": platform.processor() or platform.machine(),
        "magnitude_dtype_for_bf16_input": magnitude_dtype(jnp.bfloat16),
    }
    for name in ("jax_hog", "jax_targets", "jax_hog_atan2", "torch_hog", "torch_targets"):
        med = statistics.median(times[name]) if name in times else None
        result[f"{name}_s"] = med
        result[f"{name}_images_per_s"] = batch / med if med else None
        result[f"{name}_all_s"] = times.get(name)
    for what in ("hog", "targets"):
        j, t = result[f"jax_{what}_s"], result[f"torch_{what}_s"]
        result[f"speedup_{what}"] = t / j if (j and t) else None
    return result


def measure_step_fraction(
    batch: int = 8, repeats: int = 3, *, variant: str = "B/16", size: int = 224
) -> dict:
    """HOG targets' time against one full ViT pretraining step (forward, HOG, loss,
    backward, AdamW update) at the same batch, both jitted on this host's devices."""
    import sys

    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    from maskfeat_jax import defaults
    from maskfeat_jax import sharding
    from maskfeat_jax import trainer as trainer_lib

    config = defaults.pretrain_config()
    config.model.update(variant=variant, image_size=size)
    config.input.batch_size = batch
    config.total_steps = 100
    config.optim.warmup_steps = 10
    mesh = sharding.make_mesh((("data", 1), ("fsdp", 1), ("tensor", 1)), devices=jax.devices()[:1])
    trainer = trainer_lib.build_trainer(config, mesh)
    step = trainer.compile()
    state = trainer.init(jax.random.key(0))
    pixels = make_batch(batch, size, "pixels")
    grid = size // 16
    host = {
        "image": pixels.astype(np.uint8),
        "mask": np.random.default_rng(0).random((batch, grid, grid)) < 0.4,
    }
    device_batch = sharding.to_global(host, trainer.batch_sharding)
    rng = sharding.replicate_key(jax.random.key(0), trainer.mesh)
    x = jax.device_put(jnp.asarray(pixels))
    targets = jax.jit(hog_targets)
    targets(x).block_until_ready()
    state, metrics = step(state, device_batch, rng)  # warm-up
    jax.block_until_ready(metrics)
    step_times, hog_times = [], []
    for _ in range(repeats):
        start = time.perf_counter()
        state, metrics = step(state, device_batch, rng)
        jax.block_until_ready(metrics)
        step_times.append(time.perf_counter() - start)
        hog_times.append(_timed(lambda: targets(x).block_until_ready()))
    step_s, hog_s = statistics.median(step_times), statistics.median(hog_times)
    return {
        "step_variant": variant,
        "step_batch": batch,
        "step_s": step_s,
        "step_images_per_s": batch / step_s,
        "step_hog_s": hog_s,
        "hog_fraction_of_step": hog_s / step_s,
    }


def _print_table(r: dict) -> None:
    print(
        f"HOG on {r['batch']}x{r['size']}x{r['size']}x3 float32 ({r['input']}), "
        f"{r['repeats']} interleaved repeats, medians; CPU threads: {r['cpu_threads']} "
        f"(torch: {r['torch_threads']}), jax {r['jax_version']} on {r['jax_backend']}"
    )
    print(f"{'path':<10} {'impl':<10} {'ms/batch':>10} {'images/s':>10}")
    if r["jax_hog_atan2_s"] is not None:
        s = r["jax_hog_atan2_s"]
        print(f"{'hog':<10} {'jax-atan2':<10} {s * 1e3:>10.1f} {r['batch'] / s:>10.1f}")
    for what in ("hog", "targets"):
        for impl in ("jax", "torch"):
            s = r[f"{impl}_{what}_s"]
            if s is None:
                continue
            print(f"{what:<10} {impl:<10} {s * 1e3:>10.1f} {r['batch'] / s:>10.1f}")
        if r[f"speedup_{what}"] is not None:
            print(f"{what:<10} {'jax/torch throughput':<21} {r[f'speedup_{what}']:>10.2f}x")
    print(f"gradient magnitude dtype for bfloat16 input: {r['magnitude_dtype_for_bf16_input']}")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=10, help="timed repeats per case")
    parser.add_argument("--warmup", type=int, default=2, help="untimed calls per case")
    parser.add_argument("--input", choices=("pixels", "normalized", "noise"), default="pixels")
    parser.add_argument("--no-torch", action="store_true", help="time the JAX side only")
    parser.add_argument(
        "--with-atan2", action="store_true", help="also time our HOG with plain jnp.arctan2 binning"
    )
    parser.add_argument(
        "--step-batch",
        type=int,
        default=8,
        help="batch of the ViT-B train step HOG is compared with (0: skip)",
    )
    parser.add_argument("--step-repeats", type=int, default=3)
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    result = measure_hog(
        args.batch,
        args.size,
        args.repeats,
        warmup=args.warmup,
        kind=args.input,
        with_torch=not args.no_torch,
        with_atan2=args.with_atan2,
    )
    _print_table(result)
    if args.step_batch:
        step = measure_step_fraction(args.step_batch, args.step_repeats)
        result.update(step)
        print(
            f"ViT-{step['step_variant']} train step, batch {step['step_batch']}: "
            f"{step['step_s']:.2f} s ({step['step_images_per_s']:.2f} images/s); HOG targets "
            f"for the same batch {step['step_hog_s'] * 1e3:.1f} ms = "
            f"{100 * step['hog_fraction_of_step']:.2f}% of the step"
        )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
