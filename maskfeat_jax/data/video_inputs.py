"""Finding and vetting the input videos of ``prepare_video``: class folders, a CSV or an
unlabelled folder, as they come.

Hidden names are ignored. Links are followed, folder links too, except one that leads back
into a folder being walked (a loop, reported). Each real file is kept once: other paths to it
are skipped as "same file as <kept id>". Paths that are not regular files (broken links,
FIFOs, sockets, devices, folders named like videos) are skipped without being opened: opening
a FIFO blocks, reading a device may never end. Mistakes in the layout (videos without a class
folder, bad CSV rows, labels outside ``--classes``) are errors that name the fix.
"""

from __future__ import annotations

import csv as csv_module
import dataclasses
import errno
import os
import stat
from collections.abc import Mapping, Sequence

__all__ = [
    "DEFAULT_EXTENSIONS",
    "Inputs",
    "by_path",
    "check_csv",
    "check_videos_dir",
    "find_videos",
    "read_class_list",
    "regular_file",
    "shown_names",
]

DEFAULT_EXTENSIONS = ("mp4", "webm", "mkv", "avi", "mov", "m4v")
_SHOWN = 5  # how many offending names an error message lists
_FILE_KINDS = (
    (stat.S_ISDIR, "directory"),
    (stat.S_ISFIFO, "FIFO"),
    (stat.S_ISSOCK, "socket"),
    (stat.S_ISCHR, "character device"),
    (stat.S_ISBLK, "block device"),
)


@dataclasses.dataclass
class Inputs:
    """What a layout holds: ``videos`` as sorted ``(id, label, size)``, the class list and
    the paths found but not usable (as failures: not regular files, duplicates, files a CSV
    lists that do not exist)."""

    videos: list[tuple[str, int, int]]
    classes: list[str]
    skipped: list[dict[str, str]]


def shown_names(names: Sequence[str]) -> str:
    """The first few ``names``, and how many more there are."""
    shown = ", ".join(str(n) for n in names[:_SHOWN])
    return shown + (f" (and {len(names) - _SHOWN} more)" if len(names) > _SHOWN else "")


def _normalize_extensions(extensions: Sequence[str] | str) -> tuple[str, ...]:
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
        raise ValueError(
            f"--classes file {path} lists some classes twice: {shown_names(duplicates)}"
        )
    return names


def _video_id(path: str, videos_dir: str) -> str:
    """The path relative to ``videos_dir``; files outside it keep their absolute path."""
    relative = os.path.relpath(path, videos_dir)
    return os.path.abspath(path) if relative.split(os.sep)[0] == os.pardir else relative


def regular_file(path: str) -> tuple[os.stat_result | None, str]:
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
            st, why = regular_file(entry.path)
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
            f"videos directly in {videos_dir} have no class folder: {shown_names(loose)}. Move "
            f"them into {videos_dir}/<class>/, list them with their labels in --csv, or pass "
            "--unlabelled"
        )
    named = []
    for video_id, st in found:
        name = video_id.split(os.sep)[0]
        named.append((video_id, name, f"folder {os.path.join(videos_dir, name)}", st))
    return named, skipped


def check_csv(path: str) -> None:
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--csv file {path} does not exist")


def _from_csv(videos_dir: str, path: str) -> list[tuple[str, str, int]]:
    """``(id, class name, line number)`` of the rows of a ``path,label`` CSV."""
    check_csv(path)
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


def check_videos_dir(videos_dir: str) -> None:
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
    check_videos_dir(videos_dir)
    if unlabelled and (csv or classes):
        raise ValueError("--unlabelled gives every video label -1; drop --csv and --classes")
    extensions = _normalize_extensions(extensions)
    fixed = read_class_list(classes) if isinstance(classes, str) else classes
    skipped = []
    if csv:
        named = []
        for video_id, name, number in _from_csv(videos_dir, csv):
            st, why = regular_file(os.path.join(videos_dir, video_id))
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
            f"labels not in the --classes list: {shown_names(described)}. Add them to the list or "
            "fix the labels"
        )
    videos = sorted((i, -1 if unlabelled else index[name], st.st_size) for i, name, _, st in named)
    return Inputs(videos, [] if unlabelled else class_list, sorted(skipped, key=by_path))


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


def by_path(failure: Mapping[str, str]) -> str:
    return failure["path"]
