"""MaskFeat pretraining: abstract state -> shardings -> jitted step -> loop.

How a batch travels: the host pipeline yields ``{"image": uint8, "mask": bool}`` for its slice
of the global batch -> ``jax.make_array_from_process_local_data`` places it on the mesh ->
inside one jitted step: normalize, HOG targets (from the same augmented, normalized view the
encoder sees), mask-token replacement, encoder, head, masked MSE, gradients, optax update.
The state is donated; a few scalar metrics come back.

The functional NNX loop: ``nnx.split`` once outside, ``nnx.merge`` inside ``jax.jit`` with
explicit ``in_shardings``/``out_shardings``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
import time
from typing import Any, Callable, Iterator, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from maskfeat_jax import (
    checkpoint,
    errors,
    finetune,
    hog,
    masking,
    models,
    objectives,
    optim,
    preflight,
    sharding,
)
from maskfeat_jax import metrics as metrics_lib
from maskfeat_jax.data import skipping
from maskfeat_jax.models import layers

Batch = Mapping[str, Any]


# ---------------------------------------------------------------------------------------------
# Targets and the loss, as a pure function of (model, batch).
# ---------------------------------------------------------------------------------------------


TARGETS = ("hog", "pixels")


def target_kind(config: ml_collections.ConfigDict) -> str:
    kind = config.get("target", "hog")
    if kind not in TARGETS:
        raise errors.ConfigError(
            f"config.target={kind!r} is not one of {TARGETS}; set --config.target=hog or pixels."
        )
    return kind


def hog_input(config: ml_collections.ConfigDict) -> str:
    """What the HOG target is computed on: "pixels", the integer-valued view (exact Sobel
    zeros), or "normalized", the tensor the encoder sees, as SlowFast computes it."""
    source = config.hog.get("input", "pixels")
    if source not in hog.INPUT_KINDS:
        raise errors.ConfigError(
            f"config.hog.input={source!r} is not one of {hog.INPUT_KINDS}; set "
            "--config.hog.input=pixels (uint8 pixel values, the default) or normalized "
            "(the mean/std-normalized input, as SlowFast)."
        )
    return source


def target_dim(config: ml_collections.ConfigDict, patch_size: int, channels: int = 3) -> int:
    """Per-token target size: HOG 3 x nbins x (P / cell)^2 (108 at 16 px), pixels 3 x P^2."""
    if target_kind(config) == "pixels":
        return channels * patch_size * patch_size
    cells = patch_size // config.hog.cell_size
    return channels * config.hog.nbins * cells * cells


def compute_targets(
    pixels: jax.Array, images: jax.Array, spec, config: ml_collections.ConfigDict
) -> jax.Array:
    """HOG of the uint8-valued ``pixels`` (``config.hog.input="pixels"``) or of the normalized
    ``images`` (``"normalized"``), or ``images`` patch by patch (the
    paper's pixel-colour target, each patch normalized to zero mean and unit variance when
    ``config.norm_pixel_target``, SlowFast's ``NORM_PRED_PIXEL``); video targets come from
    frames 0, t, 2t, ... (t = tubelet)."""
    if target_kind(config) == "pixels":
        frames = images[:, :: spec.tubelet] if spec.is_video else images
        return objectives.patch_pixels(
            frames, spec.patch_size, normalize=config.get("norm_pixel_target", True)
        )
    hog_cfg = config.hog
    kind = hog_input(config)
    kwargs = dict(
        patch_size=spec.patch_size,
        nbins=hog_cfg.nbins,
        cell_size=hog_cfg.cell_size,
        gaussian_window=hog_cfg.gaussian_window,
        input_kind=kind,
    )
    source = pixels if kind == "pixels" else images
    if spec.is_video:
        return hog.hog_targets_video(source, temporal_stride=spec.tubelet, **kwargs)
    return hog.hog_targets(source, **kwargs)


def token_mask(mask: jax.Array, token_grid: tuple[int, ...]) -> jax.Array:
    """Mask units [B, *unit_grid] -> token mask [B, N] (nearest upsampling by integer factors)."""
    unit_grid = tuple(mask.shape[1:])
    if len(unit_grid) != len(token_grid) or any(t % u for t, u in zip(token_grid, unit_grid)):
        raise ValueError(
            f"mask grid {unit_grid} does not divide the token grid {token_grid}; "
            "set config.mask.grid to the token grid or an integer fraction of it."
        )
    factors = tuple(t // u for t, u in zip(token_grid, unit_grid))
    if any(f != 1 for f in factors):
        mask = masking.upsample_mask(mask, factors)
    return mask.reshape(mask.shape[0], -1)


def pretrain_loss(
    model: nnx.Module,
    batch: Batch,
    config: ml_collections.ConfigDict,
    key: jax.Array | None = None,
    **_,
):
    """Masked MSE between predictions and the targets of the masked tokens (``key``: drop
    path, off in the reference pretraining recipes)."""
    pred, targets, loss_mask = pretrain_outputs(model, batch, config, key)
    loss = objectives.masked_mse(pred, targets, loss_mask)
    return loss, {"mask_ratio": jnp.mean(loss_mask.astype(jnp.float32))}


def pretrain_outputs(model: nnx.Module, batch: Batch, config, key: jax.Array | None = None):
    """(predictions [B, N, D], targets [B, N, D], loss mask [B, N]) on the output tokens."""
    spec = model.spec
    images = objectives.normalize(batch["image"], config.input.mean, config.input.std)
    # By default (config.hog.input="pixels") the HOG targets come from the same augmented view
    # before normalizing: integer pixels make every Sobel cancellation exact, so a pixel's bin
    # never depends on float rounding of the normalized values; "normalized" takes `images`.
    pixels = batch["image"].astype(jnp.float32)
    targets = jax.lax.stop_gradient(compute_targets(pixels, images, spec, config))
    # Mask units are upsampled twice: to the input tokens for mask-token replacement and to
    # the output tokens for the loss (the same grid for a ViT; 4x finer input for MViT).
    loss_mask = token_mask(batch["mask"], spec.grid)
    pred = model(images, token_mask(batch["mask"], spec.token_grid), key=key)
    return pred, targets, loss_mask


def train_step(
    state: nnx.State,
    batch: Batch,
    rng: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    schedule: optax.Schedule,
    data_groups: int = 1,
):
    """One optimizer step. ``state`` is (model, optimizer[, EMA model]); the step's random
    key (drop path, erasing noise, mixup) is ``rng`` folded with the step counter."""
    parts = nnx.merge(graphdef, state)
    model, optimizer = parts[0], parts[1]
    step = optimizer.step[...]
    lr = schedule(step)
    loss_fn = finetune.classification_loss if finetune.is_classification(config) else pretrain_loss
    grad_fn = nnx.value_and_grad(
        functools.partial(
            loss_fn,
            batch=batch,
            config=config,
            key=jax.random.fold_in(rng, step),
            data_groups=data_groups,
        ),
        has_aux=True,
    )
    (loss, aux), grads = grad_fn(model)
    optimizer.update(model, grads)
    if len(parts) > 2:
        finetune.update_ema(parts[2], model, config.optim.ema_decay)
    metrics = {"loss": loss, "grad_norm": optax.tree.norm(grads), "lr": lr, **aux}
    return nnx.state(parts), metrics


# ---------------------------------------------------------------------------------------------
# Abstract state, shardings and the compiled step for one config on one mesh.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Trainer:
    config: ml_collections.ConfigDict
    mesh: jax.sharding.Mesh
    rules: dict
    spec: Any
    graphdef: nnx.GraphDef
    abstract_state: nnx.State
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    schedule: optax.Schedule
    total_steps: int
    step: Callable  # jitted (state, batch) -> (state, metrics)
    init: Callable  # jitted (key) -> state, created directly in its shardings

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """What the step takes from the data pipeline (other host fields stay on the host)."""
        s = self.spec.image_size
        frames = (self.spec.num_frames,) if self.spec.is_video else ()
        image_shape = (*frames, s, s, 3)
        if finetune.is_classification(self.config):
            fields = finetune.batch_fields(self.config, image_shape)
        else:
            fields = {
                "image": (image_shape, jnp.uint8),
                "mask": (mask_grid(self.config, self.spec), jnp.bool_),
            }
        b = self.config.input.batch_size
        return {
            k: jax.ShapeDtypeStruct((b, *shape), dtype, sharding=self.batch_sharding)
            for k, (shape, dtype) in fields.items()
        }

    def compile(self):
        """AOT-compile the step for the config's shapes (also gives memory figures)."""
        state = sharding.abstract_on_mesh(self.abstract_state, self.state_shardings)
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=self.rng_sharding)
        return self.step.lower(state, self.abstract_batch(), rng).compile()

    @property
    def rng_sharding(self) -> jax.sharding.NamedSharding:
        return sharding.replicated(self.mesh)


