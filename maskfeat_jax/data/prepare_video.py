r"""Video files -> record shards: ``python -m maskfeat_jax.data.prepare_video``.

  python -m maskfeat_jax.data.prepare_video --videos_dir kinetics/train \
      --out data/k400 --split train
  python -m maskfeat_jax.data.prepare_video --videos_dir kinetics/val \
      --out data/k400 --split validation --classes data/k400/classes.txt
  python -m maskfeat_jax.data.prepare_video --videos_dir clips --csv clips.csv \
      --out data/clips --split train

Input layouts:

  class folders  ``videos_dir/<class>/<file>`` (files deeper inside a class folder belong to
                 it). Video files are recognised by ``--extensions`` (any case); other files
                 are ignored.
  ``--csv``      rows ``path,label`` (an optional header row ``path,label``); ``path`` is
                 relative to ``videos_dir`` or absolute, ``label`` a class name (``7`` is the
                 name "7", not an index).
  ``--unlabelled``  every video file under ``videos_dir`` (any depth), label -1.

Folders as they come: hidden names (``.DS_Store``, ``._x.mp4``) are ignored. Links are
followed, folder links too, except one that leads back into a folder being walked (a loop,
reported). Each real file is prepared once: other paths to it (links, hard links, a walk
through a folder link) are skipped as "same file as <kept id>", the kept one being the path
with the fewest folders, then the first in sorted order. Paths that are not regular files
(broken links, FIFOs, sockets, devices, folders named like videos) are skipped without
being opened: opening a FIFO blocks, reading a device may never end.

Classes are the sorted unique names, a label is the index of its name. ``--classes`` (one
name per line) fixes the list instead, so that splits prepared separately agree on indices.
The first labelled split written to ``out`` leaves its list in ``out/classes.txt``, and the
splits after it must use that list: pass ``--classes out/classes.txt``, or ``--classes_from
DIR`` for DIR's ``classes.txt``. Given neither, a split whose labels are all in
``out/classes.txt`` uses it (and says so); one with other labels, or an explicit list that
differs, stops with an error, as its label indices would not line up with the other splits'.
A record's ``id`` is the file's path relative to ``videos_dir``.

Plan: the sorted videos are cut, in order, into shards of about ``--shard_size_mb`` of
input bytes, and the plan (every shard's file name and videos, with their labels and
sizes) is written to ``out/<split>.plan.json`` before any shard. Shards are written in
parallel, one task per shard (see ``video_records`` for the record format); the worker
processes exit by themselves when the preparing process dies, however it dies.

Report: files that cannot be read or are not usable videos are skipped: a summary by reason
is printed at the end and each one is listed, ``path<TAB>reason`` under a header row, in
``out/<split>.skipped.tsv`` (not ``.json``: those name the splits). Videos shorter than
``--clip_seconds`` are kept and counted as short. A split without one usable video is an
error (its info is not written).

Resume: a finished shard leaves its file (renamed into place when complete) and then a
sidecar ``<shard>.done.json`` with its record count, its failures, each record's duration
and a fingerprint of its part of the plan. Rerunning the same command checks that the
inputs still give the same plan, keeps the shards whose sidecar matches, rewrites the others
(a shard without its sidecar may be from an interrupted run), and writes ``out/<split>.json``
once all are done. A rerun that changes nothing writes nothing, so it works on a finished
read-only dataset.

Modules: ``video_inputs`` finds and vets the files, ``class_lists`` keeps the splits' class
lists in line, ``shard_plan`` plans the shards and tracks what ``out`` holds of them,
``shard_workers`` writes them, ``split_report`` reports what was skipped. The command is
``maskfeat_jax.commands.prepare_video``.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from collections.abc import Sequence
from typing import Any

from maskfeat_jax.data import video_records
from maskfeat_jax.data.class_lists import class_list_in, shared_classes, write_class_list
from maskfeat_jax.data.shard_plan import (
    PLAN_FORMAT,
    already_planned,
    check_writable,
    finished_shard,
    plan_path,
    plan_shards,
    remove_leftovers,
    remove_old_split,
    write_json,
)
from maskfeat_jax.data.shard_workers import write_shards
from maskfeat_jax.data.split_report import (
    DEFAULT_CLIP_SECONDS,
    SHORT,
    NothingUsable,
    nothing_usable,
    report,
    skipped_path,
    write_skipped,
)
from maskfeat_jax.data.video_inputs import (
    DEFAULT_EXTENSIONS,
    Inputs,
    by_path,
    check_csv,
    check_videos_dir,
    find_videos,
    read_class_list,
)

__all__ = [
    "DEFAULT_CLIP_SECONDS",
    "DEFAULT_EXTENSIONS",
    "PLAN_FORMAT",
    "SHORT",
    "Inputs",
    "NothingUsable",
    "error_line",
    "find_videos",
    "plan_path",
    "plan_shards",
    "prepare",
    "read_class_list",
    "report",
    "skipped_path",
]


def prepare(
    videos_dir: str,
    out: str,
    split: str,
    *,
    csv: str | None = None,
    classes: str | Sequence[str] | None = None,
    classes_from: str | None = None,
    unlabelled: bool = False,
    shard_size_mb: float = 512,
    workers: int | None = None,
    extensions: Sequence[str] | str = DEFAULT_EXTENSIONS,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes (or finishes) split ``split`` of the videos in ``videos_dir`` to ``out``;
    returns the split's info (``video_records.read_info``). See the module docstring.
    ``classes_from``: a dataset folder whose ``classes.txt`` is the class list."""
    if not split or split != os.path.basename(split) or split.startswith("."):
        raise ValueError(f"--split {split!r} must be a plain name such as train or validation")
    if not shard_size_mb > 0:
        raise ValueError(f"--shard_size_mb must be positive, got {shard_size_mb}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    if classes_from:
        if classes is not None:
            raise ValueError("pass --classes or --classes_from, not both")
        classes = class_list_in(classes_from)
    check_videos_dir(videos_dir)
    if csv:
        check_csv(csv)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} is a file; give a folder (new or existing)")
    if not os.path.isfile(video_records.info_path(out, split)):
        check_writable(out, split)  # a finished split may be reread from read-only storage

    inputs = find_videos(
        videos_dir, csv=csv, classes=classes, unlabelled=unlabelled, extensions=extensions
    )
    inputs = shared_classes(out, split, inputs, explicit=classes is not None)
    if not inputs.videos:
        write_skipped(out, split, inputs.skipped)
        raise nothing_usable(out, split, inputs.skipped)
    plan = dict(
        format=PLAN_FORMAT,
        split=split,
        shard_size_mb=shard_size_mb,
        classes=inputs.classes,
        missing=inputs.skipped,  # the key of the first format: skipped while listing
        shards=plan_shards(inputs.videos, split, shard_size_mb),
    )
    shards = plan["shards"]
    planned = already_planned(out, split, plan)
    results = {i: r for i, s in enumerate(shards) if (r := finished_shard(out, s)) is not None}
    todo = {i: s for i, s in enumerate(shards) if i not in results}
    if not planned or todo:
        check_writable(out, split)
    if not planned:
        remove_old_split(out, split, plan)
        write_json(plan_path(out, split), plan)
    remove_leftovers(out, split)
    if progress:
        print(
            f"{len(inputs.videos)} videos in {len(shards)} shards ({len(inputs.skipped)} other "
            f"paths skipped); {len(results)} shards already done, writing {len(todo)} to {out}",
            file=sys.stderr,
        )
    results.update(write_shards(videos_dir, out, todo, workers, progress, plan))

    failures = list(inputs.skipped) + [f for r in results.values() for f in r["failures"]]
    failures.sort(key=by_path)
    write_skipped(out, split, failures)
    written = [
        dict(file=s["file"], num_records=results[i]["num_records"]) for i, s in enumerate(shards)
    ]
    if not sum(s["num_records"] for s in written):
        raise nothing_usable(out, split, failures)
    write_class_list(out, inputs.classes)
    return _write_info(out, split, written, inputs.classes, failures)


def _write_info(out, split, shards, classes, failures) -> dict[str, Any]:
    """The split's info, written unless the same is there (a finished dataset may be
    read-only)."""
    path = video_records.info_path(out, split)
    same = dict(
        format=video_records.FORMAT,
        split=split,
        shards=shards,
        classes=list(classes),
        failures=[dict(path=f["path"], reason=f["reason"]) for f in failures],
    )
    try:
        with open(path) as f:
            old = json.load(f)
    except (OSError, ValueError):
        old = None
    if isinstance(old, dict) and all(old.get(k) == v for k, v in same.items()):
        return old
    return video_records.write_info(out, split, shards, classes, failures)


def error_line(e: BaseException) -> str:
    """One line: the system's words and the path for OS errors, else the message."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e)


if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.prepare_video", run_name="__main__", alter_sys=True)
