"""The plan of a split's shards and what ``out`` holds of it: which shards are finished
(their sidecars), what an interrupted run left, and whether ``out`` can be written.

The plan (every shard's file name and videos, with labels and sizes) is written to
``out/<split>.plan.json`` before any shard; a rerun must find the same plan there. Files are
written to a temporary name and renamed into place, so a complete file never has a
``.tmp-`` name.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any

from maskfeat_jax.data import video_records
from maskfeat_jax.data.video_inputs import shown_names

__all__ = [
    "PLAN_FORMAT",
    "already_planned",
    "check_writable",
    "done_path",
    "fingerprint",
    "finished_shard",
    "plan_path",
    "plan_shards",
    "remove_leftovers",
    "remove_old_split",
    "write_json",
    "write_text",
]

PLAN_FORMAT = "maskfeat-video-plan/1"
_MB = 1024 * 1024


def plan_shards(
    videos: Sequence[tuple[str, int, int]], split: str, shard_size_mb: float
) -> list[dict[str, Any]]:
    """Consecutive runs of ``videos`` with about ``shard_size_mb`` of bytes each (a video
    larger than that gets a shard of its own), named ``shard_name(split, i, n)``."""
    limit = shard_size_mb * _MB
    groups, current, size = [], [], 0
    for video in videos:
        if current and size + video[2] > limit:
            groups.append(current)
            current, size = [], 0
        current.append(list(video))
        size += video[2]
    groups.append(current)
    return [
        dict(file=video_records.shard_name(split, i, len(groups)), videos=group)
        for i, group in enumerate(groups)
    ]


def plan_path(out: str, split: str) -> str:
    return os.path.join(out, f"{split}.plan.json")


def done_path(out: str, shard: Mapping[str, Any]) -> str:
    return os.path.join(out, shard["file"] + ".done.json")


def fingerprint(shard: Mapping[str, Any]) -> str:
    """Identifies a shard's planned content, so a sidecar left by another plan (one that was
    deleted) never passes for this plan's shard of the same name."""
    text = json.dumps([shard["file"], shard["videos"]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def write_json(path: str, value: Any) -> None:
    write_text(path, json.dumps(value, indent=1))


def _plan_difference(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    if old.get("format") != new["format"]:
        return f"it has format {old.get('format')!r}, not {new['format']!r}"
    changes = []
    if old["shard_size_mb"] != new["shard_size_mb"]:
        changes.append(f"--shard_size_mb was {old['shard_size_mb']}, now {new['shard_size_mb']}")
    if old["classes"] != new["classes"]:
        changes.append("the class list differs")
    before = {v[0]: v[1:] for s in old["shards"] for v in s["videos"]}
    after = {v[0]: v[1:] for s in new["shards"] for v in s["videos"]}
    for what, ids in (
        ("new", sorted(after.keys() - before.keys())),
        ("gone", sorted(before.keys() - after.keys())),
        (
            "with another label or size",
            sorted(i for i in after.keys() & before.keys() if after[i] != before[i]),
        ),
    ):
        if ids:
            changes.append(f"{len(ids)} videos {what}: {shown_names(ids)}")
    if old["missing"] != new["missing"]:
        changes.append("the files skipped while listing differ")
    return "; ".join(changes) or "the shards are cut differently"


def already_planned(out: str, split: str, plan: Mapping[str, Any]) -> bool:
    """Whether ``out`` holds this plan already; another plan there is an error."""
    path = plan_path(out, split)
    if not os.path.isfile(path):
        return False
    with open(path) as f:
        try:
            old = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not a readable plan ({e}); delete it") from e
    if old != plan:
        raise ValueError(
            f"{path} was planned from other inputs ({_plan_difference(old, plan)}). To "
            f"prepare these inputs delete {path} (the old plan's shards are then "
            "replaced), or use another --out or --split"
        )
    return True


def remove_old_split(out: str, split: str, plan: Mapping[str, Any]) -> None:
    """A new plan remakes the split: the old info goes (it would describe shards about to be
    replaced) and so do old shards the new plan does not name (a different shard count)."""
    keep = {s["file"] for s in plan["shards"]}
    keep |= {f + ".done.json" for f in keep}
    old = [video_records.info_path(out, split)]
    old += [
        os.path.join(out, name)
        for name in os.listdir(out)
        if name.startswith(f"{split}.array_record-") and name not in keep
    ]
    for path in old:
        if os.path.isfile(path):
            os.remove(path)


def remove_leftovers(out: str, split: str) -> None:
    """Temporary files of an interrupted run: a complete file never has this name."""
    for name in os.listdir(out):
        if name.startswith(f"{split}.") and ".tmp-" in name:
            os.remove(os.path.join(out, name))


def check_writable(out: str, split: str) -> None:
    """Fails now, not after hours of work, when ``out`` cannot take the shards. Trying is
    the only sure test: permissions do not stop root, and a file system may be read-only."""
    try:
        os.makedirs(out, exist_ok=True)
        probe = os.path.join(out, f"{split}.tmp-write-check-{os.getpid()}")
        with open(probe, "w"):
            pass
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"cannot write to --out {out} ({e.strerror or e}); choose a folder you can write to"
        ) from e


def finished_shard(out: str, shard: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shard's sidecar, if it finished under this plan."""
    done = done_path(out, shard)
    if not (os.path.isfile(done) and os.path.isfile(os.path.join(out, shard["file"]))):
        return None
    try:
        with open(done) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("plan") == fingerprint(shard) else None
