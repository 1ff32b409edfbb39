"""prepare_video over folders as they come: links (broken, looping, duplicate), FIFOs and
other non-files, nothing usable, class lists shared by splits, unwritable and read-only
outputs, and worker processes whose parent is killed."""

import contextlib
import dataclasses
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time

import pytest

from maskfeat_jax.data import prepare_video, video_records
from maskfeat_jax.data.embedded_video import encode_h264, render_video
from tests.test_prepare_video import REPO, SETTINGS, records, run_cli

RUN = dict(workers=1, progress=False)


@pytest.fixture(scope="module")
def clips():
    """Two 40-frame videos (1.3 s, shorter than the default clip) and an 80-frame one."""
    long = dataclasses.replace(SETTINGS, num_frames=80)
    return dict(
        short0=encode_h264(render_video("rocket", "train", 0, SETTINGS), 30, 16),
        short1=encode_h264(render_video("coffee", "train", 0, SETTINGS), 30, 16),
        long=encode_h264(render_video("chelsea", "train", 0, long), 30, 16),
    )


def put(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(data)


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


def test_nothing_usable_is_an_error_with_the_summary(tmp_path):
    root = tmp_path / "videos"
    put(f"{root}/cls/text.mp4", b"not a video\n" * 20)
    put(f"{root}/cls/empty.mp4", b"")
    done = run_cli(f"--videos_dir={root}", f"--out={tmp_path / 'data'}", "--split=train")
    assert done.returncode == 1, done.stdout + done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("Error")]
    tsv = str(tmp_path / "data" / "train.skipped.tsv")
    assert errors == [
        "Error: none of the 2 video files of split 'train' was usable; the summary above says "
        f"why, and {tsv} lists each file"
    ]
    assert "Traceback" not in done.stderr
    assert "Skipped 2 of 2 files, by reason" in done.stdout
    assert "cls/empty.mp4" in done.stdout and "cls/text.mp4" in done.stdout
    assert not os.path.exists(video_records.info_path(str(tmp_path / "data"), "train"))

    # Nothing but broken links: nothing to plan, the same error.
    links = tmp_path / "links"
    (links / "cls").mkdir(parents=True)
    os.symlink("/nowhere/a.mp4", links / "cls" / "a.mp4")
    with pytest.raises(prepare_video.NothingUsable, match="none of the 1 video files") as e:
        prepare_video.prepare(str(links), str(tmp_path / "none"), "train", **RUN)
    assert "broken symbolic link: cls/a.mp4" in e.value.summary
    with open(prepare_video.skipped_path(str(tmp_path / "none"), "train")) as f:
        assert f.read() == "path\treason\ncls/a.mp4\tbroken symbolic link -> /nowhere/a.mp4\n"


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


def test_splits_share_the_class_list(tmp_path, clips, capsys):
    train, out = tmp_path / "train", str(tmp_path / "data")
    for name in ("ant", "bee", "cat", "dog"):
        put(f"{train}/{name}/v.mp4", clips["short0"])
    prepare_video.prepare(str(train), out, "train", **RUN)
    shared = os.path.join(out, "classes.txt")

    # A validation folder laid out as one class: its labels are not the train ones.
    wrong = tmp_path / "wrong"
    put(f"{wrong}/cls/v.mp4", clips["short1"])
    with pytest.raises(
        ValueError,
        match=r"split 'validation' has the classes \[cls\] but the splits in .* use \[ant, bee, "
        rf"cat, dog\] .*Pass --classes {re.escape(shared)} \(every label must be in it; cls not "
        r"in it\)",
    ):
        prepare_video.prepare(str(wrong), out, "validation", **RUN)
    # An explicit list that differs is refused too.
    (tmp_path / "other.txt").write_text("cls\nant\n")
    with pytest.raises(ValueError, match=r"has the classes \[cls, ant\]"):
        prepare_video.prepare(
            str(wrong), out, "validation", classes=str(tmp_path / "other.txt"), **RUN
        )
    assert not os.path.exists(prepare_video.plan_path(out, "validation"))

    # Labels all in classes.txt: its indices, and the log says so.
    val = tmp_path / "val"
    put(f"{val}/cat/v.mp4", clips["short1"])
    capsys.readouterr()
    info = prepare_video.prepare(str(val), out, "validation", **RUN)
    assert f"Using the class list of {shared} (4 classes)" in capsys.readouterr().err
    assert info["classes"] == ["ant", "bee", "cat", "dog"]
    assert [r["label"] for r in records(out, "validation")] == [2]

    # --classes_from names the dataset whose list to use.
    other = str(tmp_path / "other")
    info = prepare_video.prepare(str(val), other, "validation", classes_from=out, **RUN)
    assert info["classes"] == ["ant", "bee", "cat", "dog"]
    with pytest.raises(FileNotFoundError, match=r"--classes_from .*wrong has no classes\.txt"):
        prepare_video.prepare(str(val), other, "x", classes_from=str(wrong), **RUN)
    with pytest.raises(ValueError, match="--classes or --classes_from, not both"):
        prepare_video.prepare(str(val), other, "x", classes=shared, classes_from=out, **RUN)
    done = run_cli(
        f"--videos_dir={val}",
        f"--out={tmp_path / 'cli'}",
        "--split=validation",
        f"--classes_from={out}",
        "--noprogress",
    )
    assert done.returncode == 0, done.stderr
    assert "(4 classes)" in done.stdout


