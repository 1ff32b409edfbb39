r"""Does MaskFeat pretraining help? A small, real experiment on scikit-learn's digits.

For each seed: pretrain the digits ViT (``configs/digits.py``) with HOG targets and with
pixel targets; then, from each pretraining and from random init, fine-tune on 20 labelled
images per class and train a linear probe on the frozen encoder; evaluate both on the 539
test images. Same model, budget and schedule for every row; only the initial weights differ.
The table (mean and standard deviation over seeds, and every seed's value) is printed and
written to ``WORKDIR/results.md`` and ``WORKDIR/results.json``. Runs are resumable: rerun the
command and finished pieces are read back.

  python -m maskfeat_jax.experiments.digits --workdir runs/digits [--seeds 0,1,2]
"""

from __future__ import annotations

import json
import os
import time

import numpy as np
from absl import app, flags, logging

_WORKDIR = flags.DEFINE_string("workdir", None, "Where runs and the results go.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds (each one is a full repeat).")
_PRETRAIN_EPOCHS = flags.DEFINE_integer("pretrain_epochs", None, "Override (default: config).")
_FINETUNE_EPOCHS = flags.DEFINE_integer("finetune_epochs", None, "Override (default: config).")

INITS = (("random", None), ("MaskFeat, HOG target", "hog"), ("MaskFeat, pixel target", "pixels"))


def _read(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _pretrain(seed: int, target: str, workdir: str) -> str:
    from configs import digits
    from maskfeat_jax import train

    run_dir = os.path.join(workdir, f"seed{seed}", f"pretrain_{target}")
    config = digits.pretrain(target)
    config.seed = seed
    if _PRETRAIN_EPOCHS.value:
        config.total_epochs = _PRETRAIN_EPOCHS.value
    train.run(config, run_dir)  # returns at once when its last checkpoint exists
    return run_dir


def _finetune(seed: int, init_from: str | None, name: str, workdir: str) -> float:
    from configs import digits
    from maskfeat_jax import train

    run_dir = os.path.join(workdir, f"seed{seed}", f"finetune_{name}")
    done = _read(os.path.join(run_dir, "results.json"))
    config = digits.finetune()
    if _FINETUNE_EPOCHS.value:
        config.total_epochs = _FINETUNE_EPOCHS.value
    if done is None or done["step"] < train.schedule_steps(config)[0]:
        config.seed = seed
        config.init_from = init_from or ""
        train.run(config, run_dir)
        done = _read(os.path.join(run_dir, "results.json"))
    return float(done["top1"])


def _probe(seed: int, init_from: str | None, name: str, workdir: str) -> float:
    from configs import digits
    from maskfeat_jax import linear_probe

    run_dir = os.path.join(workdir, f"seed{seed}", f"probe_{name}")
    done = _read(os.path.join(run_dir, "linear_probe.json"))
    if done is None:
        config = digits.probe()
        config.seed = seed
        config.init_from = init_from or ""
        done = linear_probe.run(config, run_dir)
    return float(done["top1"])


def table(results: dict) -> str:
    seeds = results["seeds"]
    lines = [
        "| initial weights | fine-tune top-1 (%) | linear probe top-1 (%) |",
        "|---|---|---|",
    ]
    for name, _ in INITS:
        cells = []
        for kind in ("finetune", "probe"):
            values = 100 * np.asarray([results[kind][name][str(s)] for s in seeds])
            per_seed = ", ".join(f"{v:.1f}" for v in values)
            cells.append(
                f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0:.1f}"
                f" ({per_seed})"
            )
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


def main(argv):
    del argv
    from maskfeat_jax import checkpoint

    checkpoint.quiet_orbax_logging()
    workdir = _WORKDIR.value
    seeds = [int(s) for s in _SEEDS.value]
    os.makedirs(workdir, exist_ok=True)
    results = {"seeds": seeds, "finetune": {}, "probe": {}}
    start = time.perf_counter()
    for seed in seeds:
        for name, target in INITS:
            init_from = _pretrain(seed, target, workdir) if target else None
            key = name.split(",")[-1].strip().replace(" ", "_")
            ft = _finetune(seed, init_from, key, workdir)
            lp = _probe(seed, init_from, key, workdir)
            results["finetune"].setdefault(name, {})[str(seed)] = ft
            results["probe"].setdefault(name, {})[str(seed)] = lp
            logging.info("seed %d, %s: fine-tune %.4f, probe %.4f", seed, name, ft, lp)
    results["minutes"] = (time.perf_counter() - start) / 60
    text = table(results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    flags.mark_flags_as_required(["workdir"])
    app.run(main)
