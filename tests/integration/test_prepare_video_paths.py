"""prepare_video's command over folders as they come: nothing usable, class lists shared by
splits, unwritable and read-only outputs, a finished split, and worker processes whose
parent is killed."""

import contextlib
import glob
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from maskfeat_jax.data import prepare_video, video_records
from tests.support.runs import ROOT
from tests.support.video_data import records, run_prepare_video
from tests.support.video_paths import RUN, put


def test_nothing_usable_is_an_error_with_the_summary(tmp_path):
    root = tmp_path / "videos"
    put(f"{root}/cls/text.mp4", b"not a video\n" * 20)
    put(f"{root}/cls/empty.mp4", b"")
    done = run_prepare_video(f"--videos_dir={root}", f"--out={tmp_path / 'data'}", "--split=train")
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
    done = run_prepare_video(
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
    done = run_prepare_video(f"--videos_dir={root}", f"--out={tmp_path / 'file'}", "--split=train")
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
        done = run_prepare_video(f"--videos_dir={root}", f"--out={out}", "--split=train")
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
        done = run_prepare_video(
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
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=ROOT),
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
