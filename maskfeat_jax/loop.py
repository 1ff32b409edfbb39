"""The training loop: stream -> step -> hooks (metrics, evaluation, pictures, checkpoints,
preemption), for any task.

``run(config, workdir)`` checks what can fail without the model first (config values, the
workdir and its checkpoints, the data), then builds the trainer (``trainer.py``), compiles
the step, restores or initializes the state and loops. A host batch is read, placed on the
mesh and stepped; every ``log_every_steps`` the metrics are fetched and written; fine-tuning
evaluates with ``evaluate.Evaluator`` and pretraining draws ``visualize.TrainingPictures``,
both given the jitted functions they need; checkpoints are saved as the config's policy says,
and a SIGTERM (preemption) saves and stops.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jax
import ml_collections
from absl import logging
from flax import nnx

from maskfeat_jax import (
    checkpoint,
    errors,
    evaluate,
    optim,
    preflight,
    sharding,
    tasks,
    trainer,
    visualize,
    weights,
)
from maskfeat_jax import metrics as metrics_lib
from maskfeat_jax.data import skipping


def eval_interval(config: ml_collections.ConfigDict) -> int:
    """Steps between evaluations during fine-tuning (``eval.every_steps``, else
    ``eval.every_epochs``); 0 evaluates at the end only."""
    if config.eval.get("every_steps"):
        return int(config.eval.every_steps)
    every_epochs = float(config.eval.get("every_epochs", 0) or 0)
    return round(every_epochs * optim.steps_per_epoch(config))


def load_init_weights(
    built: trainer.Trainer, state: nnx.State, path: str, exclude: str | None = None
) -> nnx.State:
    """``config.init_from``: model weights only, adapted to this model's form (pretraining ->
    fine-tuning, resampled position tables), placed in this run's shardings. Source entries
    matching the regex ``exclude`` are left out (e.g. another target's head)."""
    flat, _ = checkpoint.load_weights(path)
    done = weights.assign(state[0], flat, built.spec, exclude=exclude)
    logging.info("Initialized %d of %d arrays from %s.", done.loaded, done.total, path)
    if done.unused:
        logging.info("Not used from the source: %s", ", ".join(done.unused))
    if done.kept:
        logging.info("Kept at their initial values: %s", ", ".join(done.kept))
    return state


def initial_state(
    built: trainer.Trainer,
    ckpts: checkpoint.RunCheckpoints,
    data: Any,
) -> tuple[nnx.State, jax.Array, int, str]:
    """(state, rng, step, where it came from), in big_vision's order: a checkpoint of this run
    in the workdir > ``config.resume`` (another run's full state) > ``config.init_from``
    (weights only) > a fresh init. Restores put arrays straight into their shardings and
    rewind ``data`` to where the saved run was (on any process or worker count)."""
    config = built.config
    target = built.abstract_state_on_mesh()
    if ckpts.latest_step() is not None:
        r = ckpts.restore(target, data=data, global_batch=config.input.batch_size)
        return r.state, r.rng, r.step, f"resumed from {ckpts.directory}/{r.step}"
    if config.get("resume"):
        r = checkpoint.restore_run(
            config.resume, target, data=data, global_batch=config.input.batch_size
        )
        return r.state, r.rng, r.step, f"resumed from config.resume={config.resume} step {r.step}"
    rng = jax.random.key(config.seed)
    state = built.init(rng)
    if config.get("init_from"):
        return load_init_weights(built, state, config.init_from), rng, 0, "init_from"
    return state, rng, 0, "from scratch"


class _DataPosition:
    """A data iterator's state from before the batch that stopped the run, to checkpoint
    in its place (grain saves an object other than its own iterator by ``get_state()``,
    the state as JSON bytes, and restores it into the iterator as usual)."""

    def __init__(self, state: Any):
        self.state = state

    def get_state(self) -> bytes:
        return json.dumps(self.state, indent=4).encode()


def _wait_for_device(state: Any) -> None:
    """Blocks until the steps already dispatched have finished (a no-op when they have)."""
    try:
        jax.block_until_ready(state)
    except RuntimeError as e:  # e.g. arrays donated to a step that failed: nothing runs
        logging.warning("Not waiting for the last step: %s: %s", type(e).__name__, e)


def _save_before_stop(ckpts, step, state, data_position, rng, config) -> str:
    """Saves ``step`` (the last finished one) so that the run can continue once the data is
    fixed; says where, for the one-line error."""
    if step < 1:
        return "No step had finished, so there is no checkpoint."
    if jax.process_count() > 1:
        # The other processes are inside the next step and cannot join a save.
        return (
            f"Stopped after step {step} on process {jax.process_index()}; no checkpoint was saved."
        )
    ckpts.save(step, state, data=data_position, rng=rng, config=config, force=True)
    ckpts.wait_until_finished()
    return (
        f"Stopped after step {step}: checkpoint {ckpts.directory}/{step} is saved, and the same "
        "command continues from it."
    )


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, float]:
    """Trains as the config says (its task: pretraining or fine-tuning); resumes from
    ``workdir/checkpoints`` if a run was cut short; returns the last logged metrics (with
    ``preempted`` = 1.0 if it stopped early)."""
    # What can fail without the model fails first: the config values, the workdir and its
    # checkpoints, the data. Building the abstract model (tens of seconds for the large
    # ones) and compiling come after.
    task = tasks.from_config(config)
    sharding.check_global_batch(
        config.input.batch_size,
        sharding.make_mesh(config.mesh),
        sharding.rules_from_config(config.sharding.rules),
    )
    total_steps, _ = optim.schedule_steps(config)
    preflight.check_workdir(workdir)
    resumed = preflight.check_checkpoints(workdir, config)
    preflight.log_outputs(workdir, resumed)
    if resumed is not None and resumed >= total_steps:
        logging.info(
            "Checkpoint step %d already completes the schedule of %d steps; nothing to do.",
            resumed,
            total_steps,
        )
        return {}
    for line in preflight.describe_data(task, workdir):
        logging.info(line)
    data = task.train_stream(workdir)
    try:
        return _train(config, workdir, data)
    finally:
        # Prefetch threads and worker processes stop here, however the run ends, not
        # during interpreter teardown.
        close = getattr(data, "close", None)
        if close is not None:
            close()