def mask_grid(config: ml_collections.ConfigDict, spec) -> tuple[int, ...]:
    grid = config.mask.get("grid")
    return tuple(grid) if grid else tuple(spec.grid)


def records_per_epoch_steps(config: ml_collections.ConfigDict) -> int:
    """Steps per pass over the data; with repeated augmentation a step reads batch / repeats
    records."""
    repeats = int(config.input.get("repeats", 1) or 1)
    return config.input.examples_per_epoch * repeats // config.input.batch_size


def eval_interval(config: ml_collections.ConfigDict) -> int:
    """Steps between evaluations during fine-tuning (``eval.every_steps``, else
    ``eval.every_epochs``); 0 evaluates at the end only."""
    if config.eval.get("every_steps"):
        return int(config.eval.every_steps)
    return round(float(config.eval.get("every_epochs", 0) or 0) * records_per_epoch_steps(config))


def schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
    """(total_steps, warmup_steps) from explicit steps or from epochs of the dataset."""
    total, warmup = _schedule_steps(config)
    if total <= warmup:
        raise errors.ConfigError(
            f"the schedule has {total} steps, not more than its {warmup} warmup steps; raise "
            "--config.total_steps (or total_epochs) or lower --config.optim.warmup_steps "
            "(or warmup_epochs)."
        )
    return total, warmup


