"""The plan as text: the report of a plan's figures, and the knobs that make a config fit
when it does not."""

from __future__ import annotations

from typing import Any


def fit_hints(config, chips: int) -> list[str]:
    batch = config.input.batch_size
    hints = []
    if not config.model.get("remat", False):
        hints.append("--config.model.remat=True (recompute activations in the backward pass)")
    if config.model.get("dtype", "float32") == "float32":
        hints.append("--config.model.dtype=bfloat16 (half the activation memory)")
    hints.append(f"a smaller --config.input.batch_size (now {batch}, {batch / chips:g} per chip)")
    hints.append(
        "more chips for the parameters: --config.mesh with a larger fsdp axis, or a bigger topology"
    )
    return hints


def does_not_fit(r: dict[str, Any], config) -> str:
    gib = 2**30
    return (
        f"{r['model']} at batch {r['global_batch']} needs {r['hbm_total_bytes'] / gib:.2f} GiB "
        f"per chip on {r['topology']} (arguments {r['hbm_bytes']['arguments'] / gib:.2f}, "
        f"temporaries {r['hbm_bytes']['temporaries'] / gib:.2f}) but a {r['chip'].split(':')[0]} "
        f"chip has {r['hbm_capacity_bytes'] / gib:.1f} GiB. Try: "
        + "; ".join(fit_hints(config, r["chips"]))
        + "."
    )


def format_report(r: dict[str, Any]) -> str:
    """The figures of ``roofline.plan`` as the report the command prints."""
    gib = 2**30
    s = r["seconds"]
    lines = [
        f"{r['model']} ({r['dtype']}, remat {'on' if r['remat'] else 'off'}) on {r['topology']}"
        + (f" x {r['num_slices']} slices" if r.get("num_slices", 1) > 1 else "")
        + ": "
        f"{r['chips']} chips, mesh {r['mesh']}, global batch {r['global_batch']} "
        f"({r['per_chip_batch']:g} per chip); compiled in {r['compile_seconds']:.0f} s",
        f"  chip: {r['chip']}",
        "  HBM per chip: "
        + ", ".join(f"{k} {v / gib:.2f} GiB" for k, v in r["hbm_bytes"].items())
        + f"; total {r['hbm_total_bytes'] / gib:.2f} of {r['hbm_capacity_bytes'] / gib:.1f} GiB "
        f"({100 * r['hbm_fraction']:.0f}%)",
        (
            f"  FLOPs per step: {r['flops_per_chip']:.3g} per chip as compiled, model "
            f"{r['model_flops_per_step']:.3g} for the whole batch (compiled / model = "
            f"{r['recompute_factor']:.2f})"
        ),
        f"  collectives per chip per step (from the {r.get('collectives_from', 'compiled HLO')}): "
        + (
            ", ".join(f"{k} {v / 1e9:.2f} GB" for k, v in r["collective_bytes_per_chip"].items())
            or "none"
        ),
        (
            f"  roofline (projection, not a measurement): compute {s['compute'] * 1e3:.1f} ms, "
            f"HBM {s.get('hbm_recount', s['hbm']) * 1e3:.1f} ms (HBM-resident buffers, re-counted) "
            f"to {s['hbm'] * 1e3:.1f} ms (XLA's count of all operands), "
            f"ICI {s['ici'] * 1e3:.1f} ms "
            f"-> limited by {r['limited_by']} (worst case: "
            f"{r.get('limited_by_worst_case', r['limited_by'])})"
        ),
        (
            f"  projected step {s['step_overlapped'] * 1e3:.1f} ms (best case: re-counted HBM, "
            f"collectives overlapped) to {s['step_serial'] * 1e3:.1f} ms (worst case: XLA's HBM "
            f"count, collectives not overlapped); MFU {100 * r['mfu_overlapped']:.0f}% to "
            f"{100 * r['mfu_serial']:.0f}%; {r['examples_per_second']:,.0f} examples/s or more"
        ),
        "  HBM traffic by source (top-level operations, re-counted from the HLO): "
        + ", ".join(
            f"{k} {100 * v / max(r.get('hbm_bytes_recounted', 0), 1):.0f}%"
            for k, v in list(r.get("hbm_bytes_by_source", {}).items())[:6]
        ),
        (
            f"  schedule: {r['total_steps']:,} steps, {r['schedule_hours_overlapped']:.1f} to "
            f"{r['schedule_hours_serial']:.1f} hours"
        ),
        (
            "  XLA's own 'optimal_seconds' is not used: it is not a step-time estimate for real "
            "programs."
        ),
    ]
    if r.get("num_slices", 1) > 1:
        lines.append(
            "  multi-slice: the data axis spans slices, so the gradient all-reduce partly crosses "
            "the data-centre network; the ICI time above does not model that slower hop."
        )
    if r["scan"]:
        lines.append(
            "  scanned blocks: FLOPs and HBM bytes are those of the same step with the blocks "
            "unrolled (XLA counts a loop body once); memory and collectives are the scanned "
            "program's."
        )
    return "\n".join(lines)