def _compile(built: trainer.Trainer):
    compiled = built.compile()
    mem = compiled.memory_analysis()
    if mem is not None:
        logging.info(
            "Step memory per device: arguments %.1f MiB, temporaries %.1f MiB.",
            mem.argument_size_in_bytes / 2**20,
            mem.temp_size_in_bytes / 2**20,
        )
    return compiled


def evaluator_for(built: trainer.Trainer, workdir: str | None) -> evaluate.Evaluator:
    """Evaluation of ``built``'s states on the config's eval split."""
    predict = evaluate.make_predict(
        built.graphdef, built.config, built.mesh, built.state_shardings, built.batch_sharding
    )
    return evaluate.Evaluator(
        built.config, built.spec, predict, built.batch_sharding, built.rules, workdir
    )


def _pictures(built: trainer.Trainer, workdir: str) -> visualize.TrainingPictures | None:
    if not built.task.draws_pictures:
        return None
    outputs = visualize.make_outputs_fn(
        built.graphdef, built.config, built.state_shardings, built.mesh
    )
    try:
        return visualize.TrainingPictures(built.config, built.spec, outputs, workdir)
    except (OSError, ValueError, KeyError) as e:  # e.g. no such split in this dataset
        logging.warning(
            "Training pictures are off: %s. Set --config.visualize_split to a split of "
            "this dataset, or --config.visualize_every_steps=0.",
            e,
        )
        return None


class _Rates:
    """Steps per second and the share of time spent waiting for data, between logged steps
    (the first step includes warm-up: timing starts after it)."""

    def __init__(self, start: int):
        self.since, self.step, self.waited = None, start, 0.0

    def read(self, step: int) -> dict[str, float]:
        now, out = time.perf_counter(), {}
        if self.since is not None:
            out["steps_per_sec"] = (step - self.step) / (now - self.since)
            out["data_wait_fraction"] = self.waited / (now - self.since)
            out["data_wait_ms"] = 1e3 * self.waited / (step - self.step)
        self.since, self.step, self.waited = now, step, 0.0
        return out


def _logged(metrics, bad_inputs: skipping.BadInputMonitor, rates: _Rates, step: int) -> dict:
    """The step's metrics on the host, with input counts and rates."""
    out = {k: float(v) for k, v in jax.device_get(metrics).items()}
    out["skipped_inputs"] = float(bad_inputs.skipped)
    out["excluded_inputs"] = float(bad_inputs.excluded)
    out.update(rates.read(step))
    return out


class _SkippedUpdates:
    """Reads each step's count of skipped updates in a row (the step before the one just
    dispatched, so one step stays queued), logs every skip and stops the run after
    ``limit`` in a row."""

    def __init__(self, limit: int, checkpoints: checkpoint.RunCheckpoints):
        if limit < 1:
            raise errors.ConfigError(
                f"config.optim.max_consecutive_skips={limit}: it must be at least 1."
            )
        self.limit, self.checkpoints = limit, checkpoints

    def check(self, dispatched: tuple[Any, int] | None) -> None:
        """``dispatched``: (metrics, step) of a step already dispatched, or None."""
        if dispatched is None:
            return
        metrics, step = dispatched
        if not int(metrics["skips_in_a_row"]):
            return
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        in_a_row = int(m["skips_in_a_row"])
        logging.warning(
            "Step %d: loss %s, gradient norm %s; the update was skipped (%d in a row, %d in "
            "all).",
            step, m["loss"], m["grad_norm"], in_a_row, int(m["skipped_updates"]),
        )  # fmt: skip
        if in_a_row >= self.limit:
            self.checkpoints.wait_until_finished()
            saved = self.checkpoints.latest_step()
            kept = f"checkpoint step {saved} is intact" if saved else "no checkpoint was saved"
            raise errors.TrainingError(
                f"{in_a_row} updates in a row had a non-finite loss or gradient (steps "
                f"{step - in_a_row + 1}-{step}; the weights are those of step "
                f"{step - in_a_row}, {kept}); lower config.optim.base_lr or check the input "
                "data (config.optim.max_consecutive_skips sets how many skips stop the run)."
            )


