"""Statistics read from compiled HLO text: the bytes each chip sends in collectives and the HBM
bytes each top-level operation moves (by the Python function that made it), both counted with
the trip counts of the loops around them."""

from __future__ import annotations

import math
import re

_COLLECTIVES = ("all-gather", "reduce-scatter", "all-reduce", "all-to-all", "collective-permute")
_DTYPE_BYTES = {
    "pred": 1, "s8": 1, "u8": 1, "s16": 2, "u16": 2, "bf16": 2, "f16": 2, "s32": 4, "u32": 4,
    "f32": 4, "s64": 8, "u64": 8, "f64": 8,
}  # fmt: skip
_COMPUTATION = re.compile(r"^(?:ENTRY\s+)?%?([\w.\-]+)\s.*\{\s*$")
_ARRAY_LAYOUT = re.compile(r"\b(pred|[suf]\d+|bf16)\[([\d,]*)\](\{[^}]*\})?")
_WHILE = re.compile(r"while\(.*condition=%?([\w.\-]+)")
_LOOP_BOUND = re.compile(r"constant\((\d+)\)")
_TRIPS = re.compile(r'"known_trip_count":\{"n":"(\d+)"')
_CALLS = re.compile(r"(?:calls|to_apply|condition|body|branch_computations)=\{?%?([\w.\-]+)")


def _shape_bytes(text: str, hbm_only: bool = False) -> int:
    """Bytes of the arrays in an HLO shape (a tuple counts all of them). ``hbm_only``: leave
    out arrays placed in another memory space (``S(n)`` in the layout: on-chip VMEM, SMEM)."""
    total = 0
    for m in _ARRAY_LAYOUT.finditer(text):
        dtype, dims, layout = m.groups()
        if hbm_only and layout and re.search(r"S\(\d+\)", layout):
            continue
        n = math.prod(int(d) for d in dims.split(",") if d) if dims else 1
        total += n * _DTYPE_BYTES.get(dtype, 4)
    return total


def _replica_group_size(line: str, default: int) -> int:
    """Participants per group: ``replica_groups=[G,S]<=...`` (iota form) or ``{{0,1,..},..}``."""
    if m := re.search(r"replica_groups=\[(\d+),(\d+)\]", line):
        return int(m.group(2))
    if m := re.search(r"replica_groups=\{\{([\d,]+)\}", line):
        return len(m.group(1).split(","))
    if m := re.search(r"replica_groups=mesh\[[^\]]*\]\s*\{([^}]*)\}", line):
        return default  # a named-mesh group: every device along the listed axes
    return default


def _trip_count(while_line: str, condition: list[str]) -> float:
    """A while loop's trip count: XLA's ``known_trip_count``, else the bound its condition
    compares the counter with (``i < N`` from 0, what a scan over N layers compiles to)."""
    if m := _TRIPS.search(while_line):
        return float(m.group(1))
    if any("direction=LT" in line for line in condition):
        bounds = [int(b) for line in condition for b in _LOOP_BOUND.findall(line)]
        if len(bounds) == 1:
            return float(bounds[0])
    return 1.0


def _computations(hlo_text: str) -> tuple[dict[str, list[str]], str | None]:
    """{computation name: its instruction lines} and the entry computation's name."""
    computations: dict[str, list[str]] = {}
    current = None
    entry = None
    for line in hlo_text.splitlines():
        if current is None or line.startswith(("ENTRY", "%")) and line.rstrip().endswith("{"):
            m = _COMPUTATION.match(line.strip())
            if m and line.rstrip().endswith("{"):
                current = m.group(1)
                computations[current] = []
                if line.startswith("ENTRY"):
                    entry = current
                continue
        if line.strip() == "}":
            current = None
            continue
        if current is not None:
            computations[current].append(line)
    return computations, entry


def _multipliers(
    computations: dict[str, list[str]], entry: str, top_level_only: bool = False
) -> dict[str, float]:
    """How many times each computation runs per step (loop bodies x their trip counts).
    ``top_level_only``: leave out fused computations and reducers, whose operations work in
    registers and on-chip memory rather than reading and writing HBM."""
    multiplier: dict[str, float] = {entry: 1.0}
    order = [entry]
    for name in order:  # breadth-first over the call graph from the entry computation
        for line in computations.get(name, []):
            if top_level_only and re.search(
                r"\s(fusion|reduce|reduce-window|scatter|sort|"
                r"all-reduce|reduce-scatter|select-and-scatter|map)"
                r"(-start)?\(",
                line,
            ):
                continue
            trips = 1.0
            if w := _WHILE.search(line):
                trips = _trip_count(line, computations.get(w.group(1), []))
            for callee in _CALLS.findall(line):
                if callee in computations and callee not in multiplier:
                    multiplier[callee] = multiplier[name] * (trips if "body=" in line else 1.0)
                    order.append(callee)
    return multiplier


