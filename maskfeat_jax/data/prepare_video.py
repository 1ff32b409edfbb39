r"""Video files -> record shards: ``python -m maskfeat_jax.data.prepare_video``.

  python -m maskfeat_jax.data.prepare_video --videos_dir kinetics/train \
      --out data/k400 --split train
  python -m maskfeat_jax.data.prepare_video --videos_dir kinetics/val \
      --out data/k400 --split validation --classes data/k400/classes.txt
  python -m maskfeat_jax.data.prepare_video --videos_dir clips --csv clips.csv \
      --out data/clips --split train

Input layouts:

  class folders  ``videos_dir/<class>/<file>`` (files deeper inside a class folder belong to
                 it). Video files are recognised by ``--extensions``; other files are ignored.
  ``--csv``      rows ``path,label`` (an optional header row ``path,label``); ``path`` is
                 relative to ``videos_dir`` or absolute, ``label`` a class name (``7`` is the
                 name "7", not an index).
  ``--unlabelled``  every video file under ``videos_dir`` (any depth), label -1.

Classes are the sorted unique names, a label is the index of its name. ``--classes`` (one
name per line) fixes the list instead, so that splits prepared separately agree on indices.
The first labelled split written to ``out`` leaves its list in ``out/classes.txt`` for that.
A record's ``id`` is the file's path relative to ``videos_dir``.

Plan: the sorted videos are cut, in order, into shards of about ``--shard_size_mb`` of
input bytes, and the plan (every shard's file name and videos, with their labels and
sizes) is written to ``out/<split>.plan.json`` before any shard. Shards are written in
parallel, one task per shard (see ``video_records`` for the record format). Files that
cannot be read or are not usable videos are skipped and listed as failures.

Resume: a finished shard leaves its file (renamed into place when complete) and then a
sidecar ``<shard>.done.json`` with its record count, its failures and a fingerprint of its
part of the plan. Rerunning the same command checks that the inputs still give the same
plan, keeps the shards whose sidecar matches, rewrites the others (a shard without its
sidecar may be from an interrupted run), and writes ``out/<split>.json`` once all are done.
"""

from __future__ import annotations

import concurrent.futures
import csv as csv_module
import dataclasses
import hashlib
import json
import multiprocessing
import os
import queue as queue_module
import sys
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from maskfeat_jax.data import video_records

__all__ = [
    "DEFAULT_EXTENSIONS",
    "PLAN_FORMAT",
    "Inputs",
    "find_videos",
    "plan_path",
    "plan_shards",
    "prepare",
    "read_class_list",
    "report",
]

PLAN_FORMAT = "maskfeat-video-plan/1"
CLASS_LIST = "classes.txt"  # written next to the splits by the first labelled one
DEFAULT_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
_MB = 1024 * 1024
_SHOWN = 5  # how many offending names an error message lists


@dataclasses.dataclass
class Inputs:
    """What a layout holds: ``videos`` as sorted ``(id, label, size)``, the class list and
    the files a CSV lists that do not exist (as failures)."""

    videos: list[tuple[str, int, int]]
    classes: list[str]
    missing: list[dict[str, str]]


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


def _walk_files(directory: str, extensions: tuple[str, ...]) -> list[str]:
    """Video files under ``directory``, any depth. Hidden names are left out: they are
    partial downloads or file-system metadata, not videos."""
    found = []
    for root, dirs, files in os.walk(directory, followlinks=True):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        found += [
            os.path.join(root, name)
            for name in files
            if not name.startswith(".") and name.lower().endswith(extensions)
        ]
    return found


def _from_class_folders(
    videos_dir: str, extensions: tuple[str, ...], unlabelled: bool
) -> list[tuple[str, str | None]]:
    """``(id, class name or None)`` of the videos in a class-folder (or unlabelled) layout."""
    if unlabelled:
        return [(_video_id(p, videos_dir), None) for p in _walk_files(videos_dir, extensions)]
    loose = sorted(
        name
        for name in os.listdir(videos_dir)
        if name.lower().endswith(extensions)
        and not name.startswith(".")
        and os.path.isfile(os.path.join(videos_dir, name))
    )
    if loose:
        raise ValueError(
            f"videos directly in {videos_dir} have no class folder: {_some(loose)}. Move them "
            f"into {videos_dir}/<class>/, list them with their labels in --csv, or pass "
            "--unlabelled"
        )
    found = []
    for name in os.listdir(videos_dir):
        folder = os.path.join(videos_dir, name)
        if name.startswith(".") or not os.path.isdir(folder):
            continue
        found += [(_video_id(p, videos_dir), name) for p in _walk_files(folder, extensions)]
    return found


