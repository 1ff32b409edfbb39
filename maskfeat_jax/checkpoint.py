"""Orbax checkpoints of a run, and the model weights other tools read from them.

A training checkpoint is one Orbax composite step directory ``workdir/checkpoints/<step>``:

  ``model``      the model's nnx state (parameters), restored straight into its shardings
  ``optimizer``  optax state and the optimizer's step counter
  ``data``       the grain iterator state of every process (``process_<i>-of-<n>.json``)
  ``meta``       JSON: step, the base RNG key, the config that made the run, a format version

Orbax writes a step into ``<step>.orbax-checkpoint-tmp*`` and renames it when every item
(and every host) is done, so a crash mid-save leaves nothing that looks like a step.
Checkpoints made by ``maskfeat_jax.import_torch`` hold only ``model`` and ``meta``;
``config.init_from`` and the exporter read just those two items of either kind.
"""

from __future__ import annotations

import dataclasses
import json
import logging as py_logging
import signal
import threading
from typing import Any, Mapping

import jax
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from etils import epath
from flax import nnx, traverse_util
from orbax.checkpoint import checkpoint_managers as policies

from maskfeat_jax import files

FORMAT_VERSION = 1


def _not_orbax_info(record: py_logging.LogRecord) -> bool:
    return record.levelno >= py_logging.WARNING or "orbax" not in record.pathname


def quiet_orbax_logging() -> None:
    """Orbax reports every internal step of a save at INFO; keeps the terminal to progress."""
    py_logging.getLogger("orbax").setLevel(py_logging.WARNING)
    py_logging.getLogger("absl").addFilter(_not_orbax_info)


TRAIN_ITEMS = ("model", "optimizer", "ema", "data", "meta")
ARRAY_ITEMS = ("model", "optimizer", "ema")

# Orbax splits the write of a replicated array across its replicas, through one eager slice
# per array shape, each compiled on first use. For small arrays that costs more than the
# write it shares out (a small MViT's fine-tuning state: 240 slice programs, seconds of
# compiling per process), so only slices of at least this many bytes are shared.
MIN_REPLICA_SLICE_BYTES = 1 << 20


def _array_items_registry() -> ocp.handlers.DefaultCheckpointHandlerRegistry:
    """Handlers for the array items: the standard pytree format, with the rule above."""
    arrays = ocp.type_handlers.create_type_handler_registry(
        (
            jax.Array,
            ocp.type_handlers.ArrayHandler(
                min_slice_bytes_for_replica_parallel=MIN_REPLICA_SLICE_BYTES
            ),
        )
    )
    registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
    for name in ARRAY_ITEMS:
        handler = ocp.PyTreeCheckpointHandler(type_handler_registry=arrays)
        registry.add(name, ocp.args.PyTreeSave, handler)
    return registry


# ---------------------------------------------------------------------------------------------
# Where a checkpoint lives.
# ---------------------------------------------------------------------------------------------


def _is_step_dir(path: str) -> bool:
    return files.exists(files.join(path, "_CHECKPOINT_METADATA")) or files.is_dir(
        files.join(path, "meta")
    )


def resolve(path: str, step: int | None = None) -> tuple[str, int]:
    """A checkpoint path -> (manager directory, step).

    ``path`` may be a run's workdir, its ``checkpoints`` directory (the latest or ``step``),
    or one step directory such as ``runs/x/checkpoints/3000``."""
    path = files.absolute(path).rstrip("/")
    if not files.is_dir(path):
        raise FileNotFoundError(f"No checkpoint at {path}: the directory does not exist.")
    parent, name = path.rsplit("/", 1)
    if _is_step_dir(path) and name.isdigit():
        return parent, int(name)
    if files.is_dir(files.join(path, "checkpoints")):
        path = files.join(path, "checkpoints")
    steps = ocp.utils.checkpoint_steps(path)  # committed steps only
    if not steps:
        raise FileNotFoundError(
            f"No committed checkpoint in {path} (directories ending in "
            "'.orbax-checkpoint-tmp*' are unfinished saves and never count)."
        )
    if step is None:
        return path, max(steps)
    if step not in steps:
        raise FileNotFoundError(f"Step {step} is not in {path}; it has steps {sorted(steps)}.")
    return path, step


# ---------------------------------------------------------------------------------------------
# The run's checkpoints: save policy, preemption, composite save and restore.
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Restored:
    step: int
    state: nnx.State  # (model, optimizer), placed in the target shardings
    rng: jax.Array
    meta: dict


def _key_to_json(key: jax.Array) -> dict:
    return {
        "impl": str(jax.random.key_impl(key)),
        "data": np.asarray(jax.random.key_data(key)).tolist(),
    }


def _key_from_json(obj: Mapping[str, Any]) -> jax.Array:
    return jax.random.wrap_key_data(np.asarray(obj["data"], np.uint32), impl=obj["impl"])


