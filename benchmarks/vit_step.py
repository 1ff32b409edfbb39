"""One MaskFeat pretraining step for ViT-B/16 on this CPU: ours vs PyTorch, and the GEMM peak.

    python -m benchmarks.vit_step [--batch 8] [--repeats 5] [--no-compile] [--out step.json]

The same step on both sides, on the same batch of real photos with the same masks: normalize,
HOG targets of the raw pixels (the reference HOG on the PyTorch side), mask-token replacement,
the ViT-B/16 encoder with its 108-d head, masked MSE, backward, gradient clipping at 0.02 and
an AdamW update. Ours is the jitted train step that training runs (``trainer_lib.build_trainer``);
PyTorch's is timm's ViT-B/16 plus the reference HOG and ``torch.optim.AdamW``, eager and under
``torch.compile``. Repeats are interleaved (ours, eager, compiled, ours, ...) so load from
other processes hits all alike; medians are reported.

FLOP/s: model FLOPs of the step (3 x the forward pass, from XLA's cost analysis of the lowered
forward; the same count for both sides) divided by the step's median time, against the
machine's f32 matmul peak measured in the same run (a 4096^3 GEMM, JAX and PyTorch; the
faster one is the peak).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks.hog import cpu_threads, make_batch, write_json


def _median_seconds(fn, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return times


def step_config(batch: int, depth: int = 12):
    from maskfeat_jax import defaults

    c = defaults.pretrain_config()
    c.model.variant = "B/16"
    c.model.depth = depth
    c.input.batch_size = batch
    c.total_steps = 1000
    c.optim.warmup_steps = 10
    c.mesh = (("data", 1), ("fsdp", 1), ("tensor", 1))
    return c


def make_inputs(batch: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """uint8 photos [B, 224, 224, 3] and MaskFeat block masks [B, 14, 14]."""
    from maskfeat_jax import masking

    images = make_batch(batch, 224, "pixels", seed).astype(np.uint8)
    generator = masking.make_mask_generator("block", grid=(14, 14), ratio=0.4, min_aspect=0.3)
    rng = np.random.default_rng(seed)
    return images, np.stack([generator(rng) for _ in range(batch)])


class OurStep:
    def __init__(self, images: np.ndarray, masks: np.ndarray, depth: int = 12):
        from maskfeat_jax import sharding
        from maskfeat_jax.planning import flops
        from maskfeat_jax import trainer as trainer_lib

        config = step_config(images.shape[0], depth)
        mesh = sharding.make_mesh(config.mesh, devices=jax.devices()[:1])
        self.trainer = trainer_lib.build_trainer(config, mesh)
        self.compiled = self.trainer.compile()
        self.state = self.trainer.init(jax.random.key(0))
        self.batch = sharding.to_global(
            {"image": images, "mask": masks}, self.trainer.batch_sharding
        )
        self.rng = sharding.replicate_key(jax.random.key(1), mesh)
        self.model_flops = flops.model_flops_per_step(config)

    def __call__(self) -> float:
        self.state, metrics = self.compiled(self.state, self.batch, self.rng)
        return float(metrics["loss"])


class TorchStep:
    """timm ViT-B/16 as MaskFeat uses it (mask token replaces masked patch embeddings before
    cls and positions are added; a linear head on the patch tokens) with the reference HOG."""

    def __init__(
        self, images: np.ndarray, masks: np.ndarray, compile: bool = False, depth: int = 12
    ):
        import timm
        import torch

        from benchmarks.torch_reference import torch_hog_targets

        torch.manual_seed(0)
        self.torch = torch
        self.vit = timm.create_model(
            "vit_base_patch16_224", num_classes=0, pretrained=False, depth=depth
        )
        self.mask_token = torch.nn.Parameter(torch.zeros(1, 1, 768))
        torch.nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.head = torch.nn.Linear(768, 108)
        params = [*self.vit.parameters(), self.mask_token, *self.head.parameters()]
        decay = [p for p in params if p.ndim > 1]
        no_decay = [p for p in params if p.ndim <= 1]
        self.params = params
        self.opt = torch.optim.AdamW(
            [{"params": decay, "weight_decay": 0.05}, {"params": no_decay, "weight_decay": 0.0}],
            lr=1e-4,
            betas=(0.9, 0.999),
        )
        self.pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float().contiguous()
        self.mask = torch.from_numpy(masks).flatten(1)
        mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1) * 255
        std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1) * 255

        def loss_fn(pixels, mask):
            with torch.no_grad():
                target = torch_hog_targets(pixels)
            x = self.vit.patch_embed((pixels - mean) / std)
            x = torch.where(mask[..., None], self.mask_token.to(x.dtype), x)
            x = self.vit.norm(self.vit.blocks(self.vit._pos_embed(x)))
            pred = self.head(x[:, 1:])
            per_token = ((pred - target) ** 2).mean(-1)
            m = mask.float()
            return (per_token * m).sum() / m.sum()

        self.loss_fn = torch.compile(loss_fn) if compile else loss_fn

    def __call__(self) -> float:
        torch = self.torch
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.pixels, self.mask)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 0.02)
        self.opt.step()
        return float(loss.detach())


def gemm_peak(n: int = 4096, repeats: int = 5) -> dict:
    """f32 FLOP/s of an n^3 matmul in JAX and in PyTorch (medians)."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n), np.float32))
    b = jnp.asarray(np.random.default_rng(1).standard_normal((n, n), np.float32))
    mm = jax.jit(jnp.matmul)
    mm(a, b).block_until_ready()
    jax_s = statistics.median(_median_seconds(lambda: mm(a, b).block_until_ready(), repeats))
    out = {"gemm_n": n, "gemm_jax_flops": 2 * n**3 / jax_s}
    try:
        import torch

        ta, tb = (torch.from_numpy(np.array(x)) for x in (a, b))
        torch.mm(ta, tb)
        torch_s = statistics.median(_median_seconds(lambda: torch.mm(ta, tb), repeats))
        out["gemm_torch_flops"] = 2 * n**3 / torch_s
    except ImportError:
        out["gemm_torch_flops"] = None
    out["gemm_peak_flops"] = max(v for k, v in out.items() if k.endswith("flops") and v)
    return out


