"""The trainer: abstract state -> shardings -> jitted init and step -> AOT compile.

The functional NNX form: ``nnx.split`` once here, ``nnx.merge`` inside ``jax.jit`` with
explicit ``in_shardings``/``out_shardings``; the state (model, optimizer[, EMA model]) is
donated to each step. What the step computes comes from the task (``tasks.py``): the loss and
the fields of the batch. Evaluation and pictures receive the functions they need from here
(graphdef, shardings) and never import this module.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from maskfeat_jax import finetune, models, optim, sharding, tasks
from maskfeat_jax.models import layers

Batch = Mapping[str, Any]


def train_step(
    state: nnx.State,
    batch: Batch,
    rng: jax.Array,
    *,
    graphdef: nnx.GraphDef,
    config: ml_collections.ConfigDict,
    loss_fn: Callable,
    schedule: optax.Schedule,
    mixup_groups: int = 1,
):
    """One optimizer step. ``state`` is (model, optimizer[, EMA model]); the step's random
    key (drop path, erasing noise, mixup) is ``rng`` folded with the step counter. A step
    whose loss or gradient norm is not finite changes nothing but the step counter; the
    metrics count such skipped updates (in all, and in a row up to this step)."""
    parts = nnx.merge(graphdef, state)
    model, optimizer = parts[0], parts[1]
    step = optimizer.step[...]
    grad_fn = nnx.value_and_grad(
        functools.partial(
            loss_fn,
            batch=batch,
            config=config,
            key=jax.random.fold_in(rng, step),
            mixup_groups=mixup_groups,
        ),
        has_aux=True,
    )
    (loss, aux), grads = grad_fn(model)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    # The optimizer skips updates with a non-finite gradient (optim.skipping_nonfinite); a
    # non-finite loss skips the update too, whatever its gradient.
    grads = jax.tree.map(lambda g: jnp.where(finite, g, jnp.nan), grads)
    optimizer.update(model, grads)
    if len(parts) > 2:  # a skipped step leaves the EMA as it is too
        finetune.update_ema(parts[2], model, jnp.where(finite, config.optim.ema_decay, 1.0))
    skips = optimizer.opt_state
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "lr": schedule(step),
        "skipped_updates": skips.total_notfinite[...],
        "skips_in_a_row": skips.notfinite_count[...],
        **aux,
    }
    return nnx.state(parts), metrics


@dataclasses.dataclass
class Trainer:
    config: ml_collections.ConfigDict
    task: tasks.Task
    mesh: jax.sharding.Mesh
    rules: dict
    spec: Any
    graphdef: nnx.GraphDef
    abstract_state: nnx.State
    state_shardings: Any
    batch_sharding: jax.sharding.NamedSharding
    schedule: optax.Schedule
    total_steps: int
    step: Callable  # jitted (state, batch, rng) -> (state, metrics)
    init: Callable  # jitted (key) -> state, created directly in its shardings

    def abstract_batch(self) -> dict[str, jax.ShapeDtypeStruct]:
        """What the step takes from the data pipeline (other host fields stay on the host)."""
        return tasks.abstract_batch(self.task, self.config.input.batch_size, self.batch_sharding)

    def abstract_state_on_mesh(self) -> Any:
        """The state as shape/dtype structs in its shardings (a restore target)."""
        return sharding.abstract_on_mesh(self.abstract_state, self.state_shardings)

    def compile(self):
        """AOT-compile the step for the config's shapes (also gives memory figures)."""
        rng = jax.ShapeDtypeStruct((), jax.random.key(0).dtype, sharding=self.rng_sharding)
        return self.step.lower(self.abstract_state_on_mesh(), self.abstract_batch(), rng).compile()

    @property
    def rng_sharding(self) -> jax.sharding.NamedSharding:
        return sharding.replicated(self.mesh)


def mixup_groups(config: ml_collections.ConfigDict, mesh, rules) -> int:
    """Mixup pairs examples within each batch shard (as the reference within each GPU), so
    no image crosses devices; with one example per shard it pairs over the whole batch."""
    shards = math.prod(mesh.shape[a] for a in sharding.batch_axes(rules))
    return shards if config.input.batch_size // shards >= 2 else 1


def _train_objects(config: ml_collections.ConfigDict, task, schedule, rngs: nnx.Rngs):
    """(model, optimizer) plus an EMA copy of the model when ``config.optim.ema_decay``."""
    model = models.from_config(config.model, rngs, target_size=task.target_size)
    tx = optim.skipping_nonfinite(
        optim.make_optimizer(config.optim, schedule, depth=model.spec.depth)
    )
    objects = (model, nnx.Optimizer(model, tx, wrt=nnx.Param))
    if config.optim.get("ema_decay"):
        objects += (finetune.make_ema(model),)
    return objects


def build_trainer(
    config: ml_collections.ConfigDict, mesh: jax.sharding.Mesh | None = None
) -> Trainer:
    task = tasks.from_config(config)
    mesh = mesh or sharding.make_mesh(config.mesh)
    rules = sharding.rules_from_config(config.sharding.rules)
    sharding.check_global_batch(config.input.batch_size, mesh, rules)
    schedule, total_steps = optim.schedule_from_config(config)
    make = functools.partial(_train_objects, config, task, schedule)
    abstract = nnx.eval_shape(lambda: make(nnx.Rngs(0)))
    graphdef, abstract_state = nnx.split(abstract)
    state_shardings = sharding.state_shardings(abstract_state, mesh, rules)
    batch_sharding = sharding.batch_sharding(mesh, rules)

    def init(key):
        return nnx.state(make(nnx.Rngs(key)))

    step_fn = functools.partial(
        train_step,
        graphdef=graphdef,
        config=config,
        loss_fn=task.loss(),
        schedule=schedule,
        mixup_groups=mixup_groups(config, mesh, rules),
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
        task=task,
        mesh=mesh,
        rules=rules,
        spec=abstract[0].spec,
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
