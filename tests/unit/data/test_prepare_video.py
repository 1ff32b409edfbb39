"""prepare_video: video files (class folders or a CSV) -> record shards, resumable."""

import json
import os
import shutil

import grain
import pytest

from maskfeat_jax.data import prepare_video, video_records
from tests.support.video_data import records
from tests.support.video_folders import CLASSES, check_records, expected_from_folders


def shard_stats(out, info):
    return {
        s["file"]: (
            os.stat(os.path.join(out, s["file"])).st_ino,
            os.stat(os.path.join(out, s["file"])).st_mtime_ns,
        )
        for s in info["shards"]
    }


def test_class_folders(tmp_path, class_folders, encoded):
    out = str(tmp_path / "data")
    info = prepare_video.prepare(class_folders, out, "train", workers=1, progress=False)
    assert info == video_records.read_info(out, "train")
    assert info["classes"] == CLASSES
    assert info["num_records"] == len(encoded) and info["failures"] == []
    assert len(info["shards"]) == 1  # 512 MB holds them all
    assert os.path.isfile(prepare_video.plan_path(out, "train"))
    check_records(records(out, "train"), expected_from_folders(encoded))


def test_csv_layout(tmp_path, encoded):
    root = tmp_path / "flat"
    root.mkdir()
    expected, rows = {}, ["path,label"]
    names = {"rocket": "7", "chelsea": "10", "coffee": "cup"}  # numbers are names too
    for i, ((label, _), data) in enumerate(sorted(encoded.items())):
        file = f"v{i}.mp4"
        (root / file).write_bytes(data)
        # One absolute path; the id is still relative to videos_dir.
        rows.append(f"{root / file if i == 0 else file},{names[label]}")
        expected[file] = (names[label], data)
    rows.append("gone.mp4,cup")  # listed but not there: a failure, not an error
    (tmp_path / "list.csv").write_text("\n".join(rows) + "\n\n")
    out = str(tmp_path / "data")
    info = prepare_video.prepare(
        str(root), out, "validation", csv=str(tmp_path / "list.csv"), workers=1, progress=False
    )
    assert info["classes"] == ["10", "7", "cup"]  # sorted as names
    assert info["failures"] == [dict(path="gone.mp4", reason="file not found (CSV line 9)")]
    check_records(
        records(out, "validation"),
        {i: (info["classes"].index(name), data) for i, (name, data) in expected.items()},
    )


def test_small_shards_hold_every_video_once(tmp_path, class_folders, encoded):
    out = str(tmp_path / "data")
    info = prepare_video.prepare(
        class_folders, out, "train", shard_size_mb=0.02, workers=1, progress=False
    )
    assert len(info["shards"]) >= 3
    ids = []
    for shard in info["shards"]:
        source = grain.sources.ArrayRecordDataSource([os.path.join(out, shard["file"])])
        assert len(source) == shard["num_records"] > 0
        ids += [video_records.decode_record(source[i])["id"] for i in range(len(source))]
    assert sorted(ids) == sorted(expected_from_folders(encoded))
    with open(prepare_video.plan_path(out, "train")) as f:
        plan = json.load(f)
    assert [s["file"] for s in plan["shards"]] == [s["file"] for s in info["shards"]]


def test_corrupt_files_are_skipped(tmp_path, class_folders, encoded):
    real = encoded[("rocket", "r0.mp4")]
    (tmp_path / "videos" / "rocket" / "text.mp4").write_text("hello, not a video\n" * 20)
    (tmp_path / "videos" / "rocket" / "empty.mp4").write_bytes(b"")
    (tmp_path / "videos" / "chelsea" / "cut.mp4").write_bytes(real[:300])
    out = str(tmp_path / "data")
    info = prepare_video.prepare(class_folders, out, "train", workers=1, progress=False)
    bad = {
        os.path.join("rocket", "text.mp4"),
        os.path.join("rocket", "empty.mp4"),
        os.path.join("chelsea", "cut.mp4"),
    }
    assert {f["path"] for f in info["failures"]} == bad
    assert all(f["reason"] for f in info["failures"])
    assert video_records.read_info(out, "train")["failures"] == info["failures"]
    check_records(records(out, "train"), expected_from_folders(encoded))


def test_resume_writes_only_missing_shards(tmp_path, class_folders):
    out = str(tmp_path / "data")
    run = dict(shard_size_mb=0.02, workers=1, progress=False)
    first = prepare_video.prepare(class_folders, out, "train", **run)
    files = [s["file"] for s in first["shards"]]
    assert len(files) >= 3
    # An interrupted run: shard 0 never finished, shard 1 was renamed into place but its
    # sidecar was not written yet, and a temporary file was left behind.
    os.remove(os.path.join(out, files[0]))
    os.remove(os.path.join(out, files[0] + ".done.json"))
    os.remove(os.path.join(out, files[1] + ".done.json"))
    os.remove(video_records.info_path(out, "train"))
    leftover = os.path.join(out, files[0] + ".tmp-12345")
    with open(leftover, "wb") as f:
        f.write(b"partial")
    before = shard_stats(out, {"shards": [dict(file=f) for f in files[1:]]})

    second = prepare_video.prepare(class_folders, out, "train", **run)
    assert second == first
    after = shard_stats(out, second)
    assert after[files[1]] != before[files[1]]  # rewritten: no sidecar
    for file in files[2:]:
        assert after[file] == before[file]  # untouched
    assert not os.path.exists(leftover)
    assert all(os.path.isfile(os.path.join(out, f + ".done.json")) for f in files)

    # A third run has nothing to do.
    assert prepare_video.prepare(class_folders, out, "train", **run) == first
    assert shard_stats(out, second) == after


