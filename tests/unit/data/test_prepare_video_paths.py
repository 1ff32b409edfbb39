"""prepare_video over folders as they come: links (broken, looping, duplicate), FIFOs and other
non-files, short videos in the summary, upper-case extensions and unicode names."""

import contextlib
import os
import socket
import threading

from maskfeat_jax.data import prepare_video, video_records
from tests.support.video_data import records
from tests.support.video_paths import RUN, put


def reasons(info):
    return {f["path"]: f["reason"] for f in info["failures"]}


def ids(out, split="train"):
    return sorted(r["id"] for r in records(out, split))


@contextlib.contextmanager
def never_blocked_by(fifo):
    """Guards a test against hanging on ``fifo``: after 20 s, a reader blocked on it gets
    end-of-file. Yields a list that holds True if one ever was."""
    blocked = []

    def release():
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))  # fails unless a reader waits
            blocked.append(True)
        except OSError:
            pass

    timer = threading.Timer(20, release)
    timer.start()
    try:
        yield blocked
    finally:
        timer.cancel()


def test_paths_that_are_not_files_are_skipped_unopened(tmp_path, clips):
    root = str(tmp_path / "videos")
    put(f"{root}/cls/good.mp4", clips["short0"])
    os.symlink("/nowhere/gone.mp4", f"{root}/cls/broken.mp4")
    os.mkfifo(f"{root}/cls/pipe.mp4")
    os.symlink(os.devnull, f"{root}/cls/device.mp4")
    os.mkdir(f"{root}/cls/folder.mp4")
    sock = socket.socket(socket.AF_UNIX)
    try:
        sock.bind(f"{root}/cls/socket.mp4")
    except OSError:  # a path too long for a socket address: the rest still holds
        sock.close()
        sock = None
    # Hidden names stay silent: file-system metadata and partial downloads.
    put(f"{root}/cls/.DS_Store", b"\0\5\26\7")
    put(f"{root}/cls/._good.mp4", b"\0\5\26\7")
    put(f"{root}/cls/.hidden/x.mp4", b"partial")
    out = str(tmp_path / "data")
    with never_blocked_by(f"{root}/cls/pipe.mp4") as blocked:
        info = prepare_video.prepare(root, out, "train", **RUN)
    if sock is not None:
        sock.close()
    assert not blocked, "the FIFO was opened"
    expected = {
        "cls/broken.mp4": "broken symbolic link -> /nowhere/gone.mp4",
        "cls/pipe.mp4": "not a regular file (FIFO)",
        "cls/device.mp4": "not a regular file (character device)",
        "cls/folder.mp4": "not a regular file (directory)",
    }
    if sock is not None:
        expected["cls/socket.mp4"] = "not a regular file (socket)"
    assert reasons(info) == expected
    assert ids(out) == ["cls/good.mp4"]

    # Listed in a CSV: the same reasons, with the line.
    (tmp_path / "list.csv").write_text("cls/good.mp4,a\ncls/pipe.mp4,a\ncls/broken.mp4,b\n")
    csv_out = str(tmp_path / "csv")
    with never_blocked_by(f"{root}/cls/pipe.mp4") as blocked:
        info = prepare_video.prepare(root, csv_out, "train", csv=str(tmp_path / "list.csv"), **RUN)
    assert not blocked, "the FIFO was opened"
    assert reasons(info) == {
        "cls/pipe.mp4": "not a regular file (FIFO) (CSV line 2)",
        "cls/broken.mp4": "broken symbolic link -> /nowhere/gone.mp4 (CSV line 3)",
    }


def test_loops_and_duplicates_give_each_file_once(tmp_path, clips):
    root = tmp_path / "videos"
    put(f"{root}/a/v.mp4", clips["short0"])
    put(f"{root}/b/w.mp4", clips["short1"])
    put(str(tmp_path / "elsewhere/x.mp4"), clips["long"])
    os.symlink("..", root / "a" / "up")  # a loop: the walk would come back through it
    os.symlink("../b/w.mp4", root / "a" / "alias.mp4")
    os.link(root / "a" / "v.mp4", root / "b" / "hard.mp4")
    os.symlink(tmp_path / "elsewhere", root / "c")  # a class folder kept elsewhere
    info = prepare_video.prepare(str(root), str(tmp_path / "data"), "train", **RUN)
    assert info["classes"] == ["a", "b", "c"]
    found = {r["id"]: r["label"] for r in records(str(tmp_path / "data"), "train")}
    assert found == {"a/v.mp4": 0, "b/w.mp4": 1, "c/x.mp4": 2}
    assert reasons(info) == {
        "a/alias.mp4": "same file as b/w.mp4",
        "b/hard.mp4": "same file as a/v.mp4",
        "a/up": "symbolic link loop: leads back to --videos_dir",
    }

    # A folder link is walked, but the files it shows again are kept under their own path
    # (although the link sorts first); a loop inside it is reported where it is met.
    flat = tmp_path / "flat"
    put(f"{flat}/x/v.mp4", clips["short0"])
    os.symlink("x", flat / "a_link")
    os.symlink(".", flat / "x" / "self")
    info = prepare_video.prepare(str(flat), str(tmp_path / "u"), "train", unlabelled=True, **RUN)
    assert ids(str(tmp_path / "u")) == ["x/v.mp4"]
    assert reasons(info) == {
        "a_link/v.mp4": "same file as x/v.mp4",
        "a_link/self": "symbolic link loop: leads back to a_link",
        "x/self": "symbolic link loop: leads back to x",
    }


