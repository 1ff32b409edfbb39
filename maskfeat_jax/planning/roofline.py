"""The plan of a config on a TPU topology: the train step compiled ahead of time for the
topology's chips, and its figures per chip.

What the numbers are. Memory comes from the compiled program and can be trusted. XLA's own
time estimate (``optimal_seconds``) cannot (it was negative for a ViT-L step), so the step
time is a roofline projection: compute (compiled FLOPs / peak), HBM traffic / bandwidth and
interconnect (collective bytes read from the compiled HLO / ICI bandwidth). HBM traffic is
bracketed by two counts: XLA's 'bytes accessed' (every operand of every fusion, as if all came
from HBM) and a re-count from the compiled HLO of only the buffers that live in HBM after
memory-space assignment, attributed to the Python functions that made them. The best case
takes the re-count with collectives overlapped, the worst case XLA's count with collectives
after compute. MFU counts model FLOPs only (the step lowered without rematerialization), so
recomputation costs MFU. A config that does not fit stops with a message naming the knobs:
batch, remat, dtype, mesh.
"""

from __future__ import annotations

import contextlib
import copy
import re
import time
from typing import Any

import jax
import ml_collections

from maskfeat_jax import sharding
from maskfeat_jax.planning import hlo, report
from maskfeat_jax.planning.chips import (
    CHIPS,
    HBM_LIMIT,
    Chip,
    PlanError,
    parse_topology,
    topology_devices,
)
from maskfeat_jax.planning.flops import model_flops_per_step
from maskfeat_jax.trainer import build_trainer


def _out_of_memory(e: Exception) -> bool:
    text = str(e)
    return "RESOURCE_EXHAUSTED" in text or "Ran out of memory" in text


@contextlib.contextmanager
def _kept_out_of_the_compilation_cache():
    """A program compiled for described chips cannot be loaded back without them: JAX's
    persistent cache (``JAX_COMPILATION_CACHE_DIR``) would store it and then fail to read it
    on the next plan, with a warning and a second compile. Entries are written only for
    compiles slower than this threshold, so an infinite one keeps the plan out."""
    threshold = jax.config.jax_persistent_cache_min_compile_time_secs
    jax.config.update("jax_persistent_cache_min_compile_time_secs", float("inf"))
    try:
        yield
    finally:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", threshold)


def _compile(config: ml_collections.ConfigDict, mesh, chip: Chip):
    """The trainer and its step compiled for ``mesh``; XLA's out-of-memory refusal becomes a
    PlanError that names the knobs."""
    trainer = build_trainer(config, mesh)
    try:
        with _kept_out_of_the_compilation_cache():
            return trainer, trainer.compile()
    except Exception as e:
        if not _out_of_memory(e):
            raise
        text = str(e)
        need = "does not fit"
        if m := re.search(
            r"required for ([\w ]+?) \(([\d.]+\w?)\) exceeds available HBM \(([\d.]+\w?)\)", text
        ):
            need = f"needs {m.group(2)}B for {m.group(1)} with {m.group(3)}B HBM per chip"
        elif m := re.search(r"Used ([\d.]+\w?) of ([\d.]+\w?) hbm", text):
            need = f"needs {m.group(1)}B of {m.group(2)}B HBM per chip"
        chips = mesh.devices.size
        raise PlanError(
            f"{config.model.name} {config.model.variant} at batch {config.input.batch_size} "
            f"{need} on {chips} {chip.name} chips (XLA refused to compile it). Try: "
            + "; ".join(report.fit_hints(config, chips))
            + "."
        ) from e


def _hlo_text(compiled) -> tuple[str | None, str | None]:
    """The compiled program's HLO text, or None and why: some jaxlib builds fail to print
    programs with async-update instructions (seen for v5p)."""
    try:
        return compiled.as_text(), None
    except Exception as e:  # noqa: BLE001 - a printing failure must not lose the plan
        return None, f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"