def measure(
    batch: int = 8,
    repeats: int = 5,
    with_compile: bool = True,
    gemm_n: int = 4096,
    depth: int = 12,
) -> dict:
    """``depth`` below ViT-B's 12 only for smoke runs (both contenders get the same depth)."""
    images, masks = make_inputs(batch)
    contenders = {"jax": OurStep(images, masks, depth)}
    torch_threads = None
    try:
        import torch

        torch_threads = cpu_threads()
        torch.set_num_threads(torch_threads)
        contenders["torch_eager"] = TorchStep(images, masks, depth=depth)
        if with_compile:
            contenders["torch_compile"] = TorchStep(images, masks, compile=True, depth=depth)
    except ImportError:
        pass
    first_loss = {}
    compile_s = {}
    for name, step in contenders.items():  # warm-up (and compilation for torch.compile)
        t0 = time.perf_counter()
        first_loss[name] = step()
        step()
        compile_s[name] = time.perf_counter() - t0
    times: dict[str, list[float]] = {name: [] for name in contenders}
    for _ in range(repeats):
        for name, step in contenders.items():
            times[name] += _median_seconds(step, 1)
    model_flops = contenders["jax"].model_flops
    result = {
        "batch": batch,
        "depth": depth,
        "repeats": repeats,
        "cpu_threads": cpu_threads(),
        "torch_threads": torch_threads,
        "jax_version": jax.__version__,
        "model_flops_per_step": model_flops,
        "first_loss": first_loss,
        "warmup_seconds": compile_s,
        **gemm_peak(gemm_n),
    }
    for name, ts in times.items():
        s = statistics.median(ts)
        result[f"{name}_step_s"] = s
        result[f"{name}_images_per_s"] = batch / s
        result[f"{name}_flops"] = model_flops / s
        result[f"{name}_fraction_of_gemm_peak"] = model_flops / s / result["gemm_peak_flops"]
    for name in contenders:
        if name != "jax":
            result[f"jax_over_{name}"] = result[f"{name}_step_s"] / result["jax_step_s"]
    return result


