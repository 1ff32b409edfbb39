"""TPU chips the planner knows: their figures, topology names and libtpu's description of a
topology's devices (no TPU needed)."""

from __future__ import annotations

import dataclasses
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
    """Per-chip figures from the Cloud TPU system-architecture pages (bf16 dense peak)."""

    name: str
    peak_flops: float  # FLOP/s
    hbm_bytes: float
    hbm_bandwidth: float  # bytes/s
    ici_bandwidth: float  # bytes/s, all links of the chip, one direction

    def describe(self) -> str:
        return (
            f"{self.name}: {self.peak_flops / 1e12:.0f} TFLOP/s bf16, "
            f"{self.hbm_bytes / 2**30:.1f} GiB HBM at {self.hbm_bandwidth / 1e9:.0f} GB/s, "
            f"ICI {self.ici_bandwidth / 1e9:.0f} GB/s"
        )


# v4: 6 ICI links of ~50 GB/s; v5e 1,600 Gbps; v5p 4,800 Gbps; v6e 3,584 Gbps.
CHIPS = {
    "v4": Chip("TPU v4", 275e12, 32 * 2**30, 1200e9, 300e9),
    "v5e": Chip("TPU v5e", 197e12, 16e9, 819e9, 200e9),
    "v5p": Chip("TPU v5p", 459e12, 95 * 2**30, 2765e9, 600e9),
    "v6e": Chip("TPU v6e", 918e12, 32e9, 1640e9, 448e9),
}

# Stop when more than this share of HBM is planned: XLA needs room for fragmentation.
HBM_LIMIT = 0.95


class PlanError(ValueError):
    """The config cannot run on the topology as given; the message says what to change."""


def parse_topology(name: str) -> tuple[str, tuple[int, ...]]:
    """'v5e:16x16' -> ('v5e', (16, 16))."""
    match = re.fullmatch(r"(v4|v5e|v5p|v6e):(\d+(?:x\d+){1,2})", name)
    if not match:
        raise PlanError(
            f"unknown topology {name!r}; use <chip>:<shape> with chip in {sorted(CHIPS)}, "
            "e.g. v5e:16x16 (256 chips), v4:4x4x4 (64 chips = v4-128), v5p:4x4x4 (v5p-128)."
        )
    return match.group(1), tuple(int(s) for s in match.group(2).split("x"))


def topology_devices(name: str, num_slices: int = 1):
    """The chips of a TPU topology (``num_slices`` slices of it), described by libtpu without
    any TPU present."""
    try:
        # Imported here so that a JAX without it also ends as the PlanError below.
        from jax.experimental import topologies

        os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v5litepod-8")  # quiets a libtpu warning
        # Describing chips needs no TPU, so another JAX process holding libtpu's lock (a
        # training run on this machine) must not stop the planner.
        os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
        kwargs = {"num_slices": num_slices} if num_slices > 1 else {}
        if name.startswith("v4:"):
            # v4 is described one device per TensorCore unless asked for megacore, the one
            # device per chip that JAX uses on real v4 slices.
            kwargs["chip_config_name"] = "megacore"
        return topologies.get_topology_desc(topology_name=name, platform="tpu", **kwargs).devices
    except Exception as e:  # libtpu missing or the shape unknown to it
        raise PlanError(
            f"could not describe topology {name!r} ({type(e).__name__}: {e}). Planning needs "
            "libtpu: pip install -r requirements-plan.txt"
        ) from e