def _schedule_steps(config: ml_collections.ConfigDict) -> tuple[int, int]:
    batch = config.input.batch_size
    if config.get("total_steps"):
        total = int(config.total_steps)
        warmup = int(config.optim.get("warmup_steps") or 0)
        if not warmup and config.optim.get("warmup_epochs") and config.get("total_epochs"):
            warmup = round(total * config.optim.warmup_epochs / config.total_epochs)
        return total, warmup
    steps_per_epoch = records_per_epoch_steps(config)
    if steps_per_epoch < 1:
        raise errors.ConfigError(
            f"config.input.batch_size={batch} exceeds the dataset's "
            f"{config.input.examples_per_epoch} examples per epoch; set config.total_steps."
        )
    return (
        round(config.total_epochs * steps_per_epoch),
        round(config.optim.warmup_epochs * steps_per_epoch),
    )


def _make_train_objects(
    config: ml_collections.ConfigDict,
    spec_target_dim: int,
    schedule: optax.Schedule,
    rngs: nnx.Rngs,
):
    """(model, optimizer) plus an EMA copy of the model when ``config.optim.ema_decay``."""
    model = models.build_model(config.model, rngs, target_dim=spec_target_dim)
    tx = optim.make_optimizer(config.optim, schedule, depth=model.spec.depth)
    objects = (model, nnx.Optimizer(model, tx, wrt=nnx.Param))
    if config.optim.get("ema_decay"):
        objects += (finetune.make_ema(model),)
    return objects


