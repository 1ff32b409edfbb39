"""MViTv2-S: forward+backward clips/s, ours (JAX) vs torchvision's MViT class (PyTorch eager),
and full-size parity between the two.

Run from the repository root:

    python -m benchmarks.mvit [--batch 2] [--frames 16] [--size 224] [--repeats 5] [--out mvit.json]

Both sides are the MaskFeat MViTv2-S pretraining encoder (16 blocks, the block-14 q stride
removed), built from one spec: torchvision's generic ``MViT`` with
``torch_names.torchvision_mvit_kwargs`` and random weights, ours holding the same weights
through the exporter's name mapping. Each timed call is one forward and backward pass of
``mean(last-block tokens ** 2)`` with respect to every parameter on the same float32 batch
of clips (crops of the bundled photos, normalized). JAX is jitted and warmed up; PyTorch runs
eagerly with as many intra-op threads as JAX's CPU client has cores. Repeats are
interleaved (jax, torch, jax, ...) so load from other processes hits both alike; medians.

XLA's CPU client allocates each step's temporaries (gigabytes for this model) afresh, so with
glibc's allocator every step pays page faults for them; tcmalloc keeps the memory and cuts
our step time by ~45% (PyTorch's by ~15%). Both sides share the allocator of the process:

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python -m benchmarks.mvit

(Debian package libgoogle-perftools4; TPU VM setups preload tcmalloc the same way.)

``--blocks`` also times each block on its own (same weights, its input shape, forward and
backward of ``mean(block output ** 2)`` with respect to the block's parameters and its input)
and the model's matmul shapes (x @ W, g @ W^T and x^T @ g of every Linear), ours vs PyTorch.

``--parity`` (on by default) first checks one full-size clip: last-block tokens of the
pretraining form and mean-pooled logits of the fine-tuning form (400 classes, block-14 q
stride restored), max |ours - torchvision| in float32 and float64.
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx

from benchmarks import torch_reference as ref
from benchmarks.hog import cpu_threads, make_batch, write_json
from maskfeat_jax.models import mvit

K400_MEAN, K400_STD = 0.45, 0.225


def make_clips(batch: int, frames: int, size: int, seed: int = 0) -> np.ndarray:
    """float32 [B, T, H, W, 3]: each clip a photo crop panning one pixel per frame,
    normalized with the Kinetics mean/std."""
    crops = make_batch(batch, size + frames, "pixels", seed)
    clips = np.stack([[c[t : t + size, t : t + size] for t in range(frames)] for c in crops])
    return ((clips / 255.0 - K400_MEAN) / K400_STD).astype(np.float32)


def _to_torch(clips: np.ndarray, dtype=torch.float32) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(clips.transpose(0, 4, 1, 2, 3))).to(dtype)


def _encode_fn(model):
    return nnx.jit(lambda m, x: m.encode(x))


def check_parity(frames: int = 16, size: int = 224) -> dict:
    """Max |ours - torchvision| on one clip for the PT tokens and the FT logits."""
    clips = make_clips(1, frames, size, seed=1)
    out = {}
    for dtype_name in ("float32", "float64"):
        tdtype = getattr(torch, dtype_name)
        with jax.enable_x64(dtype_name == "float64"):
            jdtype = jnp.dtype(dtype_name)
            for form, num_classes in (("pt", 0), ("ft", 400)):
                spec = mvit.make_spec(
                    "MViTv2-S", num_frames=frames, image_size=size, num_classes=num_classes
                )
                tv = ref.torchvision_mvit(spec, dtype=tdtype)
                ours, _ = ref.jax_mvit_from_torchvision(tv, spec, jdtype)
                x = jnp.asarray(clips, jdtype)
                with torch.no_grad():
                    tokens = ref.torchvision_mvit_tokens(tv, _to_torch(clips, tdtype))
                    if num_classes:
                        want = ref.torchvision_mvit_mean_pool_logits(tv, tokens).numpy()
                        got = nnx.jit(lambda m, v: m(v))(ours, x)
                    else:
                        want = tokens.numpy()
                        got = _encode_fn(ours)(ours, x)
                got = np.asarray(got)
                if got.shape != want.shape:
                    raise AssertionError(f"{form} {dtype_name}: {got.shape} vs {want.shape}")
                out[f"{form}_{dtype_name}_max_abs_diff"] = float(np.max(np.abs(got - want)))
                out[f"{form}_{dtype_name}_max_abs_value"] = float(np.max(np.abs(want)))
    return out


def measure_train(
    batch: int = 2, frames: int = 16, size: int = 224, repeats: int = 5, warmup: int = 1
) -> dict:
    """Median seconds per forward+backward pass for ours and torchvision (float32)."""
    spec = mvit.make_spec("MViTv2-S", num_frames=frames, image_size=size)
    tv = ref.torchvision_mvit(spec)
    ours, _ = ref.jax_mvit_from_torchvision(tv, spec, jnp.float32)
    clips = make_clips(batch, frames, size)

    graphdef, params, rest = nnx.split(ours, nnx.Param, ...)

    def loss(p, x):
        model = nnx.merge(graphdef, p, rest)
        return jnp.mean(model.encode(x) ** 2)

    x = jax.device_put(jnp.asarray(clips))
    start = time.perf_counter()
    jax_step = jax.jit(jax.value_and_grad(loss)).lower(params, x).compile()
    compile_s = time.perf_counter() - start

    def run_jax():
        value, grads = jax_step(params, x)
        jax.block_until_ready(grads)
        return float(value)

    threads = cpu_threads()
    torch.set_num_threads(threads)
    xt = _to_torch(clips)
    tv.train(False)

    def run_torch():
        tv.zero_grad(set_to_none=True)
        value = ref.torchvision_mvit_tokens(tv, xt).pow(2).mean()
        value.backward()
        return value.item()

    losses = (run_jax(), run_torch())  # same weights, same batch: the same loss
    for _ in range(warmup - 1):
        run_jax(), run_torch()
    times: dict[str, list[float]] = {"jax": [], "torch": []}
    for _ in range(repeats):
        for name, fn in (("jax", run_jax), ("torch", run_torch)):
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    jax_s, torch_s = statistics.median(times["jax"]), statistics.median(times["torch"])
    return {
        "batch": batch,
        "frames": frames,
        "size": size,
        "repeats": repeats,
        "jax_s": jax_s,
        "torch_s": torch_s,
        "jax_clips_per_s": batch / jax_s,
        "torch_clips_per_s": batch / torch_s,
        "speedup": torch_s / jax_s,
        "jax_times": times["jax"],
        "torch_times": times["torch"],
        "jax_compile_s": compile_s,
        "loss_jax": losses[0],
        "loss_torch": losses[1],
        "cpu_threads": threads,
        "torch_threads": torch.get_num_threads(),
        "jax_version": jax.__version__,
        "torch_version": torch.__version__,
        "jax_backend": jax.default_backend(),
        "allocator": os.environ.get("LD_PRELOAD") or "default (glibc malloc)",
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
    }


def _interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, repeats interleaved, after one untimed call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def measure_blocks(batch: int = 2, frames: int = 16, size: int = 224, repeats: int = 3) -> list:
    """Per block: median seconds of forward+backward, ours vs torchvision."""
    spec = mvit.make_spec("MViTv2-S", num_frames=frames, image_size=size)
    tv = ref.torchvision_mvit(spec)
    ours, _ = ref.jax_mvit_from_torchvision(tv, spec, jnp.float32)
    torch.set_num_threads(cpu_threads())
    rng = np.random.default_rng(0)
    rows, seen = [], {}
    for i, b in enumerate(spec.blocks()):
        key = (b.dim, b.dim_out, b.num_heads, b.q_stride, b.kv_stride, b.input_thw)
        if key in seen:  # same shapes and kernels as an earlier block: same speed
            rows.append(dict(seen[key], block=i))
            continue
        x = rng.normal(size=(batch, 1 + math.prod(b.input_thw), b.dim)).astype(np.float32)
        graphdef, params, rest = nnx.split(ours.blocks[i], nnx.Param, ...)

        def loss(p, x):
            return jnp.mean(nnx.merge(graphdef, p, rest)(x) ** 2)

        xj = jnp.asarray(x)
        step = jax.jit(jax.value_and_grad(loss, argnums=(0, 1))).lower(params, xj).compile()
        block, xt = tv.blocks[i], torch.from_numpy(x).requires_grad_(True)

        def run_torch(block=block, xt=xt, thw=b.input_thw):
            block.zero_grad(set_to_none=True)
            xt.grad = None
            block(xt, thw)[0].pow(2).mean().backward()

        t = _interleaved(
            {"jax": lambda: jax.block_until_ready(step(params, xj)), "torch": run_torch}, repeats
        )
        seen[key] = dict(
            block=i, dim=b.dim, heads=b.num_heads, thw=b.input_thw, q_stride=b.q_stride,
            jax_s=t["jax"], torch_s=t["torch"], ratio=t["torch"] / t["jax"],
        )  # fmt: skip
        rows.append(seen[key])
    return rows


def measure_matmuls(batch: int = 2, frames: int = 16, size: int = 224, repeats: int = 5) -> list:
    """GFLOP/s of the Linear layers' three matmul shapes per distinct (tokens, in, out)."""
    spec = mvit.make_spec("MViTv2-S", num_frames=frames, image_size=size)
    torch.set_num_threads(cpu_threads())
    shapes = set()
    for b in spec.blocks():
        m = batch * math.prod(b.input_thw)
        m_out = batch * math.prod(b.output_thw)
        shapes |= {(m, b.dim, 3 * b.dim), (m_out, b.dim, int(b.dim * spec.mlp_ratio))}
    rng = np.random.default_rng(0)
    rows = []
    for m, i, o in sorted(shapes, reverse=True):
        x, w, g = (rng.random(s, dtype=np.float32) for s in ((m, i), (i, o), (m, o)))
        forms = {
            "x @ W": (lambda a, b: a @ b, x, w),
            "g @ W^T": (lambda a, b: a @ b.T, g, w),
            "x^T @ g": (lambda a, b: a.T @ b, x, g),
        }
        for form, (fn, a, b) in forms.items():
            aj, bj = jnp.asarray(a), jnp.asarray(b)
            compiled = jax.jit(fn).lower(aj, bj).compile()
            at, bt = torch.from_numpy(a), torch.from_numpy(b)
            t = _interleaved(
                {
                    "jax": lambda: jax.block_until_ready(compiled(aj, bj)),
                    "torch": lambda: fn(at, bt),
                },
                repeats,
            )
            flops = 2 * m * i * o
            rows.append(
                dict(shape=(m, i, o), form=form, jax_gflops=flops / t["jax"] / 1e9,
                     torch_gflops=flops / t["torch"] / 1e9)
            )  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--frames", type=int, default=16)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per side")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls per side")
    parser.add_argument("--no-parity", action="store_true", help="skip the full-size check")
    parser.add_argument(
        "--blocks", action="store_true", help="also time each block and the matmul shapes"
    )
    parser.add_argument("--out", help="write the results as JSON to this path")
    args = parser.parse_args(argv)
    result: dict = {}
    if not args.no_parity:
        result["parity"] = check_parity(args.frames, args.size)
        p = result["parity"]
        print(
            f"Parity on one {args.frames}x{args.size}x{args.size} clip, max |ours - torchvision|:"
        )
        for form, what in (("pt", "PT last-block tokens"), ("ft", "FT mean-pooled logits")):
            print(
                f"  {what:<24} float32 {p[f'{form}_float32_max_abs_diff']:.2e}   "
                f"float64 {p[f'{form}_float64_max_abs_diff']:.2e}   "
                f"(max |value| {p[f'{form}_float32_max_abs_value']:.3g})"
            )
    r = measure_train(args.batch, args.frames, args.size, args.repeats, args.warmup)
    result.update(r)
    print(
        f"MViTv2-S forward+backward, batch {r['batch']} x {r['frames']}x{r['size']}x{r['size']}, "
        f"float32, {r['repeats']} interleaved repeats, medians; {r['cpu_threads']} CPU threads; "
        f"jax {r['jax_version']}, torch {r['torch_version']}; allocator: {r['allocator']}"
    )
    print(f"{'impl':<22} {'s/batch':>9} {'clips/s':>9}")
    print(f"{'ours (jax.jit)':<22} {r['jax_s']:>9.2f} {r['jax_clips_per_s']:>9.3f}")
    print(f"{'torchvision (eager)':<22} {r['torch_s']:>9.2f} {r['torch_clips_per_s']:>9.3f}")
    print(f"throughput ratio ours/torchvision: {r['speedup']:.2f}x")
    print(
        f"(compile {r['jax_compile_s']:.0f} s once; loss ours {r['loss_jax']:.6f} vs "
        f"torchvision {r['loss_torch']:.6f})"
    )
    if args.blocks:
        result["blocks"] = measure_blocks(args.batch, args.frames, args.size)
        print("Per block, forward+backward, 3 interleaved repeats, medians (ms):")
        for b in result["blocks"]:
            print(
                f"  block {b['block']:2d} dim {b['dim']:3d} heads {b['heads']} "
                f"thw {b['thw']} q stride {b['q_stride']}: ours {1e3 * b['jax_s']:7.1f}  "
                f"torchvision {1e3 * b['torch_s']:7.1f}  ratio {b['ratio']:.2f}x"
            )
        result["matmuls"] = measure_matmuls(args.batch, args.frames, args.size)
        print("Linear-layer matmul shapes (tokens x in x out), GFLOP/s, 5 repeats, medians:")
        for m in result["matmuls"]:
            print(
                f"  {str(m['shape']):<20} {m['form']:<8} ours {m['jax_gflops']:5.0f}  "
                f"PyTorch {m['torch_gflops']:5.0f}"
            )
    write_json(args.out, result)
    return result


if __name__ == "__main__":
    main()
