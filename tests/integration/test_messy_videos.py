"""A folder of messy real-world videos, end to end: prepare_video keeps every file a player
can play and names the others; a video pretraining run and a fine-tuning run with multi-view
evaluation over the records lose nothing to timing, rotation, size or length."""

import numpy as np
import pytest

from configs import demo_video
from maskfeat_jax import defaults, loop
from maskfeat_jax.data import prepare_video, video_records
from tests.support import messy_videos as mv
from tests.support import runs
from tests.support.steps import REFERENCE_KERNELS

CLASSES = ("indoor", "outdoor")


@pytest.fixture(scope="module")
def zoo(tmp_path_factory):
    """Two classes of the zoo prepared as train and validation splits of one dataset."""
    root = tmp_path_factory.mktemp("zoo")
    kinds = {}
    for label in CLASSES:
        kinds.update(
            {f"{label}/{n}": k for n, k in mv.write_zoo(str(root / "videos"), label).items()}
        )
    out = str(root / "records")
    for split in ("train", "validation"):
        prepare_video.prepare(str(root / "videos"), out, split, workers=1, progress=False)
    return out, kinds


def test_prepare_keeps_what_plays_and_names_the_rest(zoo):
    out, kinds = zoo
    info = video_records.read_info(out, "train")
    kept = {k for k, kind in kinds.items() if kind != "unplayable"}
    refused = {k for k, kind in kinds.items() if kind == "unplayable"}
    assert info["num_records"] == len(kept)
    assert {f["path"] for f in info["failures"]} == refused
    for failure in info["failures"]:
        assert "<none>" not in failure["reason"] and failure["reason"]
    source = video_records.VideoRecords(out, "train")
    records = [video_records.decode_record(source[i]) for i in range(len(source))]
    assert {r["id"] for r in records} == kept  # no .DS_Store, no ._ files
    shown = {r["id"].split("/")[1]: (r["height"], r["width"], r["rotation"]) for r in records}
    assert shown["rotated 90.mp4"] == (64, 48, 90)
    assert shown["rotated -90.mov"] == (64, 48, 270)
    assert shown["late_start.mp4"] == (48, 64, 0)
    late = next(r for r in records if r["id"].endswith("late_start.mp4"))
    assert late["start"] == pytest.approx(3.0)


def test_pretraining_over_the_zoo_skips_nothing(zoo, tmp_path):
    """The command as a user runs it, at batch 16 (the demo's model at 64 px): every clip of
    every prepared video decodes, whatever its timing, size or length (4 steps read 64 clips
    of 42 records)."""
    out, _ = zoo
    proc = runs.run_main(
        tmp_path,
        "--config.input.dataset=records",
        f"--config.input.data_dir={out}",
        "--config.input.batch_size=16",
        "--config.model.embed_dim=16",
        "--config.model.image_size=64",
        "--config.mask.grid=4,2,2",
        f"--config.model.kernels={REFERENCE_KERNELS}",
        "--config.total_steps=4",
        "--config.log_every_steps=1",
        "--config.visualize_every_steps=0",
        config="configs/demo_video.py:smoke",
        XLA_FLAGS="",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = runs.metric_lines(tmp_path)
    assert [line["step"] for line in lines] == list(range(1, 5))
    assert all(np.isfinite(line["loss"]) and line["skipped_inputs"] == 0 for line in lines)
    assert "Skipped a bad input" not in proc.stderr


def test_multi_view_evaluation_uses_every_video(zoo, tmp_path):
    out, kinds = zoo
    c = demo_video.get_config("smoke")
    c.model.update(num_classes=len(CLASSES), drop_path_rate=0.1, image_size=64, num_frames=4)
    c.model.update(embed_dim=16, depth=3, stage_starts=(1, 2), kernels=REFERENCE_KERNELS)
    c.input.update(dataset="records", data_dir=out, batch_size=8, scale=(0.08, 1.0))
    c.input.update(examples_per_epoch=16)
    c.mixup = defaults.finetune_config().mixup
    c.optim.update(warmup_steps=1)
    c.total_steps = 2
    c.eval = defaults.finetune_config().eval
    # short_side 0: videos at their stored size, the 24 x 32 one smaller than the crop.
    c.eval.update(split="validation", batch_size=16, num_clips=2, num_crops=3, short_side=0)
    del c.mask
    last = loop.run(c, str(tmp_path))
    videos = sum(kind != "unplayable" for kind in kinds.values())
    assert (last["eval_num_examples"], last["eval_num_views"]) == (videos, 6 * videos)
    assert last["eval_views_per_example_min"] == 6
    assert last["eval_num_dropped"] == 0
