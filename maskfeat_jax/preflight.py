"""What a run checks before it compiles: the workdir, the checkpoints in it and the data.

None of this needs the model, so a mistake costs seconds instead of the minutes a large
model takes to compile, and ends in one line that names the fix (``errors.UserError``)."""

from __future__ import annotations

import json
import os
from typing import Any, Iterator

import ml_collections
from absl import logging
from etils import epath

from maskfeat_jax import checkpoint, errors, files, tasks
from maskfeat_jax.data import streams

# Model settings that change no parameter shape: a run may resume with other values.
_SHAPE_FREE_MODEL_KEYS = ("dtype", "remat", "drop_path_rate")


def check_workdir(workdir: str) -> None:
    """The workdir exists or can be made, and a file can be written in it."""
    probe = files.join(workdir, f".write-check-{os.getpid()}")
    try:
        files.make_dirs(workdir)
        epath.Path(probe).write_text("")
        epath.Path(probe).unlink()
    except OSError as e:
        raise errors.ConfigError(
            f"--workdir {workdir} cannot be written ({e.strerror or e}); pass a directory "
            "this process can create and write."
        ) from e


def _as_json(value: Any) -> Any:
    return json.loads(json.dumps(value, default=list))


def _what_decides_the_state(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """The config values that fix the shapes of the saved state, as JSON values."""
    config = ml_collections.ConfigDict(_as_json(config.to_dict()))
    out = {
        f"model.{k}": v
        for k, v in config.model.to_dict().items()
        if k not in _SHAPE_FREE_MODEL_KEYS
    }
    if not tasks.is_classification(config):
        out["target"] = config.get("target", "hog")
        if out["target"] == "hog" and "hog" in config:
            out.update({f"hog.{k}": config.hog.get(k) for k in ("nbins", "cell_size")})
    return out


def check_checkpoints(workdir: str, config: ml_collections.ConfigDict) -> int | None:
    """A workdir with checkpoints is resumed: they must come from a model of this config's
    shapes. Returns the step that will be resumed (None: nothing to resume)."""
    directory = files.join(workdir, "checkpoints")
    if not files.is_dir(directory):
        return None
    try:
        path, step = checkpoint.resolve(directory)
    except FileNotFoundError:
        return None  # only unfinished saves: the run starts afresh
    saved = checkpoint.read_meta(path, step).get("config")
    if not saved:
        return step
    there = _what_decides_the_state(ml_collections.ConfigDict(saved))
    here = _what_decides_the_state(config)
    differences = [
        f"{key} {there.get(key)!r} there, {here.get(key)!r} here"
        for key in sorted(set(there) | set(here))
        if there.get(key) != here.get(key)
    ]
    if differences:
        raise errors.ConfigError(
            f"--workdir {workdir} holds checkpoints (step {step}) of another model: "
            f"{'; '.join(differences)}. Rerun with that run's config to resume it, or use a "
            f"new --workdir (with --config.init_from={workdir} to start from its weights)."
        )
    return step


def splits_read(task: tasks.Task) -> list[str]:
    """Training split first, then the split evaluated during fine-tuning."""
    config = task.config
    splits = [config.input.get("split", "train")]
    if task.evaluates:
        eval_split = config.eval.get("split") or "validation"
        if eval_split not in splits:
            splits.append(eval_split)
    return splits


def describe_data(task: tasks.Task, workdir: str | None) -> list[str]:
    """Opens every split the run reads (errors name the fix) and says what is there."""
    inp = task.config.input
    name = inp.get("dataset", "embedded")
    where = inp.get("data_dir") or ("bundled" if name in ("embedded", "digits") else "")
    lines = []
    for split in splits_read(task):
        source = streams.open_split(task.config, task.spec, workdir, split)
        if len(source) == 0:
            raise errors.DataError(
                f"split {split!r} of {name!r} in {where} has no records; point "
                "--config.input.data_dir at the prepared data."
            )
        lines.append(f"Data: {name} split {split!r} ({where}): {len(source):,} records.")
    return lines


def read_first_batch(data: Iterator[dict[str, Any]]) -> dict[str, Any]:
    """Reads one batch and rewinds the iterator, so training sees the same stream."""
    state = data.get_state()
    try:
        batch = next(data)
    except errors.UserError:
        raise
    except Exception as e:  # any reader failure: say so before compiling
        raise errors.DataError(
            f"the first training batch could not be read: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}"
        ) from e
    data.set_state(state)
    return batch


def log_outputs(workdir: str, resumed_step: int | None) -> None:
    resume = f"; resuming at step {resumed_step}" if resumed_step is not None else ""
    logging.info(
        "Outputs: %s (checkpoints/, metrics.jsonl, tensorboard/, pictures/)%s.",
        files.absolute(workdir),
        resume,
    )