def test_changed_inputs_with_a_plan_fail(tmp_path, class_folders, encoded):
    out = str(tmp_path / "data")
    prepare_video.prepare(class_folders, out, "train", workers=1, progress=False)
    (tmp_path / "videos" / "rocket" / "r9.mp4").write_bytes(encoded[("rocket", "r0.mp4")])
    with pytest.raises(ValueError, match=r"1 videos new: rocket/r9\.mp4.*delete .*train\.plan"):
        prepare_video.prepare(class_folders, out, "train", workers=1, progress=False)
    with pytest.raises(ValueError, match="--shard_size_mb was 512, now 1"):
        prepare_video.prepare(class_folders, out, "train", shard_size_mb=1, progress=False)
    # Another split in the same directory has its own plan.
    prepare_video.prepare(class_folders, out, "other", workers=1, progress=False)
    # Without the old plan the split is made anew, and the old plan's shards go.
    os.remove(prepare_video.plan_path(out, "train"))
    info = prepare_video.prepare(
        class_folders, out, "train", shard_size_mb=0.02, workers=1, progress=False
    )
    assert info["num_records"] == len(encoded) + 1
    planned = {s["file"] for s in info["shards"]}
    assert {f for f in os.listdir(out) if f.startswith("train.array_record-")} == planned | {
        f + ".done.json" for f in planned
    }
    assert len(video_records.VideoRecords(out, "other")) == len(encoded) + 1


def test_two_workers_write_the_same(tmp_path, class_folders):
    run = dict(shard_size_mb=0.02, progress=False)
    one = prepare_video.prepare(class_folders, str(tmp_path / "a"), "train", workers=1, **run)
    two = prepare_video.prepare(class_folders, str(tmp_path / "b"), "train", workers=2, **run)
    assert one == two
    assert records(str(tmp_path / "a"), "train") == records(str(tmp_path / "b"), "train")


def test_input_errors(tmp_path, class_folders):
    out = str(tmp_path / "data")

    def prepare(**kwargs):
        kwargs.setdefault("videos_dir", class_folders)
        prepare_video.prepare(out=out, split="train", workers=1, progress=False, **kwargs)

    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\nrocket/r0.mp4,rocket\nrocket/r1.mp4,rocket,extra\n")
    with pytest.raises(ValueError, match=r"bad\.csv line 3: expected 2 fields `path,label`, got 3"):
        prepare(csv=str(bad))
    bad.write_text("rocket/r0.mp4,\n")
    with pytest.raises(ValueError, match=r"line 1: the label is empty"):
        prepare(csv=str(bad))
    bad.write_text("rocket/r0.mp4,a\nrocket/r0.mp4,b\n")
    with pytest.raises(
        ValueError, match=r"line 2: rocket/r0\.mp4 is listed again \(first on line 1"
    ):
        prepare(csv=str(bad))

    classes = tmp_path / "classes.txt"
    classes.write_text("chelsea\nrocket\n")
    with pytest.raises(
        ValueError, match=r"not in the --classes list: 'coffee' \(folder .*coffee\)"
    ):
        prepare(classes=str(classes))
    # A fixed list keeps its order (and may name classes without videos).
    classes.write_text("rocket\nzebra\ncoffee\nchelsea\n")
    prepare(classes=str(classes))
    assert video_records.read_info(out, "train")["classes"] == [
        "rocket",
        "zebra",
        "coffee",
        "chelsea",
    ]

    with pytest.raises(FileNotFoundError, match="is not a directory"):
        prepare(videos_dir=str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no video files .* under"):
        prepare(videos_dir=str(tmp_path / "empty"))
    shutil.copy(os.path.join(class_folders, "rocket", "r0.mp4"), class_folders)
    with pytest.raises(ValueError, match=r"have no class folder: r0\.mp4.*--unlabelled"):
        prepare()


def test_unlabelled(tmp_path, class_folders, encoded):
    shutil.copy(os.path.join(class_folders, "rocket", "r0.mp4"), class_folders)
    out = str(tmp_path / "data")
    info = prepare_video.prepare(
        class_folders, out, "train", unlabelled=True, workers=1, progress=False
    )
    assert info["classes"] == [] and info["num_records"] == len(encoded) + 1
    found = records(out, "train")
    assert {r["label"] for r in found} == {-1}
    assert "r0.mp4" in {r["id"] for r in found}
