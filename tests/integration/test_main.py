"""The training command runs the demo end to end (metrics, TensorBoard, pictures,
checkpoints) and refuses unknown config keys. The video demo runs as the README writes it in
test_documented_commands.py."""

import json
import subprocess
import sys

import numpy as np

from tests.support.runs import ROOT, child_env, run_main


def test_demo_smoke_run_end_to_end(tmp_path):
    workdir = tmp_path / "demo"
    proc = run_main(workdir, "--config.input.batch_size=8", XLA_FLAGS="")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ETA" in proc.stderr
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 5, 10, 15, 20]
    assert lines[-1]["loss"] < lines[0]["loss"]
    assert (workdir / "checkpoints" / "20").is_dir()
    # The same scalars as TensorBoard events, read back with TensorBoard's own reader.
    from tensorboard.backend.event_processing import event_accumulator

    board = event_accumulator.EventAccumulator(str(workdir / "tensorboard"))
    board.Reload()
    for name in (
        "loss",
        "lr",
        "grad_norm",
        "steps_per_sec",
        "data_wait_fraction",
        "skipped_inputs",
    ):
        assert name in board.Tags()["scalars"], board.Tags()
    events = board.Scalars("loss")
    assert [e.step for e in events] == [1, 5, 10, 15, 20]
    np.testing.assert_allclose([e.value for e in events], [x["loss"] for x in lines], rtol=1e-6)
    # The paper's figure every 10 steps, also in TensorBoard; and from the checkpoint by CLI.
    assert sorted(p.name for p in (workdir / "pictures").iterdir()) == [
        "step_0000010.png",
        "step_0000020.png",
    ]
    assert [e.step for e in board.Images("pictures")] == [10, 20]
    out = tmp_path / "picture.png"
    cli = subprocess.run(
        [sys.executable, "-m", "maskfeat_jax.visualize", "--workdir", str(workdir),
         "--num_images", "2", "--out", str(out)],
        cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert cli.returncode == 0, cli.stderr[-2000:]
    from PIL import Image

    with Image.open(out) as picture:
        # 2 rows of [input | masked | HOG | predicted], 112 px = 14 cells of 12 px, 4 px gaps.
        assert picture.size == (4 * 168 + 3 * 4, 2 * 168 + 4)


def test_unknown_config_key_is_refused(tmp_path):
    proc = run_main(tmp_path, "--config.input.batchsize=8")
    assert proc.returncode != 0
    assert "batchsize" in proc.stderr

