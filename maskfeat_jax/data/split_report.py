"""What a preparation says about a split: the files skipped, by reason (printed, and each
one in ``out/<split>.skipped.tsv``), and the videos kept although shorter than one clip.
"""

from __future__ import annotations

import csv as csv_module
import io
import json
import os
import sys
from collections.abc import Mapping, Sequence
from typing import Any

from maskfeat_jax.data import video_records
from maskfeat_jax.data.shard_plan import done_path, write_text
from maskfeat_jax.data.video_inputs import shown_names

__all__ = [
    "DEFAULT_CLIP_SECONDS",
    "SHORT",
    "NothingUsable",
    "nothing_usable",
    "report",
    "skipped_path",
    "summary_lines",
    "write_skipped",
]

# A 16-frame clip at stride 4 on a 30 fps timeline.
DEFAULT_CLIP_SECONDS = 16 * 4 / 30
SHORT = (
    "short: shorter than one clip; its last frame repeats when sampled (config.input.short_videos)"
)
# Reasons that name something per file (a link's target, the kept path): counted together.
_REASON_GROUPS = (
    "broken symbolic link",
    "cannot follow symbolic link",
    "symbolic link loop",
    "same file as",
)


class NothingUsable(ValueError):
    """No file of a split was a usable video; ``summary`` says why, by reason."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def skipped_path(out: str, split: str) -> str:
    return os.path.join(out, f"{split}.skipped.tsv")


def write_skipped(out: str, split: str, failures: Sequence[Mapping[str, str]]) -> None:
    """``<split>.skipped.tsv``: a header row, then ``path<TAB>reason`` per skipped file.
    Left alone when it says the same (read-only datasets); a report, so a dataset made
    before it existed is not failed for lacking it."""
    text = io.StringIO()
    rows = csv_module.writer(text, delimiter="\t", lineterminator="\n")
    rows.writerow(["path", "reason"])
    rows.writerows([f["path"], f["reason"]] for f in failures)
    path = skipped_path(out, split)
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text.getvalue():
                return
    except OSError:
        pass
    try:
        write_text(path, text.getvalue())
    except OSError as e:
        print(f"Could not write {path} ({e.strerror or e})", file=sys.stderr)


def nothing_usable(out: str, split: str, failures) -> NothingUsable:
    return NothingUsable(
        f"none of the {len(failures)} video files of split {split!r} was usable; the summary "
        f"above says why, and {skipped_path(out, split)} lists each file",
        "\n".join(summary_lines(failures, 0, skipped_path(out, split))),
    )


def _reason_group(reason: str) -> str:
    """The reason without what differs per file (a link's target, the kept path, the CSV
    line), so that files skipped for the same cause are counted together."""
    if reason.endswith(")") and " (CSV line " in reason:
        reason = reason[: reason.rindex(" (CSV line ")]
    return next((g for g in _REASON_GROUPS if reason.startswith(g)), reason)


def summary_lines(
    failures: Sequence[Mapping[str, str]],
    num_records: int,
    tsv: str,
    short: Sequence[str] = (),
    clip_seconds: float = DEFAULT_CLIP_SECONDS,
) -> list[str]:
    """Lines: the skipped files by reason (count and a few names), then the short ones."""
    lines = []
    if failures:
        total = num_records + len(failures)
        lines.append(f"Skipped {len(failures)} of {total} files, by reason (each in {tsv}):")
        groups = {}
        for f in failures:
            groups.setdefault(_reason_group(f["reason"]), []).append(f)
        for reason, group in sorted(groups.items(), key=lambda g: (-len(g[1]), g[0])):
            names = [
                f["path"] if f["reason"] == reason else f"{f['path']} ({f['reason']})"
                for f in group
            ]
            lines.append(f"  {len(group):6d}  {reason}: {shown_names(names)}")
    if short:
        lines.append(f"Kept {len(short)} videos shorter than --clip_seconds={clip_seconds:.4g}:")
        lines.append(f"  {len(short):6d}  {SHORT}: {shown_names(short)}")
    return lines


def _short_videos(out: str, info: Mapping[str, Any], clip_seconds: float) -> list[str]:
    """Records shorter than ``clip_seconds``, from the shards' sidecars."""
    short = []
    for shard in info["shards"]:
        try:
            with open(done_path(out, shard)) as f:
                durations = json.load(f).get("durations", {})
        except (OSError, ValueError):
            continue
        short += [i for i, seconds in durations.items() if seconds < clip_seconds]
    return sorted(short)


def report(info: Mapping[str, Any], out: str, clip_seconds: float = DEFAULT_CLIP_SECONDS) -> str:
    """What a finished preparation wrote and skipped, for people."""
    lines = [
        f"Wrote {info['num_records']} records in {len(info['shards'])} shards to "
        f"{video_records.info_path(out, info['split'])}"
        + (f" ({len(info['classes'])} classes)." if info["classes"] else " (unlabelled).")
    ]
    short = _short_videos(out, info, clip_seconds)
    tsv = skipped_path(out, info["split"])
    lines += summary_lines(info["failures"], info["num_records"], tsv, short, clip_seconds)
    return "\n".join(lines)