def _from_csv(videos_dir: str, path: str) -> list[tuple[str, str, int]]:
    """``(id, class name, line number)`` of the rows of a ``path,label`` CSV."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--csv file {path} does not exist")
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
    if not os.path.isdir(videos_dir):
        raise FileNotFoundError(f"--videos_dir {videos_dir} is not a directory; check the path")
    if unlabelled and (csv or classes):
        raise ValueError("--unlabelled gives every video label -1; drop --csv and --classes")
    extensions = _normalise_extensions(extensions)
    fixed = read_class_list(classes) if isinstance(classes, str) else classes
    missing = []
    if csv:
        named = []
        for video_id, name, number in _from_csv(videos_dir, csv):
            if os.path.isfile(os.path.join(videos_dir, video_id)):
                named.append((video_id, name, f"{csv} line {number}"))
            else:
                # The reason leaves out the CSV's path so that the plan (which records it)
                # does not change with how the path is spelled.
                missing.append(dict(path=video_id, reason=f"file not found (CSV line {number})"))
    else:
        named = [
            (i, name, f"folder {os.path.join(videos_dir, name or '')}")
            for i, name in _from_class_folders(videos_dir, extensions, unlabelled)
        ]
    if not named:
        raise ValueError(_nothing_found(videos_dir, csv, extensions, len(missing)))
    class_list = list(fixed) if fixed else sorted({n for _, n, _ in named if n is not None})
    index = {name: i for i, name in enumerate(class_list)}
    unknown = {}  # name -> where it is first used
    for _, name, where in named:
        if not unlabelled and name not in index:
            unknown.setdefault(name, where)
    if unknown:
        described = [f"{name!r} ({where})" for name, where in sorted(unknown.items())]
        raise ValueError(
            f"labels not in the --classes list: {_some(described)}. Add them to the list or "
            "fix the labels"
        )
    videos = sorted(
        (i, -1 if unlabelled else index[name], os.path.getsize(os.path.join(videos_dir, i)))
        for i, name, _ in named
    )
    return Inputs(videos, [] if unlabelled else class_list, sorted(missing, key=_by_path))


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


def _done_path(out: str, shard: Mapping[str, Any]) -> str:
    return os.path.join(out, shard["file"] + ".done.json")


def _fingerprint(shard: Mapping[str, Any]) -> str:
    """Identifies a shard's planned content, so a sidecar left by another plan (one that was
    deleted) never passes for this plan's shard of the same name."""
    text = json.dumps([shard["file"], shard["videos"]], separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _write_json(path: str, value: Any) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w") as f:
        json.dump(value, f, indent=1)
    os.replace(tmp, path)


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
        changes.append("the files listed but not found differ")
    return "; ".join(changes) or "the shards are cut differently"


def _load_or_write_plan(out: str, split: str, plan: dict[str, Any]) -> None:
    path = plan_path(out, split)
    if os.path.isfile(path):
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
        return
    _remove_old_split(out, split, plan)
    _write_json(path, plan)


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


def _read_video(path: str) -> tuple[bytes, dict[str, Any]]:
    with open(path, "rb") as f:
        data = f.read()
    return data, video_records.probe_video(data)


def _write_shard(
    videos_dir: str, out: str, shard: Mapping[str, Any], on_video: Callable[[], None]
) -> dict[str, Any]:
    """Writes one planned shard and then its sidecar; returns the sidecar."""
    done = _done_path(out, shard)
    if os.path.exists(done):
        os.remove(done)  # the shard is about to change, its old sidecar no longer holds
    failures = []
    with video_records.ShardWriter(os.path.join(out, shard["file"])) as writer:
        for video_id, label, _ in shard["videos"]:
            path = os.path.join(videos_dir, video_id)
            try:
                data, meta = _read_video(path)
            except video_records.BadVideo as e:
                failures.append(dict(path=video_id, reason=str(e)))
            except OSError as e:
                failures.append(dict(path=video_id, reason=f"cannot read ({e.strerror or e})"))
            except Exception as e:
                # Name the file: otherwise a long run stops without saying where.
                raise RuntimeError(f"unexpected error on {path}: {type(e).__name__}: {e}") from e
            else:
                writer.write(video_records.encode_record(video_id, label, data, meta))
            on_video()
    result = dict(
        file=shard["file"],
        plan=_fingerprint(shard),
        num_records=writer.num_records,
        failures=failures,
    )
    _write_json(done, result)
    return result


# Worker processes report each finished video on this queue (set when a worker starts).
_progress: Any = None


def _start_worker(ticks) -> None:
    global _progress
    _progress = ticks


def _write_shard_in_worker(videos_dir: str, out: str, shard: Mapping[str, Any], index: int):
    return index, _write_shard(videos_dir, out, shard, lambda: _progress.put(index))


def _write_in_pool(videos_dir, out, todo, workers, bar) -> dict[int, dict[str, Any]]:
    """Writes the ``todo`` shards (index -> shard) in ``workers`` processes."""
    # Fresh interpreters rather than forked copies: the caller may hold threads (and locks
    # held by them) that a forked child would inherit in a locked state.
    context = multiprocessing.get_context("spawn")
    ticks = context.Queue()
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

    with concurrent.futures.ProcessPoolExecutor(
        workers, mp_context=context, initializer=_start_worker, initargs=(ticks,)
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
    return results


def prepare(
    videos_dir: str,
    out: str,
    split: str,
    *,
    csv: str | None = None,
    classes: str | Sequence[str] | None = None,
    unlabelled: bool = False,
    shard_size_mb: float = 512,
    workers: int | None = None,
    extensions: Sequence[str] | str = DEFAULT_EXTENSIONS,
    progress: bool = True,
) -> dict[str, Any]:
    """Writes (or finishes) split ``split`` of the videos in ``videos_dir`` to ``out``;
    returns the split's info (``video_records.read_info``). See the module docstring."""
    if not split or split != os.path.basename(split) or split.startswith("."):
        raise ValueError(f"--split {split!r} must be a plain name such as train or validation")
    if not shard_size_mb > 0:
        raise ValueError(f"--shard_size_mb must be positive, got {shard_size_mb}")
    workers = (os.cpu_count() or 1) if workers is None else workers
    if workers < 1:
        raise ValueError(f"--workers must be at least 1, got {workers}")
    inputs = find_videos(
        videos_dir, csv=csv, classes=classes, unlabelled=unlabelled, extensions=extensions
    )
    plan = dict(
        format=PLAN_FORMAT,
        split=split,
        shard_size_mb=shard_size_mb,
        classes=inputs.classes,
        missing=inputs.missing,
        shards=plan_shards(inputs.videos, split, shard_size_mb),
    )
    os.makedirs(out, exist_ok=True)
    _load_or_write_plan(out, split, plan)
    _remove_leftovers(out, split)

    shards = plan["shards"]
    results = {i: r for i, s in enumerate(shards) if (r := _finished(out, s)) is not None}
    todo = {i: s for i, s in enumerate(shards) if i not in results}
    if progress:
        print(
            f"{len(inputs.videos)} videos in {len(shards)} shards; {len(results)} already done, "
            f"writing {len(todo)} to {out}",
            file=sys.stderr,
        )
    results.update(_write_shards(videos_dir, out, todo, workers, progress, plan))

    failures = list(inputs.missing) + [f for r in results.values() for f in r["failures"]]
    _write_class_list(out, inputs.classes)
    return video_records.write_info(
        out,
        split,
        [dict(file=s["file"], num_records=results[i]["num_records"]) for i, s in enumerate(shards)],
        inputs.classes,
        sorted(failures, key=_by_path),
    )


def _write_class_list(out: str, classes: Sequence[str]) -> None:
    """``out/classes.txt``, written by the first labelled split: the ``--classes`` file that
    gives the other splits the same label indices."""
    path = os.path.join(out, CLASS_LIST)
    if classes and not os.path.exists(path):
        tmp = f"{path}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            f.write("".join(f"{name}\n" for name in classes))
        os.replace(tmp, path)


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


def report(info: Mapping[str, Any], out: str) -> str:
    """What a finished preparation wrote and skipped, for people."""
    lines = [
        f"Wrote {info['num_records']} records in {len(info['shards'])} shards to "
        f"{video_records.info_path(out, info['split'])}"
        + (f" ({len(info['classes'])} classes)." if info["classes"] else " (unlabelled).")
    ]
    if info["failures"]:
        count = len(info["failures"])
        lines.append(f"Skipped {count} file{'s' if count != 1 else ''}:")
        lines += [f"  {f['path']}: {f['reason']}" for f in info["failures"]]
    return "\n".join(lines)


def main(argv):
    from absl import app

    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    try:
        info = prepare(
            _VIDEOS_DIR.value,
            _OUT.value,
            _SPLIT.value,
            csv=_CSV.value,
            classes=_CLASSES.value,
            unlabelled=_UNLABELLED.value,
            shard_size_mb=_SHARD_SIZE_MB.value,
            workers=_WORKERS.value,
            extensions=_EXTENSIONS.value,
            progress=_PROGRESS.value,
        )
    except (ValueError, FileNotFoundError) as e:
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    print(report(info, _OUT.value))


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
    _PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")
    flags.mark_flags_as_required(["videos_dir", "out", "split"])
    app.run(main)
