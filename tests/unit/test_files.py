"""Run outputs through epath: local folders and bucket URLs take the same code."""

import json

from maskfeat_jax import files, metrics


def test_urls_stay_urls_and_local_paths_become_absolute(tmp_path, monkeypatch):
    assert files.absolute("gs://bucket/runs/x") == "gs://bucket/runs/x"
    assert files.is_remote("gs://bucket/x") and not files.is_remote("runs/x")
    monkeypatch.chdir(tmp_path)
    assert files.absolute("runs/x") == str(tmp_path / "runs" / "x")
    assert (
        files.join("gs://bucket/runs", "x", "metrics.jsonl") == "gs://bucket/runs/x/metrics.jsonl"
    )


def test_writes_replace_whole_files_and_appends_work_without_append(tmp_path, monkeypatch):
    path = str(tmp_path / "deep" / "dir" / "out.json")
    files.write_text(path, "first")
    files.write_text(path, "second")
    assert files.read_text(path) == "second"
    assert sorted(p.name for p in (tmp_path / "deep" / "dir").iterdir()) == ["out.json"]
    # Object stores cannot append: the remote branch rewrites, with the same result.
    log = str(tmp_path / "a.txt")
    files.append_text(log, "1\n")
    monkeypatch.setattr(files, "is_remote", lambda path: True)
    files.append_text(log, "2\n")
    files.append_text(log, "3\n")
    assert files.read_text(log) == "1\n2\n3\n"


def test_metrics_log_appends_and_trims_after_resume(tmp_path):
    log = metrics.MetricsLog(str(tmp_path / "run"))
    for step in (1, 2, 3):
        log.write(step, {"loss": 1.0 / step})
    log.keep_until(2)
    log.write(3, {"loss": 0.25})
    lines = [json.loads(x) for x in files.read_text(log.path).splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3] and lines[-1]["loss"] == 0.25
