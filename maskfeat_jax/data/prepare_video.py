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
"""

from __future__ import annotations

import concurrent.futures
import csv as csv_module
import dataclasses
import errno
import hashlib
import io
import json
import multiprocessing
import os
import queue as queue_module
import stat
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from maskfeat_jax.data import video_records

__all__ = [
    "DEFAULT_CLIP_SECONDS",
    "DEFAULT_EXTENSIONS",
    "PLAN_FORMAT",
    "SHORT",
    "Inputs",
    "NothingUsable",
    "find_videos",
    "plan_path",
    "plan_shards",
    "prepare",
    "read_class_list",
    "report",
    "skipped_path",
]

PLAN_FORMAT = "maskfeat-video-plan/1"
CLASS_LIST = "classes.txt"  # written next to the splits by the first labelled one
DEFAULT_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
# A 16-frame clip at stride 4 on a 30 fps timeline.
DEFAULT_CLIP_SECONDS = 16 * 4 / 30
SHORT = (
    "short: shorter than one clip; its last frame repeats when sampled (config.input.short_videos)"
)
_MB = 1024 * 1024
_SHOWN = 5  # how many offending names an error message lists
_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)
# Reasons that name something per file (a link's target, the kept path): counted together.
_REASON_GROUPS = (
    "broken symbolic link",
    "cannot follow symbolic link",
    "symbolic link loop",
    "same file as",
)


@dataclasses.dataclass
class Inputs:
    """What a layout holds: ``videos`` as sorted ``(id, label, size)``, the class list and
    the paths found but not usable (as failures: not regular files, duplicates, files a CSV
    lists that do not exist)."""

    videos: list[tuple[str, int, int]]
    classes: list[str]
    skipped: list[dict[str, str]]


class NothingUsable(ValueError):
    """No file of a split was a usable video; ``summary`` says why, by reason."""

    def __init__(self, message: str, summary: str):
        super().__init__(message)
        self.summary = summary


def _some(names: Sequence[str]) -> str:
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _normalise_extensions(extensions: Sequence[str] | str) -> tuple[str, ...]:
    if isinstance(extensions, str):
        extensions = extensions.split(",")
    result = tuple("." + e.strip().lstrip(".").lower() for e in extensions if e.strip())
    if not result:
        raise ValueError("--extensions is empty; give video file extensions like mp4,webm")
    return result


def read_class_list(path: str) -> list[str]:
    """Class names from a file, one per line (blank lines ignored), in the file's order."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--classes file {path} does not exist")
    with open(path, encoding="utf-8") as f:
        names = [line.strip() for line in f if line.strip()]
    if not names:
        raise ValueError(f"--classes file {path} lists no classes; write one name per line")
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise ValueError(f"--classes file {path} lists some classes twice: {_some(duplicates)}")
    return names


def _video_id(path: str, videos_dir: str) -> str:
    """The path relative to ``videos_dir``; files outside it keep their absolute path."""
    relative = os.path.relpath(path, videos_dir)
    return os.path.abspath(path) if relative.split(os.sep)[0] == os.pardir else relative


def _regular_file(path: str) -> tuple[os.stat_result | None, str]:
    """``(stat, "")`` of a regular file (links followed), else ``(None, why not)``. Only
    looks: opening a FIFO blocks, and reading a device may never end."""
    try:
        st = os.stat(path)
    except OSError as e:
        if not os.path.islink(path):
            if isinstance(e, FileNotFoundError):
                return None, "file not found"
            return None, f"cannot read ({e.strerror or e})"
        try:
            target = os.readlink(path)
        except OSError:
            target = "?"
        if e.errno == errno.ELOOP:
            return None, f"symbolic link loop -> {target}"
        if isinstance(e, FileNotFoundError):
            return None, f"broken symbolic link -> {target}"
        return None, f"cannot follow symbolic link -> {target} ({e.strerror or e})"
    if stat.S_ISREG(st.st_mode):
        return st, ""
    kind = next((k for test, k in _FILE_KINDS if test(st.st_mode)), "unknown kind")
    return None, f"not a regular file ({kind})"


