"""The config mistakes a new user makes end in one line that names the fix (exit code 2): the
training command in a child process."""

import pytest

from maskfeat_jax import defaults, errors
from maskfeat_jax.data import sources
from tests.support.runs import run_main


def refused(result):
    assert result.returncode == 2, result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    return result.stderr.strip().splitlines()[-1]


def test_unknown_config_key_suggests_the_right_one(tmp_path):
    line = refused(run_main(tmp_path, "--config.model.widht=64"))
    assert line.startswith("Config error: --config.model.widht=64")
    assert "did you mean config.model.width?" in line
    line = refused(
        run_main(tmp_path, "--config.optim.layer_decy=0.7", config="configs/digits.py:finetune")
    )
    assert "did you mean config.optim.layer_decay?" in line


def test_missing_config_file_lists_the_configs(tmp_path):
    line = refused(run_main(tmp_path, config="configs/demoo.py"))
    assert "there is no file 'configs/demoo.py'" in line and "Did you mean configs/demo.py?" in line


def test_image_size_not_divisible_by_patch_size(tmp_path):
    line = refused(run_main(tmp_path, "--config.model.image_size=60"))
    assert "image_size 60 is not a multiple of patch_size 16" in line
    assert "--config.model.image_size=48" in line


def test_video_size_not_divisible_by_the_pooling_strides(tmp_path):
    result = run_main(
        tmp_path, "--config.model.image_size=100", config="configs/demo_video.py:smoke"
    )
    line = refused(result)
    assert "image_size 100 must be a multiple of" in line and "--config.model.image_size=" in line


def test_missing_data_dir_names_the_flag(tmp_path):
    line = refused(run_main(tmp_path, "--config.input.dataset=folder"))
    assert "--config.input.data_dir=" in line and "dataset=embedded" in line
    video = defaults.video_pretrain_config()
    video.input.dataset = "records"
    with pytest.raises(errors.ConfigError, match="--config.input.data_dir=DIR"):
        sources.open_video_source(video, None, "train")
    image = defaults.pretrain_config()
    image.input.dataset = "imagenet2012"
    with pytest.raises(errors.ConfigError, match="--config.input.data_dir=/path"):
        sources.open_image_source(image, "train")


def test_schedule_shorter_than_its_warmup(tmp_path):
    line = refused(run_main(tmp_path, "--config.total_steps=2"))  # the smoke config warms up 2
    assert "not more than its 2 warmup steps" in line and "--config.total_steps" in line
