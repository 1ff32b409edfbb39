"""All side-by-side CPU benchmarks in one run: JSON and a Markdown table.

    python -m benchmarks.run [--out benchmarks/results] [--repeats 5] [--quick]

1. HOG targets, batch 64 at 224 x 224: ours vs the faithful PyTorch reference HOG.
2. One MaskFeat ViT-B/16 pretraining step at batch 8: ours vs PyTorch eager and
   ``torch.compile`` (timm ViT-B + the reference HOG + AdamW), images/s.
3. Achieved model FLOP/s of each step against the machine's f32 GEMM peak, measured in the
   same run.

Writes ``OUT/latest.json`` and ``OUT/latest.md`` (the table the README shows, with the
machine it ran on). ``--quick`` shrinks sizes (the ViT to 2 blocks) for a smoke run (its
numbers mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform

import jax


def machine() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [line.split(":", 1)[1].strip() for line in f if line.startswith("model name")]
        if names:
            cpu = names[0]
    except OSError:
        pass
    from benchmarks.hog import cpu_threads

    info = {
        "cpu": cpu,
        "cores_used": cpu_threads(),
        "python": platform.python_version(),
        "jax": jax.__version__,
        "date": datetime.date.today().isoformat(),
    }
    try:
        import torch

        info["torch"] = torch.__version__
    except ImportError:
        info["torch"] = None
    return info


def markdown(result: dict) -> str:
    m, h, s = result["machine"], result["hog"], result["vit_step"]
    lines = [
        f"Measured {m['date']} on {m['cpu']} ({m['cores_used']} cores), JAX {m['jax']}, "
        f"PyTorch {m['torch']}; medians of interleaved repeats in one run.",
        "",
        "| benchmark | ours | PyTorch eager | PyTorch compile | ours vs eager |",
        "|---|---|---|---|---|",
        f"| HOG targets, {h['batch']} x {h['size']}^2 (images/s) | "
        f"{h['batch'] / h['jax_targets_s']:.0f} | "
        + (f"{h['batch'] / h['torch_targets_s']:.0f}" if h.get("torch_targets_s") else "-")
        + " | - | "
        + (f"{h['speedup_targets']:.2f}x" if h.get("speedup_targets") else "-")
        + " |",
    ]

    def cell(name, key, fmt):
        return fmt.format(s[f"{name}_{key}"]) if f"{name}_{key}" in s else "-"

    rate = "{:.2f}"
    lines.append(
        f"| ViT-B/16 MaskFeat step, batch {s['batch']} (images/s) | "
        f"{cell('jax', 'images_per_s', rate)} | {cell('torch_eager', 'images_per_s', rate)} | "
        f"{cell('torch_compile', 'images_per_s', rate)} | "
        + (f"{s['jax_over_torch_eager']:.2f}x" if "jax_over_torch_eager" in s else "-")
        + " |"
    )
    pct = "{:.0%}"
    lines.append(
        f"| model FLOP/s of that step, share of the f32 GEMM peak "
        f"({s['gemm_peak_flops'] / 1e9:.0f} GFLOP/s) | "
        f"{cell('jax', 'fraction_of_gemm_peak', pct)} | "
        f"{cell('torch_eager', 'fraction_of_gemm_peak', pct)} | "
        f"{cell('torch_compile', 'fraction_of_gemm_peak', pct)} | |"
    )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args(argv)
    from benchmarks import hog, vit_step

    hog_batch, step_batch, repeats = (4, 1, 1) if args.quick else (64, 8, args.repeats)
    result = {"machine": machine()}
    print("== HOG targets")
    result["hog"] = hog.measure_hog(hog_batch, 224, max(repeats, 3))
    hog._print_table(result["hog"])
    print("== ViT-B/16 pretraining step")
    result["vit_step"] = vit_step.measure(
        step_batch,
        repeats,
        with_compile=not args.no_compile,
        gemm_n=1024 if args.quick else 4096,
        depth=2 if args.quick else 12,
    )
    vit_step.print_table(result["vit_step"])
    table = markdown(result)
    print(table)
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "latest.json"), "w") as f:
        json.dump(result, f, indent=2)
    with open(os.path.join(args.out, "latest.md"), "w") as f:
        f.write(table)
    return result


if __name__ == "__main__":
    main()