def _walk(
    videos_dir: str,
    folder: str,
    extensions: tuple[str, ...],
    ancestors: dict[tuple[int, int], str],
    found: list[tuple[str, os.stat_result]],
    skipped: list[dict[str, str]],
    folders_first: bool = False,
) -> None:
    """Adds the video files under ``folder`` (any depth) to ``found`` as ``(id, stat)`` and
    the unusable ones to ``skipped``. ``ancestors``: the folders being walked, by (device,
    inode), so that a link back into one is a loop. ``folders_first``: a folder named like a
    video is still walked (a class folder)."""
    try:
        with os.scandir(folder) as listing:
            entries = sorted(listing, key=lambda e: e.name)
    except OSError as e:
        reason = f"cannot list folder ({e.strerror or e})"
        skipped.append(dict(path=_video_id(folder, videos_dir), reason=reason))
        return
    for entry in entries:
        if entry.name.startswith("."):
            continue  # partial downloads and file-system metadata, not videos
        video_id = _video_id(entry.path, videos_dir)
        try:
            is_dir = entry.is_dir()  # links followed; a broken one is no folder
        except OSError:
            is_dir = False
        if entry.name.lower().endswith(extensions) and not (folders_first and is_dir):
            st, why = _regular_file(entry.path)
            if st is None:
                skipped.append(dict(path=video_id, reason=why))
            else:
                found.append((video_id, st))
            continue
        if not is_dir:
            continue  # not named like a video
        try:
            st = entry.stat()
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in ancestors:
            reason = f"symbolic link loop: leads back to {ancestors[key]}"
            skipped.append(dict(path=video_id, reason=reason))
            continue
        _walk(videos_dir, entry.path, extensions, {**ancestors, key: video_id}, found, skipped)


def _from_class_folders(
    videos_dir: str, extensions: tuple[str, ...], unlabelled: bool
) -> tuple[list[tuple[str, str | None, str, os.stat_result]], list[dict[str, str]]]:
    """``(id, class name or None, where, stat)`` of the videos in a class-folder (or
    unlabelled) layout, and the paths skipped."""
    root = os.stat(videos_dir)
    found, skipped = [], []
    ancestors = {(root.st_dev, root.st_ino): "--videos_dir"}
    _walk(videos_dir, videos_dir, extensions, ancestors, found, skipped, not unlabelled)
    if unlabelled:
        return [(i, None, f"folder {videos_dir}", st) for i, st in found], skipped
    loose = [i for i, _ in found if os.sep not in i]
    if loose:
        raise ValueError(
            f"videos directly in {videos_dir} have no class folder: {_some(loose)}. Move them "
            f"into {videos_dir}/<class>/, list them with their labels in --csv, or pass "
            "--unlabelled"
        )
    named = []
    for video_id, st in found:
        name = video_id.split(os.sep)[0]
        named.append((video_id, name, f"folder {os.path.join(videos_dir, name)}", st))
    return named, skipped


