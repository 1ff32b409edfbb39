"""Evaluation says what it evaluated: examples and views used out of how many, the dropped
ones with their reasons, and accuracy over the examples actually evaluated."""

import json
import logging

import jax
import numpy as np
import pytest

from configs import demo_video
from maskfeat_jax import defaults, evaluate, loop
from maskfeat_jax import trainer as trainer_lib
from maskfeat_jax.data import embedded_video
from tests.support.video_data import EMBEDDED, GOOD, video_dataset


def test_accuracy_is_over_evaluated_examples_and_dropped_ones_are_named():
    acc = evaluate.ViewAccumulator(num_classes=3)
    eye = np.eye(3)
    # Examples 0-2 right, 3 wrong; 4 and 5 have views but none valid; -1 is padding.
    acc.add(
        probs=np.stack([eye[0], eye[1], eye[2], eye[0], eye[1], eye[1], eye[2], eye[0]]),
        ids=np.array([0, 1, 2, 3, 4, 5, 5, -1]),
        labels=np.array([0, 1, 2, 1, -1, -1, -1, -1]),
        valid=np.array([True, True, True, True, False, False, False, False]),
    )
    result = acc.result()
    assert result["top1"] == 0.75  # 3 of the 4 evaluated, not of the 6 there were
    assert (result["num_examples"], result["examples_total"]) == (4, 6)
    assert (result["num_views"], result["views_total"], result["invalid_views"]) == (4, 7, 4)
    assert acc.dropped() == [4, 5]
    result["dropped"] = [
        {"index": 4, "kind": "unreadable", "reason": "x.mp4: truncated: frames 9..20 missing"},
        {"index": 5, "kind": "excluded", "reason": "y.mp4: 3 frames, fewer than 4"},
    ]
    assert evaluate.coverage_line(result, "videos") == (
        "Evaluated 4 of 6 videos (4 of 7 views); 2 dropped: x.mp4 (truncated: frames 9..20 "
        "missing), y.mp4 (3 frames, fewer than 4)"
    )
    result["dropped"] = []
    assert evaluate.coverage_line(result, "images").endswith("(4 of 7 views); none dropped")


def tiny_video_classifier(data_dir):
    c = demo_video.get_config("vit")
    c.model.update(num_classes=GOOD, image_size=32, num_frames=4, depth=1)
    c.input.update(dataset="records", data_dir=data_dir, batch_size=8, min_frames=4)
    c.mixup = defaults.finetune_config().mixup
    c.eval = defaults.finetune_config().eval
    c.eval.update(split="validation", batch_size=16, num_clips=2, num_crops=1, short_side=48)
    del c.mask
    return c


@pytest.mark.slow
def test_video_evaluation_names_the_dropped_videos_and_keeps_the_accuracy_of_the_rest(
    tmp_path, caplog
):
    messy = video_dataset(tmp_path / "messy")
    clean = embedded_video.ensure(str(tmp_path / "clean" / "videos"), EMBEDDED, workers=1)
    config = tiny_video_classifier(messy)
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(0))
    with caplog.at_level(logging.INFO):
        result = loop.evaluator_for(trainer, str(tmp_path / "run"))(state, step=3)
    # 21 videos x 2 clips read; cut.mp4 and text.mp4 are unreadable, short.mp4 (3 frames)
    # is shorter than config.input.min_frames.
    assert (result["num_examples"], result["examples_total"]) == (GOOD, GOOD + 3)
    assert (result["num_views"], result["views_total"]) == (2 * GOOD, 2 * (GOOD + 3))
    assert result["num_dropped"] == 3
    dropped = {d["index"]: d for d in result["dropped"]}
    assert sorted(dropped) == [GOOD, GOOD + 1, GOOD + 2]
    assert dropped[GOOD]["kind"] == "unreadable"
    assert dropped[GOOD]["reason"].startswith("cut.mp4: decoding failed")
    assert dropped[GOOD + 1]["reason"].startswith("text.mp4: decoding failed")
    assert dropped[GOOD + 2] == {
        "index": GOOD + 2,
        "kind": "excluded",
        "reason": "short.mp4: 3 frames, fewer than config.input.min_frames=4",
    }
    summary = (
        f"Evaluated {GOOD} of {GOOD + 3} videos ({2 * GOOD} of {2 * (GOOD + 3)} views); 3 "
        "dropped: cut.mp4 (decoding failed"
    )
    assert result["summary"].startswith(summary)
    assert result["summary"].endswith("short.mp4 (3 frames, fewer than config.input.min_frames=4)")
    written = json.loads((tmp_path / "run" / "results.json").read_text())
    assert written["dropped"] == result["dropped"] and written["summary"] == result["summary"]
    logged = [r.getMessage() for r in caplog.records]
    assert any(m.startswith("eval validation at step 3: top1 ") and summary in m for m in logged)
    assert sum(m.startswith("eval validation: dropped record") for m in logged) == 3
    # The same model on the same 21 videos without the three others: the same accuracy, so
    # the dropped videos are not in its denominator.
    config.input.data_dir = clean
    alone = loop.evaluator_for(trainer, None)(state, step=3)
    assert alone["summary"] == (
        f"Evaluated {GOOD} of {GOOD} videos ({2 * GOOD} of {2 * GOOD} views); none dropped"
    )
    assert (alone["top1"], alone["top5"]) == (result["top1"], result["top5"])


@pytest.mark.parametrize("kind", ["unreadable", "excluded"])
def test_reasons_come_from_the_views_fields(kind):
    batch = {
        "video_index": np.array([4, 4, 5, -1]),
        "valid": np.array([False, False, True, False]),
        "skipped": np.array([kind == "unreadable"] * 2 + [0, 0], np.int32),
        "skipped_ids": np.array(["record 4: a.mp4: why", "record 4: a.mp4: why", "", ""]),
    }
    if kind == "excluded":
        batch["excluded"] = np.array([1, 1, 0, 0], np.int32)
    out = {}
    evaluate._collect_reasons(batch, "video_index", out)
    assert out == {4: {"kind": kind, "reason": "a.mp4: why"}}