class SigtermWatcher:
    """Turns SIGTERM into a flag the loop polls, so the current step finishes and a
    checkpoint is written before the process exits.

    Only for a single process: on multi-host runs JAX's preemption sync service takes the
    signal and Orbax's preemption policy makes every host save at the same step."""

    def __init__(self):
        self.requested = False
        self._previous = None
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._handle)

    def _handle(self, signum, frame):
        logging.warning("SIGTERM received: saving a checkpoint after the current step.")
        self.requested = True

    def close(self):
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)
            self._previous = None


class RunCheckpoints:
    """The Orbax ``CheckpointManager`` of one run (``workdir/checkpoints``).

    Saves every ``every_steps`` steps, on preemption and (forced) at the end; keeps the
    latest ``keep_latest`` plus every step that is a multiple of ``keep_every`` (0: none).
    Saves are asynchronous: arrays are copied off the devices before ``save`` returns, and
    files are written in the background while training goes on."""

    def __init__(
        self,
        directory: str,
        *,
        every_steps: int,
        keep_latest: int = 3,
        keep_every: int = 0,
        async_save: bool = True,
    ):
        if every_steps < 1 or keep_latest < 1 or keep_every < 0:
            raise ValueError(
                "config.checkpoint needs every_steps >= 1 and keep_latest >= 1 (keep_every >= 0, "
                f"0 = none); got every_steps={every_steps}, keep_latest={keep_latest}, "
                f"keep_every={keep_every}."
            )
        keep: list[Any] = [policies.LatestN(keep_latest)]
        if keep_every:
            keep.append(policies.EveryNSteps(keep_every))
        self.directory = files.absolute(directory)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(
                save_decision_policy=policies.AnySavePolicy(
                    [
                        policies.FixedIntervalPolicy(every_steps),
                        policies.PreemptionCheckpointingPolicy(),
                    ]
                ),
                preservation_policy=policies.AnyPreservationPolicy(keep),
                enable_async_checkpointing=async_save,
                cleanup_tmp_directories=True,
                create=True,
            ),
            handler_registry=_array_items_registry(),
        )

    @classmethod
    def from_config(cls, workdir: str, config: ml_collections.ConfigDict) -> "RunCheckpoints":
        c = config.checkpoint
        return cls(
            files.join(workdir, "checkpoints"),
            every_steps=int(c.every_steps),
            keep_latest=int(c.keep_latest),
            keep_every=int(c.get("keep_every") or 0),
            async_save=bool(c.get("async_save", True)),
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def reached_preemption(self, step: int) -> bool:
        return self.manager.reached_preemption(step)

    def save(
        self,
        step: int,
        state: nnx.State,
        *,
        data: Any,
        rng: jax.Array,
        config: ml_collections.ConfigDict,
        force: bool = False,
    ) -> bool:
        """Saves if the policy says so (or ``force``); returns whether a save started."""
        if not force and not self.manager.should_save(step):
            return False
        if force and step in self.manager.all_steps():
            return False
        meta = {
            "format_version": FORMAT_VERSION,
            "step": int(step),
            "rng": _key_to_json(rng),
            "config": json.loads(config.to_json_best_effort()),
        }
        items = dict(
            model=ocp.args.PyTreeSave(nnx.to_pure_dict(state[0])),
            optimizer=ocp.args.PyTreeSave(nnx.to_pure_dict(state[1])),
            meta=ocp.args.JsonSave(meta),
        )
        if len(state) > 2:  # the weight EMA of a fine-tuning run
            items["ema"] = ocp.args.PyTreeSave(nnx.to_pure_dict(state[2]))
        if data is not None:
            import grain  # only when a data iterator is checkpointed

            items["data"] = grain.checkpoint.CheckpointSave(data)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=True)

    def restore(
        self,
        abstract_state: nnx.State,
        *,
        data: Any = None,
        step: int | None = None,
        global_batch: int | None = None,
    ) -> Restored:
        return restore_run(
            self.directory, abstract_state, data=data, step=step, global_batch=global_batch
        )

    def wait_until_finished(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def restore_run(
    path: str,
    abstract_state: nnx.State,
    *,
    data: Any = None,
    step: int | None = None,
    global_batch: int | None = None,
) -> Restored:
    """Restores model, optimizer, RNG and (if ``data`` is given) the data iterator in place.

    ``abstract_state`` is the (model, optimizer) state as ``jax.ShapeDtypeStruct`` leaves with
    the target ``sharding`` set: arrays are read straight into their shards, on a mesh of any
    size (a run saved on 8 devices resumes on 4). The data iterator's position carries over
    to another process count, worker count or ``global_batch`` (this run's
    ``config.input.batch_size``; None: unchanged) as ``maskfeat_jax.data.positions`` says."""
    directory, step = resolve(path, step)
    present = _items(directory, step)
    missing = {"model", "optimizer", "meta"} - present
    if missing:
        raise ValueError(
            f"{directory}/{step} is not a training checkpoint (no {sorted(missing)}); "
            "a weights-only checkpoint (e.g. from maskfeat_jax.import_torch) goes in "
            "config.init_from, not config.resume."
        )
    items = dict(
        model=ocp.args.StandardRestore(nnx.to_pure_dict(abstract_state[0])),
        optimizer=ocp.args.StandardRestore(nnx.to_pure_dict(abstract_state[1])),
        meta=ocp.args.JsonRestore(),
    )
    if len(abstract_state) > 2:
        if "ema" not in present:
            raise ValueError(
                f"{directory}/{step} has no weight EMA but this config keeps one; resume "
                "with config.optim.ema_decay=0 or start from its weights with config.init_from."
            )
        items["ema"] = ocp.args.StandardRestore(nnx.to_pure_dict(abstract_state[2]))
    if data is not None:
        if "data" not in present:
            raise ValueError(f"{directory}/{step} has no data iterator state to resume.")
        from maskfeat_jax.data import positions  # only when a data iterator is restored

        data_restore = positions.restore_or_carry_over(
            files.join(directory, str(step)), data, global_batch=global_batch
        )
        if data_restore is not None:  # else the position is already set in ``data``
            items["data"] = data_restore
    try:
        with ocp.Checkpointer(ocp.CompositeCheckpointHandler()) as ckptr:
            out = ckptr.restore(files.join(directory, str(step)), args=ocp.args.Composite(**items))
    except (ValueError, KeyError) as e:
        raise ValueError(
            f"Checkpoint {directory}/{step} does not fit this config's model/optimizer "
            f"(different variant, sizes or optimizer?): {e}"
        ) from e
    state = jax.tree.map(lambda x: x, abstract_state)  # fresh Variables to fill in
    nnx.replace_by_pure_dict(state[0], out.model)
    nnx.replace_by_pure_dict(state[1], out.optimizer)
    if len(abstract_state) > 2:
        nnx.replace_by_pure_dict(state[2], out.ema)
    return Restored(step=step, state=state, rng=_key_from_json(out.meta["rng"]), meta=out.meta)


# ---------------------------------------------------------------------------------------------
# Weights only: what init_from, the exporter and the importer read and write.
# ---------------------------------------------------------------------------------------------


def load_weights(path: str, step: int | None = None) -> tuple[dict[str, np.ndarray], dict]:
    """The ``model`` item of a checkpoint as flat host arrays {'blocks/0/attn/qkv/kernel': ...}
    plus its ``meta`` (with the config that made it). Needs no mesh and no model: arrays come
    back whole as numpy, whatever mesh saved them."""
    directory, step = resolve(path, step)
    step_dir = files.join(directory, str(step))
    present = _items(directory, step)
    if "model" not in present:
        raise ValueError(f"{step_dir} has no 'model' item; is it a maskfeat_jax checkpoint?")
    model_dir = files.join(step_dir, "model")
    tree = ocp.StandardCheckpointer().metadata(model_dir).item_metadata.tree
    restore_args = jax.tree.map(lambda _: ocp.RestoreArgs(restore_type=np.ndarray), tree)
    model = ocp.PyTreeCheckpointer().restore(
        model_dir, args=ocp.args.PyTreeRestore(restore_args=restore_args)
    )
    flat = traverse_util.flatten_dict(_plain(model), sep="/")
    return {k: np.asarray(v) for k, v in flat.items()}, read_meta(directory, step)


def read_meta(path: str, step: int | None = None) -> dict:
    """The ``meta`` item (step, RNG, the config that made it) of a checkpoint, without reading
    any array; empty if the checkpoint has none."""
    directory, step = resolve(path, step)
    if "meta" not in _items(directory, step):
        return {}
    return dict(
        ocp.Checkpointer(ocp.JsonCheckpointHandler()).restore(
            files.join(directory, str(step), "meta"), args=ocp.args.JsonRestore()
        )
    )


def _items(directory: str, step: int) -> set[str]:
    step_dir = files.join(directory, str(step))
    return {
        name
        for name in (p.name for p in epath.Path(step_dir).iterdir())
        if not name.startswith("_") and files.is_dir(files.join(step_dir, name))
    }


def _plain(tree: Any) -> Any:
    """Nested mappings with string keys (Orbax returns ints of nnx paths as strings)."""
    if isinstance(tree, Mapping):
        return {str(k): _plain(v) for k, v in tree.items()}
    return tree


def save_weights(
    directory: str, model_state: nnx.State, meta: Mapping[str, Any], step: int = 0
) -> str:
    """Writes a weights-only checkpoint (``model`` + ``meta``) for ``config.init_from``."""
    meta = {"format_version": FORMAT_VERSION, "step": int(step), **meta}
    directory = files.absolute(directory)
    with ocp.CheckpointManager(
        directory, options=ocp.CheckpointManagerOptions(create=True)
    ) as manager:
        if step in manager.all_steps():
            raise FileExistsError(
                f"{directory} already has step {step}; choose another --out directory."
            )
        manager.save(
            step,
            args=ocp.args.Composite(
                model=ocp.args.StandardSave(nnx.to_pure_dict(model_state)),
                meta=ocp.args.JsonSave(dict(meta)),
            ),
        )
        manager.wait_until_finished()
    return files.join(directory, str(step))


def config_from_meta(meta: Mapping[str, Any]) -> ml_collections.ConfigDict:
    if "config" not in meta:
        raise ValueError("This checkpoint does not record the config that made it; pass --config.")
    return ml_collections.ConfigDict(meta["config"])