def _need_csv(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--csv file {path} does not exist")


def _from_csv(videos_dir: str, path: str) -> list[tuple[str, str, int]]:
    """``(id, class name, line number)`` of the rows of a ``path,label`` CSV."""
    _need_csv(path)
    rows, first_line = [], {}
    with open(path, newline="", encoding="utf-8") as f:
        for number, row in enumerate(csv_module.reader(f), start=1):
            row = [field.strip() for field in row]
            if not any(row):
                continue
            if not rows and [r.lower() for r in row] == ["path", "label"]:
                continue  # header
            where = f"{path} line {number}"
            if len(row) != 2:
                raise ValueError(
                    f"{where}: expected 2 fields `path,label`, got {len(row)}: {row}. Each row "
                    "is a video's path (relative to --videos_dir or absolute) and its class name"
                )
            file, label = row
            if not file or not label:
                missing = "path" if not file else "label"
                raise ValueError(f"{where}: the {missing} is empty in {row}; fill it in")
            video_id = _video_id(os.path.normpath(os.path.join(videos_dir, file)), videos_dir)
            if video_id in first_line:
                raise ValueError(
                    f"{where}: {file} is listed again (first on line {first_line[video_id]}); "
                    "list each video once"
                )
            first_line[video_id] = number
            rows.append((video_id, label, number))
    return rows


def _once_per_file(videos_dir: str, named):
    """``named`` with one path per real file, and the other paths as skipped. Kept is the
    path that goes through no link, else the one with the fewest folders."""
    by_file = {}
    for item in named:
        st = item[3]
        # Some file systems give no inode numbers; the resolved path then names the file.
        key = (
            (st.st_dev, st.st_ino)
            if st.st_ino
            else os.path.realpath(os.path.join(videos_dir, item[0]))
        )
        by_file.setdefault(key, []).append(item)
    kept, skipped = [], []
    for same in by_file.values():
        if len(same) > 1:
            real = os.path.realpath(os.path.join(videos_dir, same[0][0]))
            direct = _video_id(real, os.path.realpath(videos_dir))
            same.sort(key=lambda i: (i[0] != direct, i[0].count(os.sep), i[0]))
        kept.append(same[0])
        skipped += [dict(path=i[0], reason=f"same file as {same[0][0]}") for i in same[1:]]
    return kept, skipped


def _need_videos_dir(videos_dir: str) -> None:
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"--videos_dir {videos_dir} is not a directory; check the path")


def find_videos(
    videos_dir: str,
    *,
    csv: str | None = None,
    classes: str | Sequence[str] | None = None,
    unlabelled: bool = False,
    extensions: Sequence[str] | str = DEFAULT_EXTENSIONS,
) -> Inputs:
    """The videos of a layout (see the module docstring), with labels and sizes.

    ``classes`` is a class-list file or the names themselves.
    """
    _need_videos_dir(videos_dir)
    if unlabelled and (csv or classes):
        raise ValueError("--unlabelled gives every video label -1; drop --csv and --classes")
    extensions = _normalise_extensions(extensions)
    fixed = read_class_list(classes) if isinstance(classes, str) else classes
    skipped = []
    if csv:
        named = []
        for video_id, name, number in _from_csv(videos_dir, csv):
            st, why = _regular_file(os.path.join(videos_dir, video_id))
            if st is not None:
                named.append((video_id, name, f"{csv} line {number}", st))
            else:
                # The reason leaves out the CSV's path so that the plan (which records it)
                # does not change with how the path is spelled.
                skipped.append(dict(path=video_id, reason=f"{why} (CSV line {number})"))
        # Files that exist but cannot be used are for the summary; none existing at all
        # more likely means the wrong --videos_dir.
        if not named and all(s["reason"].startswith("file not found") for s in skipped):
            raise ValueError(_nothing_found(videos_dir, csv, extensions, len(skipped)))
    else:
        named, skipped = _from_class_folders(videos_dir, extensions, unlabelled)
        if not named and not skipped:
            raise ValueError(_nothing_found(videos_dir, csv, extensions, 0))
    named, duplicates = _once_per_file(videos_dir, named)
    skipped += duplicates
    class_list = list(fixed) if fixed else sorted({n for _, n, _, _ in named if n is not None})
    index = {name: i for i, name in enumerate(class_list)}
    unknown = {}  # name -> where it is first used
    for _, name, where, _ in named:
        if not unlabelled and name not in index:
            unknown.setdefault(name, where)
    if unknown:
        described = [f"{name!r} ({where})" for name, where in sorted(unknown.items())]
        raise ValueError(
            f"labels not in the --classes list: {_some(described)}. Add them to the list or "
            "fix the labels"
        )
    videos = sorted((i, -1 if unlabelled else index[name], st.st_size) for i, name, _, st in named)
    return Inputs(videos, [] if unlabelled else class_list, sorted(skipped, key=_by_path))