def test_summary_by_reason_and_short_videos(tmp_path, clips):
    root = str(tmp_path / "videos")
    put(f"{root}/cls/s0.mp4", clips["short0"])
    put(f"{root}/cls/s1.mp4", clips["short1"])
    put(f"{root}/cls/long.mp4", clips["long"])
    put(f"{root}/cls/bad\tname.mp4", b"")  # a tab: the TSV quotes it
    for name in ("l1", "l2", "l3"):
        os.symlink(f"/nowhere/{name}", f"{root}/cls/{name}.mp4")
    out = str(tmp_path / "data")
    info = prepare_video.prepare(root, out, "train", shard_size_mb=0.005, **RUN)
    assert len(info["shards"]) == 4  # a file each
    tsv = prepare_video.skipped_path(out, "train")
    assert tsv.endswith("train.skipped.tsv")  # not .json: those name splits
    empty = reasons(info)["cls/bad\tname.mp4"]  # video_records' words
    with open(tsv) as f:
        assert f.read().splitlines() == [
            "path\treason",
            f'"cls/bad\tname.mp4"\t{empty}',
            "cls/l1.mp4\tbroken symbolic link -> /nowhere/l1",
            "cls/l2.mp4\tbroken symbolic link -> /nowhere/l2",
            "cls/l3.mp4\tbroken symbolic link -> /nowhere/l3",
        ]
    text = prepare_video.report(info, out)
    lines = text.splitlines()
    assert lines[1] == f"Skipped 4 of 7 files, by reason (each in {tsv}):"
    links = ", ".join(f"cls/l{i}.mp4 (broken symbolic link -> /nowhere/l{i})" for i in (1, 2, 3))
    assert lines[2] == f"       3  broken symbolic link: {links}"
    assert lines[3] == f"       1  {empty}: cls/bad\tname.mp4"
    assert lines[4] == "Kept 2 videos shorter than --clip_seconds=2.133:"
    assert lines[5] == f"       2  {prepare_video.SHORT}: cls/s0.mp4, cls/s1.mp4"
    assert "short" not in prepare_video.report(info, out, clip_seconds=1.0)
    assert "cls/long.mp4" in prepare_video.report(info, out, clip_seconds=3.0)

    # A resumed run knows the short ones of the shards it kept.
    os.remove(video_records.info_path(out, "train"))
    os.remove(os.path.join(out, info["shards"][0]["file"]))
    again = prepare_video.prepare(root, out, "train", shard_size_mb=0.005, **RUN)
    assert prepare_video.report(again, out) == text


def test_upper_case_extensions_and_unicode_names(tmp_path, clips):
    root = tmp_path / "videos"
    put(f"{root}/Ünïcode class/clip one.MP4", clips["short0"])
    put(f"{root}/Ünïcode class/deeper/ÿ é.Mov", clips["short1"])
    put(f"{root}/plain/X.MP4", clips["long"])
    out = str(tmp_path / "data")
    info = prepare_video.prepare(str(root), out, "train", **RUN)
    assert info["classes"] == ["plain", "Ünïcode class"]
    found = {r["id"]: r["label"] for r in records(out, "train")}
    assert found == {
        "Ünïcode class/clip one.MP4": 1,
        "Ünïcode class/deeper/ÿ é.Mov": 1,
        "plain/X.MP4": 0,
    }
    (tmp_path / "list.csv").write_text("path,label\nÜnïcode class/clip one.MP4,ü ü\n")
    info = prepare_video.prepare(
        str(root), str(tmp_path / "csv"), "train", csv=str(tmp_path / "list.csv"), **RUN
    )
    assert info["classes"] == ["ü ü"] and info["num_records"] == 1
