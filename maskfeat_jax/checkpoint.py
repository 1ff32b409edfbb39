"""Orbax checkpoints of the training state (model + optimizer) in ``workdir/checkpoints``.

Orbax writes each step to a temporary directory and commits it atomically, so a crash never
leaves a half-written step that looks valid. Restoring takes an abstract state whose leaves
carry the target shardings, so arrays load straight into their place on the mesh.
"""

from __future__ import annotations

import os
from typing import Any

import orbax.checkpoint as ocp
from flax import nnx


def _manager(directory: str, max_to_keep: int = 3) -> ocp.CheckpointManager:
    return ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True),
    )


def save(directory: str, step: int, state: nnx.State) -> str:
    """Saves ``state`` as step ``step`` and waits until it is committed; returns its path."""
    with _manager(directory) as manager:
        manager.save(step, args=ocp.args.StandardSave(state))
        manager.wait_until_finished()
    return os.path.join(os.path.abspath(directory), str(step))


def latest_step(directory: str) -> int | None:
    if not os.path.isdir(directory):
        return None
    with _manager(directory) as manager:
        return manager.latest_step()


def restore(directory: str, abstract_state: Any, step: int | None = None) -> tuple[int, Any]:
    """Restores ``step`` (default: the latest) into the structure, dtypes and shardings of
    ``abstract_state`` (a tree of ``jax.ShapeDtypeStruct`` with ``sharding`` set)."""
    with _manager(directory) as manager:
        step = manager.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"No committed checkpoint in {directory}.")
        return step, manager.restore(step, args=ocp.args.StandardRestore(abstract_state))