def profile(batch: int = 8, top: int = 12) -> list[tuple[str, float]]:
    """Where our step's time goes: one traced step, XLA CPU operations summed by kind
    (fusion names without their numbers), in milliseconds. Tracing slows the step; compare
    the shares, not the totals."""
    import collections
    import glob
    import gzip
    import re
    import tempfile

    images, masks = make_inputs(batch)
    step = OurStep(images, masks)
    step()
    step()
    with tempfile.TemporaryDirectory() as directory:
        with jax.profiler.trace(directory, create_perfetto_trace=True):
            step()
        (path,) = glob.glob(f"{directory}/**/perfetto_trace.json.gz", recursive=True)
        with gzip.open(path) as f:
            trace = json.load(f)
    events = trace["traceEvents"] if isinstance(trace, dict) else trace
    kinds: collections.Counter = collections.Counter()
    for e in events:
        name = e.get("name", "")
        if e.get("ph") != "X" or name.startswith("$") or "Execute" in name or "(" in name:
            continue
        kinds[re.sub(r"[.\d]+$", "", name)] += e.get("dur", 0) / 1e3
    return kinds.most_common(top)


def print_table(r: dict) -> None:
    peak = r["gemm_peak_flops"]
    print(
        f"MaskFeat ViT-B/16 pretraining step"
        + (f" cut to {r['depth']} blocks" if r.get("depth", 12) != 12 else "")
        + f", batch {r['batch']}, {r['repeats']} interleaved "
        f"repeats (medians); {r['cpu_threads']} CPU threads; model FLOPs "
        f"{r['model_flops_per_step'] / 1e9:.0f} G per step"
    )
    print(
        f"f32 GEMM {r['gemm_n']}^3: JAX {r['gemm_jax_flops'] / 1e9:.0f} GFLOP/s, PyTorch "
        + (f"{r['gemm_torch_flops'] / 1e9:.0f}" if r["gemm_torch_flops"] else "-")
        + f" GFLOP/s; peak {peak / 1e9:.0f}"
    )
    print(f"{'implementation':<16} {'s/step':>8} {'images/s':>9} {'GFLOP/s':>8} {'of peak':>8}")
    for name in ("jax", "torch_eager", "torch_compile"):
        if f"{name}_step_s" not in r:
            continue
        print(
            f"{name:<16} {r[f'{name}_step_s']:>8.2f} {r[f'{name}_images_per_s']:>9.2f} "
            f"{r[f'{name}_flops'] / 1e9:>8.0f} {100 * r[f'{name}_fraction_of_gemm_peak']:>7.0f}%"
        )
    for name in ("torch_eager", "torch_compile"):
        if f"jax_over_{name}" in r:
            print(f"ours vs {name}: {r[f'jax_over_{name}']:.2f}x images/s")


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--out", help="write the results as JSON to this path")
    parser.add_argument("--profile", action="store_true", help="also profile one step of ours")
    args = parser.parse_args(argv)
    if args.profile:
        ops = profile(args.batch)
        total = sum(ms for _, ms in ops)
        print("our step, XLA CPU operations by kind (one traced step):")
        for name, ms in ops:
            print(f"  {ms:9.1f} ms {100 * ms / total:5.1f}%  {name}")
    result = measure(args.batch, args.repeats, with_compile=not args.no_compile)
    print_table(result)
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