def _nothing_found(videos_dir: str, csv: str | None, extensions, num_missing: int) -> str:
    if csv and num_missing:
        return (
            f"none of the {num_missing} files listed in {csv} exist under {videos_dir}; is "
            "--videos_dir the folder the CSV's paths are relative to?"
        )
    if csv:
        return f"{csv} lists no videos; add rows `path,label`"
    kinds = ",".join(e.lstrip(".") for e in extensions)
    return (
        f"no video files ({kinds}) under {videos_dir}; expected {videos_dir}/<class>/<file> "
        "(or pass --csv, --unlabelled or other --extensions)"
    )


def _by_path(failure: Mapping[str, str]) -> str:
    return failure["path"]


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


def skipped_path(out: str, split: str) -> str:
    return os.path.join(out, f"{split}.skipped.tsv")


def _done_path(out: str, shard: Mapping[str, Any]) -> str:
    return os.path.join(out, shard["file"] + ".done.json")


def _fingerprint(shard: Mapping[str, Any]) -> str:
    """Identifies a shard's planned content, so a sidecar left by another plan (one that was
    deleted) never passes for this plan's shard of the same name."""
    text = json.dumps([shard["file"], shard["videos"]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _write_text(path: str, text: str) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
    os.replace(tmp, path)


def _write_json(path: str, value: Any) -> None:
    _write_text(path, json.dumps(value, indent=1))


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
            changes.append(f"{len(ids)} videos {what}: {_some(ids)}")
    if old["missing"] != new["missing"]:
        changes.append("the files skipped while listing differ")
    return "; ".join(changes) or "the shards are cut differently"


def _planned(out: str, split: str, plan: Mapping[str, Any]) -> bool:
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


def _remove_old_split(out: str, split: str, plan: Mapping[str, Any]) -> None:
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


def _remove_leftovers(out: str, split: str) -> None:
    """Temporary files of an interrupted run: a complete file never has this name."""
    for name in os.listdir(out):
        if name.startswith(f"{split}.") and ".tmp-" in name:
            os.remove(os.path.join(out, name))


def _check_writable(out: str, split: str) -> None:
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


def _finished(out: str, shard: Mapping[str, Any]) -> dict[str, Any] | None:
    """The shard's sidecar, if it finished under this plan."""
    done = _done_path(out, shard)
    if not (os.path.isfile(done) and os.path.isfile(os.path.join(out, shard["file"]))):
        return None
    try:
        with open(done) as f:
            result = json.load(f)
    except (OSError, json.JSONDecodeError):
        return None
    return result if result.get("plan") == _fingerprint(shard) else None


class _NotRegular(Exception):
    pass


def _read_video(path: str) -> tuple[bytes, dict[str, Any]]:
    st, why = _regular_file(path)
    if st is None:  # replaced since it was listed
        raise _NotRegular(why)
    # Non-blocking, so that a FIFO swapped in after the look cannot stall the shard.
    with open(os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0)), "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise _NotRegular("not a regular file")
        data = f.read()
    return data, video_records.probe_video(data)


def _write_shard(
    videos_dir: str, out: str, shard: Mapping[str, Any], on_video: Callable[[], None]
) -> dict[str, Any]:
    """Writes one planned shard and then its sidecar; returns the sidecar."""
    done = _done_path(out, shard)
    if os.path.exists(done):
        os.remove(done)  # the shard is about to change, its old sidecar no longer holds
    failures, durations = [], {}
    with video_records.ShardWriter(os.path.join(out, shard["file"])) as writer:
        for video_id, label, _ in shard["videos"]:
            path = os.path.join(videos_dir, video_id)
            try:
                data, meta = _read_video(path)
            except (video_records.BadVideo, _NotRegular) as e:
                failures.append(dict(path=video_id, reason=str(e)))
            except OSError as e:
                failures.append(dict(path=video_id, reason=f"cannot read ({e.strerror or e})"))
            except Exception as e:
                # Name the file: otherwise a long run stops without saying where.
                raise RuntimeError(f"unexpected error on {path}: {type(e).__name__}: {e}") from e
            else:
                writer.write(video_records.encode_record(video_id, label, data, meta))
                durations[video_id] = meta["num_frames"] / meta["fps"]
            on_video()
    result = dict(
        file=shard["file"],
        plan=_fingerprint(shard),
        num_records=writer.num_records,
        failures=failures,
        durations=durations,  # seconds, for the report of short videos
    )
    _write_json(done, result)
    return result


# Worker processes report each finished video on this queue (set when a worker starts).
_progress: Any = None


def _start_worker(ticks, parent_alive) -> None:
    global _progress
    _progress = ticks
    threading.Thread(target=_exit_with_parent, args=(parent_alive,), daemon=True).start()


def _exit_with_parent(parent_alive) -> None:
    """Ends the worker when the parent dies, even by SIGKILL: only the parent holds the
    pipe's other end, which the system closes then. A worker left alone would wait for work
    forever, and keep multiprocessing's resource tracker (whose pipe it also holds) alive."""
    try:
        parent_alive.recv_bytes()
    except (EOFError, OSError):
        pass
    os._exit(1)


def _write_shard_in_worker(videos_dir: str, out: str, shard: Mapping[str, Any], index: int):
    return index, _write_shard(videos_dir, out, shard, lambda: _progress.put(index))


def _write_in_pool(videos_dir, out, todo, workers, bar) -> dict[int, dict[str, Any]]:
    """Writes the ``todo`` shards (index -> shard) in ``workers`` processes."""
    # Fresh interpreters rather than forked copies: the caller may hold threads (and locks
    # held by them) that a forked child would inherit in a locked state.
    context = multiprocessing.get_context("spawn")
    ticks = context.Queue()
    parent_alive, alive = context.Pipe(duplex=False)  # nothing is ever sent on it
    counted = {i: 0 for i in todo}  # videos shown on the bar per shard
    results = {}

    def show_progress():
        while True:
            try:
                index = ticks.get_nowait()
            except queue_module.Empty:
                return
            if index not in results:  # a finished shard's count is already exact
                counted[index] += 1
                bar.update(1)

    try:
        with concurrent.futures.ProcessPoolExecutor(
            workers,
            mp_context=context,
            initializer=_start_worker,
            initargs=(ticks, parent_alive),
        ) as pool:
            pending = {
                pool.submit(_write_shard_in_worker, videos_dir, out, shard, index)
                for index, shard in todo.items()
            }
            try:
                while pending:
                    finished, pending = concurrent.futures.wait(
                        pending, timeout=0.2, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    show_progress()
                    for future in finished:
                        index, result = future.result()
                        results[index] = result
                        # Progress messages may arrive after the result; settle the count now.
                        bar.update(len(todo[index]["videos"]) - counted[index])
            except BaseException:
                # Shards being written finish (they count when resuming); the rest never start.
                pool.shutdown(wait=True, cancel_futures=True)
                raise
    finally:
        alive.close()  # the workers have exited: closing no longer ends any
        parent_alive.close()
    return results


def _class_list_in(folder: str) -> str:
    path = os.path.join(folder, CLASS_LIST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--classes_from {folder} has no {CLASS_LIST}; a labelled split prepared into "
            f"{folder} leaves one (or pass --classes FILE)"
        )
    return path


def _shared_classes(out: str, split: str, inputs: Inputs, explicit: bool) -> Inputs:
    """``inputs`` with the class list the splits already in ``out`` use (see the module
    docstring)."""
    path = os.path.join(out, CLASS_LIST)
    if not (inputs.classes and inputs.videos and os.path.isfile(path)):
        return inputs
    shared = read_class_list(path)
    if inputs.classes == shared:
        return inputs
    used = sorted({inputs.classes[label] for _, label, _ in inputs.videos})
    outside = [name for name in used if name not in shared]
    if not explicit and not outside:
        print(
            f"Using the class list of {path} ({len(shared)} classes): it holds every label of "
            f"split {split!r}, and the splits already in {out} use it.",
            file=sys.stderr,
        )
        index = {name: i for i, name in enumerate(shared)}
        videos = [(i, index[inputs.classes[label]], size) for i, label, size in inputs.videos]
        return dataclasses.replace(inputs, videos=videos, classes=shared)
    lacking = f"; {_some(outside)} not in it" if outside else ""
    raise ValueError(
        f"split {split!r} has the classes [{_some(inputs.classes)}] but the splits in {out} "
        f"use [{_some(shared)}] ({path}), so label indices would not line up. Pass --classes "
        f"{path} (every label must be in it{lacking}), or use another --out"
    )


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
        classes = _class_list_in(classes_from)
    _need_videos_dir(videos_dir)
    if csv:
        _need_csv(csv)
    if os.path.exists(out) and not os.path.isdir(out):
        raise FileExistsError(f"--out {out} is a file; give a folder (new or existing)")
    if not os.path.isfile(video_records.info_path(out, split)):
        _check_writable(out, split)  # a finished split may be reread from read-only storage

    inputs = find_videos(
        videos_dir, csv=csv, classes=classes, unlabelled=unlabelled, extensions=extensions
    )
    inputs = _shared_classes(out, split, inputs, explicit=classes is not None)
    if not inputs.videos:
        _write_skipped(out, split, inputs.skipped)
        raise _nothing_usable(out, split, inputs.skipped)
    plan = dict(
        format=PLAN_FORMAT,
        split=split,
        shard_size_mb=shard_size_mb,
        classes=inputs.classes,
        missing=inputs.skipped,  # the key of the first format: skipped while listing
        shards=plan_shards(inputs.videos, split, shard_size_mb),
    )
    shards = plan["shards"]
    planned = _planned(out, split, plan)
    results = {i: r for i, s in enumerate(shards) if (r := _finished(out, s)) is not None}
    todo = {i: s for i, s in enumerate(shards) if i not in results}
    if not planned or todo:
        _check_writable(out, split)
    if not planned:
        _remove_old_split(out, split, plan)
        _write_json(plan_path(out, split), plan)
    _remove_leftovers(out, split)
    if progress:
        print(
            f"{len(inputs.videos)} videos in {len(shards)} shards ({len(inputs.skipped)} other "
            f"paths skipped); {len(results)} shards already done, writing {len(todo)} to {out}",
            file=sys.stderr,
        )
    results.update(_write_shards(videos_dir, out, todo, workers, progress, plan))

    failures = list(inputs.skipped) + [f for r in results.values() for f in r["failures"]]
    failures.sort(key=_by_path)
    _write_skipped(out, split, failures)
    written = [
        dict(file=s["file"], num_records=results[i]["num_records"]) for i, s in enumerate(shards)
    ]
    if not sum(s["num_records"] for s in written):
        raise _nothing_usable(out, split, failures)
    _write_class_list(out, inputs.classes)
    return _write_info(out, split, written, inputs.classes, failures)


def _nothing_usable(out: str, split: str, failures) -> NothingUsable:
    return NothingUsable(
        f"none of the {len(failures)} video files of split {split!r} was usable; the summary "
        f"above says why, and {skipped_path(out, split)} lists each file",
        "\n".join(_summary(failures, 0, skipped_path(out, split))),
    )


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


def _write_class_list(out: str, classes: Sequence[str]) -> None:
    """``out/classes.txt``, written by the first labelled split: the ``--classes`` file that
    gives the other splits the same label indices."""
    path = os.path.join(out, CLASS_LIST)
    if classes and not os.path.exists(path):
        _write_text(path, "".join(f"{name}\n" for name in classes))


def _write_skipped(out: str, split: str, failures: Sequence[Mapping[str, str]]) -> None:
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
        _write_text(path, text.getvalue())
    except OSError as e:
        print(f"Could not write {path} ({e.strerror or e})", file=sys.stderr)


def _write_shards(videos_dir, out, todo, workers, progress, plan) -> dict[int, dict[str, Any]]:
    from tqdm import tqdm

    total = sum(len(s["videos"]) for s in plan["shards"])
    waiting = sum(len(s["videos"]) for s in todo.values())
    with tqdm(total=total, initial=total - waiting, unit="video", disable=not progress) as bar:
        if workers == 1 or len(todo) <= 1:
            # In this process: no start-up cost, and errors surface with a plain traceback.
            return {
                i: _write_shard(videos_dir, out, s, lambda: bar.update(1)) for i, s in todo.items()
            }
        return _write_in_pool(videos_dir, out, todo, min(workers, len(todo)), bar)


def _reason_group(reason: str) -> str:
    """The reason without what differs per file (a link's target, the kept path, the CSV
    line), so that files skipped for the same cause are counted together."""
    if reason.endswith(")") and " (CSV line " in reason:
        reason = reason[: reason.rindex(" (CSV line ")]
    return next((g for g in _REASON_GROUPS if reason.startswith(g)), reason)


def _summary(
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
            lines.append(f"  {len(group):6d}  {reason}: {_some(names)}")
    if short:
        lines.append(f"Kept {len(short)} videos shorter than --clip_seconds={clip_seconds:.4g}:")
        lines.append(f"  {len(short):6d}  {SHORT}: {_some(short)}")
    return lines


def _short_videos(out: str, info: Mapping[str, Any], clip_seconds: float) -> list[str]:
    """Records shorter than ``clip_seconds``, from the shards' sidecars."""
    short = []
    for shard in info["shards"]:
        try:
            with open(_done_path(out, shard)) as f:
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
    lines += _summary(info["failures"], info["num_records"], tsv, short, clip_seconds)
    return "\n".join(lines)


def _message(e: BaseException) -> str:
    """One line: the system's words and the path for OS errors, else the message."""
    if isinstance(e, OSError) and e.strerror and e.filename:
        return f"{e.strerror}: {e.filename}"
    return str(e)


def main(argv):
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _CLIP_SECONDS.value > 0:
        raise app.UsageError(f"--clip_seconds must be positive, got {_CLIP_SECONDS.value}")
    try:
        info = prepare(
            _VIDEOS_DIR.value,
            _OUT.value,
            _SPLIT.value,
            csv=_CSV.value,
            classes=_CLASSES.value,
            classes_from=_CLASSES_FROM.value,
            unlabelled=_UNLABELLED.value,
            shard_size_mb=_SHARD_SIZE_MB.value,
            workers=_WORKERS.value,
            extensions=_EXTENSIONS.value,
            progress=_PROGRESS.value,
        )
    except NothingUsable as e:
        print(e.summary)
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print(f"Error: {_message(e)}", file=sys.stderr)
        sys.exit(1)
    print(report(info, _OUT.value, _CLIP_SECONDS.value))


if __name__ == "__main__":
    from absl import app, flags

    _VIDEOS_DIR = flags.DEFINE_string(
        "videos_dir", None, "Folder of the videos: <class>/<file>, or what --csv lists."
    )
    _CSV = flags.DEFINE_string(
        "csv", None, "Rows `path,label` (path relative to --videos_dir or absolute)."
    )
    _CLASSES = flags.DEFINE_string(
        "classes", None, "File with the class names, one per line (default: sorted labels)."
    )
    _CLASSES_FROM = flags.DEFINE_string(
        "classes_from", None, "Dataset folder whose classes.txt is the class list (--classes)."
    )
    _UNLABELLED = flags.DEFINE_bool(
        "unlabelled", False, "Every video under --videos_dir, any depth, with label -1."
    )
    _OUT = flags.DEFINE_string("out", None, "Dataset directory for the shards and split info.")
    _SPLIT = flags.DEFINE_string("split", None, "Split name, e.g. train or validation.")
    _SHARD_SIZE_MB = flags.DEFINE_float(
        "shard_size_mb", 512, "Input bytes per shard, in MiB (about)."
    )
    _WORKERS = flags.DEFINE_integer(
        "workers", None, "Processes writing shards (default: one per CPU)."
    )
    _EXTENSIONS = flags.DEFINE_list(
        "extensions", list(DEFAULT_EXTENSIONS), "Extensions of video files (class folders)."
    )
    _CLIP_SECONDS = flags.DEFINE_float(
        "clip_seconds",
        DEFAULT_CLIP_SECONDS,
        "Videos shorter than this are reported as short (default: 16 frames at stride 4, 30 fps).",
    )
    _PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.mark_flags_as_required(["videos_dir", "out", "split"])
    app.run(main)