def plan(
    config: ml_collections.ConfigDict,
    topology: str,
    hlo_path: str | None = None,
    num_slices: int = 1,
) -> dict[str, Any]:
    """Compiles the train step for ``topology`` (``num_slices`` copies joined over the
    data-centre network) and returns the figures (see the module doc)."""
    generation, _ = parse_topology(topology)
    chip = CHIPS[generation]
    devices = topology_devices(topology, num_slices)
    chips = len(devices)
    mesh = sharding.make_mesh(config.mesh, devices=devices)
    t0 = time.perf_counter()
    trainer, compiled = _compile(config, mesh, chip)
    cost_program = compiled
    if config.model.get("scan", False):
        # XLA's cost analysis counts a loop body once: take FLOPs and HBM bytes from the same
        # step with the blocks unrolled. Memory and collectives stay those of the real program.
        unrolled = copy.deepcopy(config)
        unrolled.model.scan = False
        _, cost_program = _compile(unrolled, mesh, chip)
    compile_seconds = time.perf_counter() - t0
    mem = compiled.memory_analysis()
    cost = cost_program.cost_analysis() or {}
    if isinstance(cost, (list, tuple)):  # older JAX returns one dict per program
        cost = cost[0]
    hbm = {
        "arguments": float(mem.argument_size_in_bytes),
        "outputs_not_aliased": float(mem.output_size_in_bytes - mem.alias_size_in_bytes),
        "temporaries": float(mem.temp_size_in_bytes),
        "code": float(mem.generated_code_size_in_bytes),
    }
    hbm_total = sum(hbm.values())
    program_text, hlo_problem = _hlo_text(compiled)
    if hlo_path and program_text:
        with open(hlo_path, "w") as f:
            f.write(program_text)
    if program_text:
        collectives = hlo.collective_bytes(program_text, chips)
    else:
        # The tables of pure FSDP (tpu_planning.md): parameters gathered for the forward and
        # the backward pass, gradients reduce-scattered, each ~(n-1)/n of the parameter bytes.
        params = sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(trainer.abstract_state[0]))
        collectives = {"FSDP estimate (3 x parameter bytes)": 3.0 * params * (chips - 1) / chips}
    cost_text = program_text if cost_program is compiled else _hlo_text(cost_program)[0]
    traffic = hlo.hbm_bytes_by_source(cost_text) if cost_text else {}
    ici_bytes = sum(collectives.values())
    flops = float(cost.get("flops", 0.0))
    bytes_accessed = float(cost.get("bytes accessed", 0.0))
    model_flops = model_flops_per_step(config)

    # XLA's TPU count came out below the model's own work for a step without remat; never
    # project less compute than the model needs.
    t_compute = max(flops, model_flops / chips) / chip.peak_flops
    # Two HBM counts bracket the traffic: XLA's 'bytes accessed' counts every operand of every
    # fusion as if it came from HBM; the recount leaves out buffers that memory-space
    # assignment put on chip. Best case: the recount, collectives hidden behind compute.
    # Worst case: XLA's count, collectives after it.
    t_memory = bytes_accessed / chip.hbm_bandwidth
    recounted = sum(traffic.values()) if traffic else bytes_accessed
    t_memory_recount = recounted / chip.hbm_bandwidth
    t_ici = ici_bytes / chip.ici_bandwidth
    t_overlapped = max(t_compute, t_memory_recount, t_ici)
    t_serial = max(t_compute, t_memory) + t_ici
    limits = {
        "compute": t_compute,
        "HBM bandwidth": t_memory_recount,
        "collectives (ICI)": t_ici,
    }
    limits_worst = {"compute": t_compute, "HBM bandwidth": t_memory, "collectives (ICI)": t_ici}
    batch = config.input.batch_size
    result = {
        "topology": topology,
        "num_slices": num_slices,
        "chip": chip.describe(),
        "chips": chips,
        "mesh": dict(mesh.shape),
        "model": f"{config.model.name} {config.model.variant}",
        "dtype": config.model.get("dtype", "float32"),
        "remat": bool(config.model.get("remat", False)),
        "scan": bool(config.model.get("scan", False)),
        "global_batch": batch,
        "per_chip_batch": batch / chips,
        "compile_seconds": compile_seconds,
        "hbm_bytes": hbm,
        "hbm_total_bytes": hbm_total,
        "hbm_capacity_bytes": chip.hbm_bytes,
        "hbm_fraction": hbm_total / chip.hbm_bytes,
        "flops_per_chip": flops,
        "model_flops_per_step": model_flops,
        "recompute_factor": flops * chips / model_flops if model_flops else float("nan"),
        "bytes_accessed_per_chip": bytes_accessed,
        "collective_bytes_per_chip": collectives,
        "collectives_from": "compiled HLO" if program_text else f"estimate ({hlo_problem})",
        "hbm_bytes_by_source": dict(list(traffic.items())[:12]),
        "hbm_bytes_recounted": sum(traffic.values()),
        "seconds": {
            "compute": t_compute,
            "hbm": t_memory,
            "hbm_recount": t_memory_recount,
            "ici": t_ici,
            "step_overlapped": t_overlapped,
            "step_serial": t_serial,
        },
        "limited_by": max(limits, key=limits.get),
        "limited_by_worst_case": max(limits_worst, key=limits_worst.get),
        "mfu_overlapped": model_flops / (chips * chip.peak_flops * t_overlapped),
        "mfu_serial": model_flops / (chips * chip.peak_flops * t_serial),
        "examples_per_second": batch / t_serial,
        "total_steps": trainer.total_steps,
        "schedule_hours_serial": trainer.total_steps * t_serial / 3600,
        "schedule_hours_overlapped": trainer.total_steps * t_overlapped / 3600,
    }
    if hbm_total > HBM_LIMIT * chip.hbm_bytes:
        raise PlanError(report.does_not_fit(result, config))
    return result