def data_groups(config: ml_collections.ConfigDict, mesh, rules) -> int:
    """Mixup pairs examples within each batch shard (as the reference within each GPU), so
    no image crosses devices; with one example per shard it pairs over the whole batch."""
    shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(rules))
    return shards if config.input.batch_size // shards >= 2 else 1


def build_trainer(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> Trainer:
    mesh = mesh or sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.sharding.rules)
    sharding.check_global_batch(config.input.batch_size, mesh, rules)
    target_size = 0  # a classifier has no pretraining head
    if not finetune.is_classification(config):
        target_size = target_dim(config, models.model_spec(config.model).patch_size)
    total_steps, warmup_steps = schedule_steps(config)
    schedule = optim.learning_rate_schedule(
        config.optim,
        global_batch=config.input.batch_size,
        total_steps=total_steps,
        warmup_steps=warmup_steps,
    )
    make = functools.partial(_make_train_objects, config, target_size, schedule)
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    spec = abstract[0].spec  # with the HOG target size for the head
    state_shardings = sharding.state_shardings(abstract_state, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)

    def init(key):
        return nnx.state(make(nnx.Rngs(key)))

    step_fn = functools.partial(
        train_step,
        graphdef=graphdef,
        config=config,
        schedule=schedule,
        data_groups=data_groups(config, mesh, rules),
    )

    def traced_step(state, batch, rng):
        with layers.activations_sharded(batch_sharding):
            return step_fn(state, batch, rng)

    step = jax.jit(
        traced_step,
        in_shardings=(state_shardings, batch_sharding, sharding.replicated(mesh)),
        out_shardings=(state_shardings, sharding.replicated(mesh)),
        donate_argnums=0,
    )
    return Trainer(
        config=config,
        mesh=mesh,
        rules=rules,
        spec=spec,
        graphdef=graphdef,
        abstract_state=abstract_state,
        state_shardings=state_shardings,
        batch_sharding=batch_sharding,
        schedule=schedule,
        total_steps=total_steps,
        step=step,
        init=jax.jit(init, out_shardings=state_shardings),
    )


def count_params(state: nnx.State) -> int:
    model_state = state[0] if isinstance(state, (tuple, list)) else state
    return sum(
        int(np.prod(x.shape))
        for x in jax.tree.leaves(nnx.state(model_state, nnx.Param))
        if hasattr(x, "shape")
    )


# ---------------------------------------------------------------------------------------------
# The loop.
# ---------------------------------------------------------------------------------------------


def train_iterator(
    config: ml_collections.ConfigDict, spec, workdir: str | None = None
) -> Iterator[dict[str, np.ndarray]]:
    """This host's slice of each global batch, from the configured source (the embedded
    videos are built in ``workdir`` on first use)."""
    # grain is only needed when training.
    import grain

    from maskfeat_jax.data import images as image_data
    from maskfeat_jax.data import videos as video_data

    shard = grain.sharding.ShardByJaxProcess(drop_remainder=True)
    if finetune.is_classification(config):
        from maskfeat_jax.data import classification

        return classification.iterator_from_config(
            config,
            spec=spec,
            per_host_batch=config.input.batch_size // shard.shard_count,
            shard_index=shard.shard_index,
            shard_count=shard.shard_count,
            workdir=workdir,
        )
    kwargs = dict(
        image_size=spec.image_size,
        mask_grid=mask_grid(config, spec),
        per_host_batch=config.input.batch_size // shard.shard_count,
        shard_index=shard.shard_index,
        shard_count=shard.shard_count,
    )
    if spec.is_video:
        return video_data.iterator_from_config(
            config, num_frames=spec.num_frames, workdir=workdir, **kwargs
        )
    return image_data.iterator_from_config(config, **kwargs)


