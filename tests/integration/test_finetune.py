"""Fine-tuning runs end to end: the digits command trains, evaluates and writes its results; a
small video MViT fine-tunes and is tested with multiple views."""

import numpy as np

from maskfeat_jax import defaults, loop
from tests.support.steps import REFERENCE_KERNELS

# ---------------------------------------------------------------------------------------------
# Layer-wise LR decay.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# Drop path.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The classification step and the EMA.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# The recipes.
# ---------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------
# End to end.
# ---------------------------------------------------------------------------------------------


def test_digits_finetune_command_trains_evaluates_and_writes_results(tmp_path):
    import json

    from tests.support.runs import run_main

    workdir = tmp_path / "ft"
    proc = run_main(
        workdir,
        "--config.model.depth=2",
        "--config.total_epochs=4",
        "--config.optim.warmup_epochs=1",
        "--config.eval.every_steps=6",
        config="configs/digits.py:finetune",
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((workdir / "results.json").read_text())
    assert results["step"] == 12 and results["num_examples"] == 539 and results["split"] == "test"
    assert (workdir / "eval" / "test_step6.json").exists()
    lines = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    evals = [line for line in lines if "eval_top1" in line]
    assert [line["step"] for line in evals] == [6, 12]
    assert 0.0 <= evals[-1]["eval_top1"] <= 1.0


def test_video_finetune_with_multi_view_testing(tmp_path):
    """A small MViT fine-tuned on the embedded videos, then tested with 2 clips x 3 crops."""
    from configs import demo_video

    c = demo_video.get_config("smoke")
    c.model.update(num_classes=21, drop_path_rate=0.1, image_size=64, num_frames=4)
    c.model.update(embed_dim=16, depth=3, stage_starts=(1, 2), kernels=REFERENCE_KERNELS)
    c.input.update(
        batch_size=8,
        scale=(0.08, 1.0),
        rand_augment="rand-m7-mstd0.5-inc1",
        erase_prob=0.25,
        repeats=2,
        examples_per_epoch=21,
    )
    c.mixup = defaults.finetune_config().mixup
    c.optim.update(layer_decay=0.75, ema_decay=0.99, warmup_steps=1)
    c.total_steps = 2
    c.eval = defaults.finetune_config().eval
    c.eval.update(split="validation", batch_size=16, num_clips=2, num_crops=3, short_side=64)
    del c.mask
    last = loop.run(c, str(tmp_path))
    assert np.isfinite(last["loss"])
    assert (last["eval_num_examples"], last["eval_num_views"]) == (21, 126)
    assert last["eval_views_per_example_min"] == last["eval_views_per_example_max"] == 6
    assert last["eval_invalid_views"] == 128 - 126
    assert 0 <= last["eval_ema_top1"] <= 1  # the EMA model is evaluated too