def collective_bytes(hlo_text: str, num_devices: int) -> dict[str, float]:
    """Bytes each chip sends over the interconnect per step, by collective kind.

    Ring algorithms: an all-gather or reduce-scatter over n chips moves (n - 1)/n of the full
    array through each chip, an all-reduce twice that, an all-to-all (n - 1)/n, a permute its
    whole operand. Ops in a while loop count as many times as its known trip count."""
    computations, entry = _computations(hlo_text)
    if entry is None:
        return {}
    multiplier = _multipliers(computations, entry)

    out: dict[str, float] = {}
    for name, lines in computations.items():
        times = multiplier.get(name, 0.0)
        for line in lines:
            if "=" not in line:
                continue
            _, rhs = line.split("=", 1)
            op = re.search(r"\s(" + "|".join(_COLLECTIVES) + r")(-start)?\(", " " + rhs)
            if not op or "-done(" in rhs:
                continue
            kind = op.group(1)
            result = rhs[: rhs.index(op.group(0).strip())]
            size = _shape_bytes(result)
            n = _replica_group_size(line, num_devices)
            if n <= 1 and kind != "collective-permute":
                continue
            if kind == "all-gather":
                moved = size * (n - 1) / n
            elif kind == "reduce-scatter":
                moved = size * (n - 1)  # the result is one shard of an n-times larger input
            elif kind == "all-reduce":
                moved = 2 * size * (n - 1) / n
            elif kind == "all-to-all":
                moved = size * (n - 1) / n
            else:
                moved = size
            out[kind] = out.get(kind, 0.0) + moved * times
    return out


# Instructions that move no HBM data of their own.
_FREE_OPS = (
    "parameter", "constant", "tuple", "get-tuple-element", "bitcast", "after-all",
    "partition-id", "replica-id", "iota", "while", "conditional", "call", "opt-barrier",
    "copy-done", "all-gather-done", "all-reduce-done", "collective-permute-done",
    "async-done", "send-done", "recv-done",
)  # fmt: skip
_INSTRUCTION = re.compile(r"^\s*(?:ROOT\s+)?%([\w.\-]+)\s*=\s*(.*?)\s([a-z][\w\-]*)\((.*)$")


def _stack_functions(hlo_text: str) -> dict[int, str]:
    """stack_frame_id -> the Python function of that frame (from the module's frame tables)."""
    sections: dict[str, dict[int, str]] = {}
    current = None
    for line in hlo_text.splitlines()[:20000]:
        if line in ("FileNames", "FunctionNames", "FileLocations", "StackFrames"):
            current = sections.setdefault(line, {})
            continue
        if current is None:
            continue
        m = re.match(r"^(\d+) (.*)$", line)
        if not m:
            if line.startswith(("%", "ENTRY", "HloModule")):
                break
            continue
        current[int(m.group(1))] = m.group(2)
    names = {k: v.strip('"') for k, v in sections.get("FunctionNames", {}).items()}
    locations = {}
    for k, v in sections.get("FileLocations", {}).items():
        if m := re.search(r"function_name_id=(\d+)", v):
            locations[k] = names.get(int(m.group(1)), "?")
    frames = {}
    for k, v in sections.get("StackFrames", {}).items():
        if m := re.search(r"file_location_id=(\d+)", v):
            frames[k] = locations.get(int(m.group(1)), "?")
    return frames


def hbm_bytes_by_source(hlo_text: str) -> dict[str, float]:
    """HBM bytes per step read and written by the compiled program's top-level operations
    (fusions, convolutions, copies, ...: result plus operands that live in HBM), grouped by the
    Python function that produced each one and by pass ('forward' / 'backward'). Operations
    inside a fusion, and buffers the compiler placed on chip (``S(1)``), are not counted; loop
    bodies count once per trip. A re-count of XLA's own 'bytes accessed' that says where the
    traffic comes from."""
    computations, entry = _computations(hlo_text)
    if entry is None:
        return {}
    frames = _stack_functions(hlo_text)
    out: dict[str, float] = {}
    for name, times in _multipliers(computations, entry, top_level_only=True).items():
        sizes: dict[str, int] = {}
        for line in computations[name]:
            m = _INSTRUCTION.match(line)
            if not m:
                continue
            result, shape, op, rest = m.groups()
            sizes[result] = (_shape_bytes(shape), _shape_bytes(shape, hbm_only=True))
            if op in _FREE_OPS or op.endswith("-done"):
                continue
            args = re.findall(r"%([\w.\-]+)", rest.split("),", 1)[0])
            read_all = sum(sizes.get(a, (0, 0))[0] for a in args)
            read_hbm = sum(sizes.get(a, (0, 0))[1] for a in args)
            out_all, out_hbm = sizes[result]
            moved = out_hbm + read_hbm
            if op.endswith("-start"):
                # An async copy's result tuple repeats its operands: the new data is read
                # from HBM once, and written there too unless it lands on chip.
                payload = out_all - read_all if out_all > read_all else out_all
                written = out_hbm - read_hbm if out_all > read_all else out_hbm
                moved = payload + max(written, 0)
            frame = re.search(r"stack_frame_id=(\d+)", line)
            where = frames.get(int(frame.group(1)), "?") if frame else f"({op}, no source)"
            op_name = re.search(r'op_name="([^"]*)"', line)
            backward = bool(op_name and "transpose(" in op_name.group(1))
            key = f"{where} ({'backward' if backward else 'forward'})" if op_name else where
            out[key] = out.get(key, 0.0) + moved * times
    return dict(sorted(out.items(), key=lambda kv: -kv[1]))
