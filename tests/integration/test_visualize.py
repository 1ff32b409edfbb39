"""A missing picture split turns the training pictures off, not the run."""


def test_a_missing_picture_split_turns_pictures_off_not_the_run(tmp_path):
    from tests.support.runs import run_main

    result = run_main(
        tmp_path / "run", "--config.visualize_split=nonexistent", "--config.total_steps=4"
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert "Training pictures are off" in result.stderr
    assert not (tmp_path / "run" / "pictures").exists()