def _load_init_weights(
    trainer: Trainer, state: nnx.State, path: str, exclude: str | None = None
) -> nnx.State:
    """``config.init_from``: model weights only, adapted to this model's form (pretraining ->
    fine-tuning, resampled position tables), placed in this run's shardings. Source entries
    matching the regex ``exclude`` are left out (e.g. another target's head)."""
    source, _ = checkpoint.load_weights(path)
    if exclude:
        source = {k: v for k, v in source.items() if not re.match(exclude, k)}
    current = {"/".join(map(str, p)): v for p, v in nnx.to_flat_state(state[0])}
    template = {k: np.asarray(jax.device_get(v.get_value())) for k, v in current.items()}
    params, unused, kept = models.transfer_params(trainer.spec, source, template)
    for key, var in current.items():
        old = var.get_value()
        var.set_value(jax.device_put(np.asarray(params[key], old.dtype), old.sharding))
    logging.info(
        "Initialised %d of %d arrays from %s.", len(current) - len(kept), len(current), path
    )
    if unused:
        logging.info("Not used from the source: %s", ", ".join(unused))
    if kept:
        logging.info("Kept at their initial values: %s", ", ".join(kept))
    return state


def initial_state(
    trainer: Trainer,
    ckpts: checkpoint.RunCheckpoints,
    data: Any,
) -> tuple[nnx.State, jax.Array, int, str]:
    """(state, rng, step, where it came from), in big_vision's order: a checkpoint of this run
    in the workdir > ``config.resume`` (another run's full state) > ``config.init_from``
    (weights only) > a fresh init. Restores put arrays straight into their shardings and
    rewind ``data`` to where the saved run was."""
    config = trainer.config
    target = sharding.abstract_on_mesh(trainer.abstract_state, trainer.state_shardings)
    if ckpts.latest_step() is not None:
        r = ckpts.restore(target, data=data)
        return r.state, r.rng, r.step, f"resumed from {ckpts.directory}/{r.step}"
    if config.get("resume"):
        r = checkpoint.restore_run(config.resume, target, data=data)
        return r.state, r.rng, r.step, f"resumed from config.resume={config.resume} step {r.step}"
    rng = jax.random.key(config.seed)
    state = trainer.init(rng)
    if config.get("init_from"):
        return _load_init_weights(trainer, state, config.init_from), rng, 0, "init_from"
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
    """Pretrains as the config says; resumes from ``workdir/checkpoints`` if a run was cut
    short; returns the last logged metrics (with ``preempted`` = 1.0 if it stopped early)."""
    # What can fail without the model fails first: the config values, the workdir and its
    # checkpoints, the data. Building the abstract model (tens of seconds for the large
    # ones) and compiling come after.
    spec = models.model_spec(config.model)
    if not finetune.is_classification(config) and target_kind(config) == "hog":
        hog_input(config)
    sharding.check_global_batch(
        config.input.batch_size,
        sharding.make_mesh(config.mesh),
        sharding.rules_from_config(config.sharding.rules),
    )
    total_steps, _ = schedule_steps(config)
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
    for line in preflight.describe_data(config, spec, workdir):
        logging.info(line)
    data = train_iterator(config, spec, workdir)
    try:
        return _train(config, workdir, data)
    finally:
        # Prefetch threads and worker processes stop here, however the run ends, not
        # during interpreter teardown.
        close = getattr(data, "close", None)
        if close is not None:
            close()


