"""prepare_video's command line: a split written, and a missing folder refused in one line."""

from tests.support.video_data import records, run_prepare_video
from tests.support.video_folders import check_records, expected_from_folders


def test_cli(tmp_path, class_folders, encoded):
    out = str(tmp_path / "data")
    done = run_prepare_video(
        f"--videos_dir={class_folders}",
        f"--out={out}",
        "--split=train",
        "--shard_size_mb=0.02",
        "--workers=2",
    )
    assert done.returncode == 0, done.stderr
    assert f"Wrote {len(encoded)} records" in done.stdout
    check_records(records(out, "train"), expected_from_folders(encoded))

    missing = str(tmp_path / "nowhere")
    failed = run_prepare_video(f"--videos_dir={missing}", f"--out={out}", "--split=train")
    assert failed.returncode != 0
    assert f"--videos_dir {missing} is not a directory" in failed.stderr
