"""One process of a multi-process CPU run for the multi-host tests.

Joins the run through ``maskfeat_jax.distributed.initialize`` (arguments, or the MASKFEAT_*
variables when an argument is left out), trains the tiny pretraining config of
tests.support.steps on the global mesh (parameters sharded over every process's devices),
feeding only this process's half of every global batch. Writes the per-step losses and the
whole state (model and optimizer, gathered) to ``OUT/process_<i>.npz``. (Checkpoints and
resumes of multi-process runs go through the training command: tests/multihost/test_faults.py.)
"""

import argparse
import os
import resource
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("--coordinator_address")
    p.add_argument("--num_processes", type=int)
    p.add_argument("--process_id", type=int)
    p.add_argument("--cpu_devices", type=int, default=4)
    p.add_argument("--timeout", type=int, default=60)
    p.add_argument("--out", required=True)
    p.add_argument("--steps", type=int, required=True)
    return p.parse_args()


def host_batches(config, process_id, num_processes):
    """A grain iterator over this process's half of global batch 0, 1, 2, ..."""
    import grain

    from tests.support.steps import random_batch

    per_host = config.input.batch_size // num_processes
    rows = slice(process_id * per_host, (process_id + 1) * per_host)

    def host_slice(index):
        return {k: v[rows] for k, v in random_batch(config, int(index)).items()}

    dataset = grain.MapDataset.range(1_000).map(host_slice)
    return iter(dataset.to_iter_dataset(grain.ReadOptions(num_threads=1, prefetch_buffer_size=2)))


def gathered(state, mesh):
    """Every array of the state, whole, on this host: one replicating jit for all of them."""
    import jax
    import numpy as np
    from flax import nnx

    from maskfeat_jax import sharding

    flat = {"/".join(map(str, k)): v.get_value() for k, v in nnx.to_flat_state(state)}
    flat = {
        k: jax.random.key_data(v) if jax.dtypes.issubdtype(v.dtype, jax.dtypes.prng_key) else v
        for k, v in flat.items()
    }
    whole = jax.jit(lambda t: t, out_shardings=sharding.replicated(mesh))(flat)
    return {k: np.asarray(v) for k, v in whole.items()}


def main():
    args = parse_args()
    # JAX aborts a process whose peers died (when the test ends a failed run): no core files.
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    sys.path.insert(0, ROOT)
    from maskfeat_jax import distributed

    distributed.initialize(
        args.coordinator_address,
        args.num_processes,
        args.process_id,
        timeout_seconds=args.timeout,
        cpu_devices=args.cpu_devices,
    )
    # Only now anything that touches devices.
    import jax
    import numpy as np

    from maskfeat_jax import sharding
    from maskfeat_jax import trainer as trainer_lib
    from tests.support.steps import tiny_config

    process, processes = jax.process_index(), jax.process_count()
    config = tiny_config()  # global batch 8 on a (data 2, fsdp 4) mesh over all processes
    trainer = trainer_lib.build_trainer(config)

    # What to_global assumes of the mesh: process i's devices hold rows i*B/n .. (i+1)*B/n.
    batch_shape = trainer.abstract_batch()["image"].shape
    held = {
        (idx[0].start or 0, idx[0].stop or batch_shape[0])
        for idx in trainer.batch_sharding.addressable_devices_indices_map(batch_shape).values()
    }
    per_host = batch_shape[0] // processes
    rows = (min(lo for lo, _ in held), max(hi for _, hi in held))
    assert rows == (process * per_host, (process + 1) * per_host), (process, sorted(held))

    data = host_batches(config, process, processes)
    rng = jax.random.key(config.seed)
    state = trainer.init(rng)
    step_rng = sharding.replicate_key(rng, trainer.mesh)  # as the training loop does
    compiled = trainer.compile()  # the ahead-of-time step that the training loop uses
    losses = []
    for _ in range(args.steps):
        batch = sharding.to_global(next(data), trainer.batch_sharding)
        state, metrics = compiled(state, batch, step_rng)
        losses.append(float(metrics["loss"]))
    out = {f"final/{k}": v for k, v in gathered(state, trainer.mesh).items()}
    os.makedirs(args.out, exist_ok=True)
    np.savez(
        os.path.join(args.out, f"process_{process}.npz"),
        losses=np.asarray(losses, np.float64),
        counts=np.asarray([processes, jax.device_count(), jax.local_device_count()]),
        **out,
    )
    print(f"process {process} of {processes}: losses {losses}", flush=True)


if __name__ == "__main__":
    main()