@contextlib.contextmanager
def read_only(*paths):
    """``paths`` made unchangeable for this process: as root permissions stop nothing, so
    the immutable attribute is used where the file system has it."""
    if os.geteuid() != 0:
        modes = {p: os.stat(p).st_mode for p in paths}
        for p in paths:
            os.chmod(p, modes[p] & ~0o222)
        try:
            yield
        finally:
            for p in paths:
                os.chmod(p, modes[p])
        return
    chattr = shutil.which("chattr")
    if not chattr or subprocess.run([chattr, "+i", *paths], capture_output=True).returncode:
        pytest.skip("root, and chattr +i does not work here: no way to make a folder read-only")
    try:
        yield
    finally:
        subprocess.run([chattr, "-i", *paths], check=True)


def test_path_errors_are_one_line(tmp_path, clips):
    root = tmp_path / "videos"
    put(f"{root}/cls/v.mp4", clips["short0"])
    (tmp_path / "file").write_text("not a folder")
    done = run_cli(f"--videos_dir={root}", f"--out={tmp_path / 'file'}", "--split=train")
    assert done.returncode == 1
    expected = f"Error: --out {tmp_path / 'file'} is a file; give a folder (new or existing)"
    assert done.stderr.strip() == expected
    nowhere = tmp_path / "nowhere"
    with pytest.raises(
        FileNotFoundError, match=f"^--csv file {re.escape(str(nowhere))} does not exist$"
    ):
        prepare_video.prepare(str(root), str(tmp_path / "x"), "train", csv=str(nowhere), **RUN)
    with pytest.raises(
        FileNotFoundError, match=f"^--videos_dir {re.escape(str(nowhere))} is not a directory"
    ):
        prepare_video.prepare(str(nowhere), str(tmp_path / "x"), "train", **RUN)
    assert not os.path.exists(tmp_path / "x")

    out = tmp_path / "locked"
    out.mkdir()
    with read_only(str(out)):
        done = run_cli(f"--videos_dir={root}", f"--out={out}", "--split=train")
        with pytest.raises(PermissionError, match=f"cannot write to --out {re.escape(str(out))} "):
            prepare_video.prepare(str(root), str(out), "train", **RUN)
    assert done.returncode == 1
    assert re.fullmatch(
        rf"Error: cannot write to --out {re.escape(str(out))} \([^()\n]+\); choose a folder you "
        r"can write to\n",
        done.stderr,
    ), done.stderr
    assert os.listdir(out) == []


def test_a_finished_split_is_not_rewritten(tmp_path, clips):
    root = str(tmp_path / "videos")
    put(f"{root}/cls/a.mp4", clips["short0"])
    put(f"{root}/cls/b.mp4", clips["long"])
    os.symlink("/nowhere", f"{root}/cls/gone.mp4")
    out = str(tmp_path / "data")
    first = prepare_video.prepare(root, out, "train", shard_size_mb=0.005, **RUN)

    def state():
        return {n: os.stat(os.path.join(out, n)).st_mtime_ns for n in sorted(os.listdir(out))}

    before = state()
    assert {"classes.txt", "train.json", "train.plan.json", "train.skipped.tsv"} <= set(before)
    time.sleep(0.01)
    assert prepare_video.prepare(root, out, "train", shard_size_mb=0.005, **RUN) == first
    assert state() == before
    files = [os.path.join(out, n) for n in before]
    with read_only(out, *files):
        done = run_cli(
            f"--videos_dir={root}",
            f"--out={out}",
            "--split=train",
            "--shard_size_mb=0.005",
            "--noprogress",
        )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"Wrote 2 records in 2 shards to {out}/train.json")
    assert "broken symbolic link: cls/gone.mp4" in done.stdout
    assert state() == before


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


def process_group(pgid):
    """Live (not zombie) processes of a process group."""
    try:
        import psutil
    except ImportError:
        psutil = None
    found = []
    if psutil is not None:
        for p in psutil.process_iter(["status"]):
            with contextlib.suppress(psutil.Error, OSError):
                if p.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(p.pid) == pgid:
                    found.append(p.pid)
        return found
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError, ValueError):
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if fields[0] != "Z" and int(fields[2]) == pgid:
                found.append(int(entry))
    return found


@pytest.mark.skipif(os.name != "posix", reason="process groups and SIGKILL are POSIX")
def test_workers_exit_when_the_preparation_is_killed(tmp_path, clips):
    root = tmp_path / "videos"
    # A shard each: still busy when the first shards are done, even on a loaded machine.
    for i in range(300):
        put(f"{root}/cls/v{i:03d}.mp4", clips["short0"])
    out = tmp_path / "data"
    main = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "maskfeat_jax.data.prepare_video",
            f"--videos_dir={root}",
            f"--out={out}",
            "--split=train",
            "--shard_size_mb=0.001",
            "--workers=2",
            "--noprogress",
        ],
        cwd=REPO,
        env=dict(os.environ, PYTHONPATH=REPO),
        start_new_session=True,  # its own process group: what it started is findable
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 60
        while not glob.glob(f"{out}/*.done.json") and time.monotonic() < deadline:
            assert main.poll() is None, "the preparation ended before it could be killed"
            time.sleep(0.01)
        started = process_group(main.pid)
        assert len(started) >= 4, started  # itself, 2 workers, the resource tracker
        os.kill(main.pid, signal.SIGKILL)
        main.wait()
        assert len(glob.glob(f"{out}/*.done.json")) < 300, "it finished before it was killed"
        deadline = time.monotonic() + 10
        while process_group(main.pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert process_group(main.pid) == []
    finally:
        for pid in process_group(main.pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
