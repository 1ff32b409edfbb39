"""A run checks what needs no model before it compiles, and stops with one line naming the
fix (the training command in a child process)."""

import json
import os
import time

import pytest
from flax import nnx

from configs import demo
from maskfeat_jax import checkpoint, errors, preflight
from tests.support.runs import run_main

# What a run logs once the step is compiled: a refusal must come before it.
COMPILED = "Step memory per device"


def refused(result, seconds: float | None = None):
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stderr and COMPILED not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def timed_run(*args, **kwargs):
    start = time.perf_counter()
    result = run_main(*args, **kwargs)
    return result, time.perf_counter() - start


@pytest.mark.parametrize(
    "config", ["configs/k400_mvitv2_s_pretrain.py", "configs/k400_mvitv2_l_pretrain.py"]
)
def test_empty_video_data_dir_fails_in_seconds_before_compiling(tmp_path, config):
    empty = tmp_path / "data"
    empty.mkdir()
    result, seconds = timed_run(tmp_path / "run", f"--config.input.data_dir={empty}", config=config)
    line = refused(result)
    assert line.startswith(f"Data error: no split 'train' in {empty}")
    assert "python -m maskfeat_jax.data.prepare_video" in line
    assert seconds < 30, seconds


def test_missing_or_empty_image_data_dir_fails_in_seconds_before_compiling(tmp_path):
    config = "configs/in1k_vit_l_pretrain.py"
    result, seconds = timed_run(
        tmp_path / "run", f"--config.input.data_dir={tmp_path}/nowhere", config=config
    )
    assert refused(result) == (
        f"Data error: --config.input.data_dir={tmp_path}/nowhere does not exist; pass the "
        "directory that holds the 'imagenet2012' data."
    )
    assert seconds < 30, seconds
    empty = tmp_path / "tfds"
    empty.mkdir()
    line = refused(run_main(tmp_path / "run", f"--config.input.data_dir={empty}", config=config))
    assert line.startswith(f"Data error: no prepared tfds dataset 'imagenet2012' in {empty}")
    assert f"tfds build imagenet2012 --data_dir={empty} --file_format=array_record" in line
    assert os.listdir(empty) == []  # nothing downloaded or half prepared


def test_a_workdir_that_cannot_be_written(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    line = refused(run_main(blocker / "run"))
    assert line.startswith(f"Config error: --workdir {blocker}/run cannot be written")


def _fake_checkpoint(workdir, config, step=3):
    state = nnx.state(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))
    meta = {"config": json.loads(config.to_json_best_effort())}
    checkpoint.save_weights(os.path.join(workdir, "checkpoints"), state, meta, step=step)


def test_checkpoints_of_another_model_are_refused_before_compiling(tmp_path):
    saved = demo.get_config("smoke")
    _fake_checkpoint(tmp_path, saved)
    assert preflight.check_checkpoints(str(tmp_path), saved) == 3
    other = demo.get_config("smoke")
    other.model.depth, other.model.dtype = 3, "bfloat16"  # dtype may change on resume
    with pytest.raises(errors.ConfigError) as e:
        preflight.check_checkpoints(str(tmp_path), other)
    assert str(e.value) == (
        f"--workdir {tmp_path} holds checkpoints (step 3) of another model: model.depth 2 "
        "there, 3 here. Rerun with that run's config to resume it, or use a new --workdir "
        f"(with --config.init_from={tmp_path} to start from its weights)."
    )
    line = refused(run_main(tmp_path, "--config.model.depth=3"))
    assert line.startswith(f"Config error: --workdir {tmp_path} holds checkpoints (step 3)")
    assert preflight.check_checkpoints(str(tmp_path / "fresh"), saved) is None


def test_first_log_lines_name_the_data_and_the_outputs(tmp_path):
    result = run_main(tmp_path, "--config.total_steps=3")
    assert result.returncode == 0, result.stderr[-3000:]
    logged = [line.split("] ", 1)[1] for line in result.stderr.splitlines() if "] " in line]
    outputs = next(i for i, line in enumerate(logged) if line.startswith("Outputs: "))
    assert logged[outputs] == (
        f"Outputs: {tmp_path} (checkpoints/, metrics.jsonl, tensorboard/, pictures/)."
    )
    assert logged[outputs + 1] == "Data: embedded split 'train' (bundled): 18 records."
    assert logged.index(logged[outputs + 1]) < next(
        i for i, line in enumerate(logged) if line.startswith(COMPILED)
    )
