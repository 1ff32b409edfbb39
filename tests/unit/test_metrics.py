"""Terminal progress: a bar with rate and ETA when interactive, plain lines otherwise."""

import io

from absl import logging

from maskfeat_jax import metrics


def test_interactive_progress_is_a_bar_with_rate_and_eta():
    out = io.StringIO()
    progress = metrics.Progress(total=100, start=10, interactive=True, stream=out)
    for step in range(11, 41):
        progress.advance(step)
    progress.logged(40, {"loss": 0.25, "lr": 1e-3, "grad_norm": 0.5})
    progress.advance(41)
    progress.close()
    text = out.getvalue()
    assert "41/100" in text and "step/s" in text and "<" in text  # tqdm: elapsed<remaining
    assert "loss=0.25" in text


def test_plain_lines_elsewhere(monkeypatch):
    lines = []
    monkeypatch.setattr(logging, "info", lambda fmt, *args: lines.append(fmt % args))
    progress = metrics.Progress(total=1000, start=0, interactive=False, stream=io.StringIO())
    progress.advance(500)
    progress.logged(
        500,
        {
            "loss": 0.5,
            "lr": 2e-4,
            "grad_norm": 1.0,
            "steps_per_sec": 5.0,
            "data_wait_fraction": 0.1,
        },
    )
    assert lines == [
        "step 500/1000: loss 0.5, lr 0.0002, grad_norm 1, 5.00 steps/s, data wait 10%, ETA 1m40s"
    ]
    assert metrics.format_duration(3 * 3600 + 65) == "3h01m05s"
