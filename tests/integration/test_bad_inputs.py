"""A run with too many unreadable records stops with one line, exit code 2 and a checkpoint of
its last step, also when a reader in a worker process gives up (the real command in a child
process, on real record shards)."""

import json
import os

from maskfeat_jax.data import batching
from tests.support.runs import metric_lines, run_main
from tests.support.video_data import GOOD

# The tiny video ViT of configs/demo_video.py:vit on these records, on one CPU device.
TINY = (
    "--config.input.dataset=records",
    "--config.model.image_size=32",
    "--config.model.num_frames=4",
    "--config.mask.grid=2,2,2",
    "--config.model.depth=1",
    "--config.optim.warmup_steps=2",
    "--config.total_steps=40",
    "--config.visualize_every_steps=0",
    "--config.tensorboard=False",
)
VIDEO_VIT = "configs/demo_video.py:vit"


def _error_line(proc) -> str:
    """The one error line (the log lines around it start with their level and time)."""
    lines = [line for line in proc.stderr.splitlines() if line.startswith("Data error: ")]
    assert len(lines) == 1, proc.stderr[-3000:]
    return lines[0]


# ---------------------------------------------------------------- in the pipeline


# ---------------------------------------------------------------- the training command


def test_too_many_unreadable_records_stop_the_run_with_one_line_and_a_checkpoint(
    tmp_path, bad_video_dir
):
    workdir = tmp_path / "run"
    common = (
        *TINY,
        f"--config.input.data_dir={bad_video_dir}",
        "--config.input.batch_size=16",
        "--config.input.min_frames=4",  # short.mp4 is left out, not unreadable
    )
    # Metrics are read every 5 steps only, as in real runs: the steps dispatched since the
    # last read may still be running when the stop comes, and the process waits for them.
    stop = ("--config.input.max_bad_fraction=0.02", "--config.log_every_steps=5")
    proc = run_main(workdir, *common, *stop, config=VIDEO_VIT, XLA_FLAGS="")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr and "Fatal Python error" not in proc.stderr
    line = _error_line(proc)
    assert line.startswith("Data error: ") and "records read were unreadable (" in line
    assert "cut.mp4 (decoding failed" in line and "text.mp4 (decoding failed" in line
    assert "short.mp4" not in line
    step = int(line.split("Stopped after step ")[1].split(":")[0])
    assert 12 <= step <= 15  # the monitor judges from 256 records (16 steps) on
    assert line.endswith(
        f"checkpoint {workdir}/checkpoints/{step} is saved, and the same command continues from it."
    )
    assert os.listdir(workdir / "checkpoints") == [str(step)]
    saved = json.loads(
        (workdir / "checkpoints" / str(step) / "data" / "process_0-of-1.json").read_text()
    )
    assert saved == {"next_index": step}  # the rejected batch is read again on resuming
    left_out = f"Left out by the config (not counted as bad): record {GOOD + 2}: short.mp4"
    assert proc.stderr.count(left_out) == 1
    metrics = metric_lines(workdir)
    assert [m["step"] for m in metrics] == [1, 5, 10]
    assert metrics[-1]["skipped_inputs"] > 0 and metrics[-1]["excluded_inputs"] > 0

    # With the data judged acceptable, the same run continues from that checkpoint.
    proc = run_main(
        workdir,
        *common,
        "--config.input.max_bad_fraction=0.5",
        f"--config.total_steps={step + 2}",
        config=VIDEO_VIT,
        XLA_FLAGS="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"continuing at step {step + 1}" in proc.stderr
    assert [m["step"] for m in metric_lines(workdir)][-2:] == [step + 1, step + 2]
    assert sorted(os.listdir(workdir / "checkpoints")) == sorted([str(step), str(step + 2)])


def _first_step_with(records: set[int], num_records: int, seed: int, batch: int) -> int:
    order = batching.index_stream(num_records, seed=seed)
    return next(i for i in range(len(order)) if int(order[i]) in records) // batch + 1


def test_a_reader_that_gives_up_in_a_worker_process_stops_the_same_way(tmp_path, bad_video_dir):
    """``max_retries`` in a row inside a grain worker process: one line and a checkpoint of
    the steps before the batch it broke."""
    num_records, unreadable = GOOD + 3, {GOOD, GOOD + 1}
    # A seed whose stream meets an unreadable record after a few good batches (the first
    # batch is read before compiling, where a failure is reported without a checkpoint).
    seed = next(s for s in range(100) if _first_step_with(unreadable, num_records, s, 4) >= 3)
    step = _first_step_with(unreadable, num_records, seed, 4)
    workdir = tmp_path / "run"
    proc = run_main(
        workdir,
        *TINY,
        f"--config.input.data_dir={bad_video_dir}",
        "--config.input.batch_size=4",
        "--config.input.max_retries=0",
        "--config.input.worker_count=2",
        f"--config.seed={seed}",
        config=VIDEO_VIT,
        XLA_FLAGS="",
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    line = _error_line(proc)
    assert line.startswith("Data error: 1 record in a row could not be read or used")
    assert f"Stopped after step {step - 1}: checkpoint {workdir}/checkpoints/{step - 1}" in line
    assert os.listdir(workdir / "checkpoints") == [str(step - 1)]
    assert (workdir / "checkpoints" / str(step - 1) / "data").is_dir()