def _train(config: ml_collections.ConfigDict, workdir: str, data: Any) -> dict[str, float]:
    """``run`` from the first batch on: compiles, restores or initializes, trains."""
    preflight.read_first_batch(data)
    trainer = build_trainer(config)
    logging.info("Config:\n%s", config)
    logging.info(
        "Mesh %s; %d devices over %d processes.",
        dict(trainer.mesh.shape),
        jax.device_count(),
        jax.process_count(),
    )

    compiled = trainer.compile()
    mem = compiled.memory_analysis()
    if mem is not None:
        logging.info(
            "Step memory per device: arguments %.1f MiB, temporaries %.1f MiB.",
            mem.argument_size_in_bytes / 2**20,
            mem.temp_size_in_bytes / 2**20,
        )

    bad_inputs = skipping.BadInputMonitor(config.input.get("max_bad_fraction", 0.05))
    model_inputs = tuple(trainer.abstract_batch())
    ckpts = checkpoint.RunCheckpoints.from_config(workdir, config)
    state, rng, start, source = initial_state(trainer, ckpts, data)
    logging.info(
        "Model %s %s: %s parameters; %d steps; %s.",
        config.model.name,
        config.model.variant,
        f"{count_params(state):,}",
        trainer.total_steps,
        source if start == 0 else f"{source}, continuing at step {start + 1}",
    )
    step_rng = sharding.replicate_key(rng, trainer.mesh)
    evaluator, eval_every = None, 0
    if finetune.is_classification(config) and config.get("eval"):
        from maskfeat_jax import evaluate

        evaluator = evaluate.Evaluator(trainer, workdir)
        eval_every = eval_interval(config)
    log = metrics_lib.RunLogger(
        workdir, trainer.total_steps, start, tensorboard=config.get("tensorboard", True)
    )
    every = max(1, int(config.log_every_steps))
    pictures, picture_every = None, int(config.get("visualize_every_steps", 0) or 0)
    if picture_every and not finetune.is_classification(config) and target_kind(config) == "hog":
        from maskfeat_jax import visualize

        try:
            pictures = visualize.TrainingPictures(trainer, workdir)
        except (OSError, ValueError, KeyError) as e:  # e.g. no such split in this dataset
            logging.warning(
                "Training pictures are off: %s. Set --config.visualize_split to a split of "
                "this dataset, or --config.visualize_every_steps=0.",
                e,
            )
    last: dict[str, float] = {}
    t_last, step_last, waited = None, start, 0.0
    sigterm = checkpoint.SigtermWatcher()
    try:
        for step in range(start + 1, trainer.total_steps + 1):
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
                {k: host_batch[k] for k in model_inputs}, trainer.batch_sharding
            )
            waited += time.perf_counter() - t_wait
            state, metrics = compiled(state, batch, step_rng)
            log.progress.advance(step)
            if step == start + 1 or step % every == 0 or step == trainer.total_steps:
                last = {k: float(v) for k, v in jax.device_get(metrics).items()}
                last["skipped_inputs"] = float(bad_inputs.skipped)
                last["excluded_inputs"] = float(bad_inputs.excluded)
                now = time.perf_counter()
                if t_last is not None:  # the first step includes warm-up; time from there on
                    last["steps_per_sec"] = (step - step_last) / (now - t_last)
                    last["data_wait_fraction"] = waited / (now - t_last)
                    last["data_wait_ms"] = 1e3 * waited / (step - step_last)
                t_last, step_last, waited = now, step, 0.0
                log.write(step, last)
                log.progress.logged(step, last)
                if not math.isfinite(last["loss"]):
                    raise FloatingPointError(
                        f"loss became {last['loss']} at step {step}; lower "
                        "config.optim.base_lr or check the input data."
                    )
            if pictures is not None and (step % picture_every == 0 or step == trainer.total_steps):
                path, image = pictures(state, step)
                log.image(step, "pictures", image)
                logging.info("Picture of step %d: %s", step, path)
            if evaluator is not None and (
                step == trainer.total_steps or (eval_every and step % eval_every == 0)
            ):
                result = evaluator(state, step)
                log.write(
                    step,
                    {f"eval_{k}": v for k, v in result.items() if k.startswith(("top", "ema_top"))},
                )
                last.update(
                    {
                        f"eval_{k}": float(v)
                        for k, v in result.items()
                        if isinstance(v, (int, float))  # not the dropped list or summary
                    }
                )
            # The save policy already asks Orbax about preemption every step; ask again only
            # when it saved, to learn whether that save was the preemption one.
            stop = sigterm.requested
            final = stop or step == trainer.total_steps
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
        if start >= trainer.total_steps:
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