def _evaluated(evaluator: evaluate.Evaluator, state, step: int, log) -> dict[str, float]:
    """Evaluates, logs the accuracies and returns every number as ``eval_<name>``."""
    result = evaluator(state, step)
    log.write(step, {f"eval_{k}": v for k, v in result.items() if k.startswith(("top", "ema_"))})
    # Not the dropped list or the summary line.
    return {f"eval_{k}": float(v) for k, v in result.items() if isinstance(v, (int, float))}


def _train(config: ml_collections.ConfigDict, workdir: str, data: Any) -> dict[str, float]:
    """``run`` from the first batch on: compiles, restores or initializes, trains."""
    preflight.read_first_batch(data)
    built = trainer.build_trainer(config)
    logging.info("Config:\n%s", config)
    logging.info(
        "Mesh %s; %d devices over %d processes.",
        dict(built.mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )
    compiled = _compile(built)
    ckpts = checkpoint.RunCheckpoints.from_config(workdir, config)
    state, rng, start, source = initial_state(built, ckpts, data)
    total = built.total_steps
    logging.info(
        "Model %s %s: %s parameters; %d steps; %s.",
        config.model.name,
        config.model.variant,
        f"{trainer.count_params(state):,}",
        total,
        source if start == 0 else f"{source}, continuing at step {start + 1}",
    )
    evaluator = evaluator_for(built, workdir) if built.task.evaluates else None
    eval_every = eval_interval(config) if evaluator is not None else 0
    pictures = _pictures(built, workdir)
    picture_every = int(config.get("visualize_every_steps", 0) or 0)
    log_every = max(1, int(config.log_every_steps))
    log = metrics_lib.RunLogger(workdir, total, start, tensorboard=config.get("tensorboard", True))
    bad_inputs = skipping.BadInputMonitor(config.input.get("max_bad_fraction", 0.05))
    model_inputs = tuple(built.abstract_batch())
    step_rng = sharding.replicate_key(rng, built.mesh)
    rates, last = _Rates(start), {}
    skipped, previous = _SkippedUpdates(int(config.optim.max_consecutive_skips), ckpts), None
    sigterm = checkpoint.SigtermWatcher()
    try:
        for step in range(start + 1, total + 1):
            t_wait = time.perf_counter()
            position = data.get_state()
            try:
                host_batch = bad_inputs.observe(next(data))
            except skipping.TooManyBadInputs as e:
                where = _save_before_stop(
                    ckpts, step - 1, state, _DataPosition(position), rng, config
                )
                logging.error("%s %s", e, where)
                raise skipping.TooManyBadInputs(f"{e} {where}") from e
            batch = sharding.to_global(
                {k: host_batch[k] for k in model_inputs}, built.batch_sharding
            )
            rates.waited += time.perf_counter() - t_wait
            state, metrics = compiled(state, batch, step_rng)
            skipped.check(previous)
            previous = (metrics, step)
            log.progress.advance(step)
            if step == start + 1 or step % log_every == 0 or step == total:
                last = _logged(metrics, bad_inputs, rates, step)
                log.write(step, last)
                log.progress.logged(step, last)
            if pictures is not None and (step % picture_every == 0 or step == total):
                path, image = pictures(state, step)
                log.image(step, "pictures", image)
                logging.info("Picture of step %d: %s", step, path)
            if evaluator is not None and (step == total or (eval_every and step % eval_every == 0)):
                last.update(_evaluated(evaluator, state, step, log))
            # The save policy already asks Orbax about preemption every step; ask again only
            # when it saved, to learn whether that save was the preemption one.
            stop = sigterm.requested
            final = stop or step == total
            saved = ckpts.save(step, state, data=data, rng=rng, config=config, force=final)
            if stop or (saved and not final and ckpts.reached_preemption(step)):
                ckpts.wait_until_finished()
                logging.warning(
                    "Stopped at step %d for preemption; checkpoint %s/%d is saved. Run the same "
                    "command again to continue.",
                    step,
                    ckpts.directory,
                    step,
                )
                last["preempted"] = 1.0
                break
        skipped.check(previous)
        if start >= total:
            logging.info("Checkpoint step %d already completes the schedule.", start)
        ckpts.wait_until_finished()
        logging.info("Checkpoints in %s: steps %s", ckpts.directory, ckpts.all_steps())
    finally:
        # The step dispatched last may still be running on XLA's threads when an error
        # leaves the loop; exiting the process under it crashes (SIGSEGV in its kernels).
        _wait_for_device(state)
        sigterm.close()
        ckpts.close()
        log.close()
    return last
