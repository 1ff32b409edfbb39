r"""Does MaskFeat pretraining help? A small, real experiment on scikit-learn's digits.

For each seed: pretrain the digits ViT (``configs/digits.py``) with HOG targets and with
pixel targets; then, from each pretraining and from random init, fine-tune on 20 labelled
images per class and train a linear probe on the frozen encoder; evaluate both on the 539
test images. Same model, budget and schedule for every row; only the initial weights differ.
The table (mean and standard deviation over seeds, and every seed's value) is printed and
written to ``WORKDIR/results.md`` and ``WORKDIR/results.json``. Runs are resumable: rerun the
command and finished pieces are read back.

  maskfeat-digits --workdir runs/digits [--seeds 0,1,2]

(also ``python -m maskfeat_jax.experiments.digits``; the command is ``commands/digits.py``).

``--hog_inputs pixels,normalized`` adds a HOG-target row whose targets are the HOG of the
normalized input (``config.hog.input``, as SlowFast) instead of the uint8 pixels;
``--rows hog`` restricts the comparison to the HOG-target rows and ``--noprobe`` skips the
linear probes. For example, HOG of pixels vs HOG of the normalized input:

  python -m maskfeat_jax.experiments.digits --workdir runs/digits --rows hog \
      --hog_inputs pixels,normalized --seeds 0,1
"""

from __future__ import annotations

import dataclasses
import json
import os
import runpy
import time

import numpy as np
from absl import logging

from maskfeat_jax import checkpoint, linear_probe, loop, optim
from maskfeat_jax.experiments import digits_configs


@dataclasses.dataclass(frozen=True)
class Study:
    """What to run: seeds, rows (see ``inits``), HOG inputs, probes, schedule overrides."""

    workdir: str
    seeds: tuple[int, ...] = (0, 1, 2)
    rows: tuple[str, ...] = ("random", "hog", "pixels")
    hog_inputs: tuple[str, ...] = ("pixels",)
    probe: bool = True
    pretrain_epochs: int | None = None  # None: the config's; warmup keeps its share
    finetune_epochs: int | None = None


@dataclasses.dataclass(frozen=True)
class Init:
    """One row: its label, the pretraining target (None: random init) and its run-dir key."""

    name: str
    target: str | None = None
    hog_input: str = "pixels"

    @property
    def key(self) -> str:
        # The pixels-input HOG row keeps its original directories, so old runs resume.
        if self.target == "hog" and self.hog_input != "pixels":
            return f"hog_{self.hog_input}"
        return {None: "random", "hog": "HOG_target", "pixels": "pixel_target"}[self.target]


def inits(rows, hog_inputs) -> list[Init]:
    """The rows to run, in table order."""
    unknown = set(rows) - {"random", "hog", "pixels"}
    if unknown:
        raise ValueError(f"unknown --rows {sorted(unknown)}; use random, hog, pixels.")
    chosen = []
    if "random" in rows:
        chosen.append(Init("random"))
    if "hog" in rows:
        for source in hog_inputs:
            label = "MaskFeat, HOG target"
            if source != "pixels":
                label += f" ({source} input)"
            chosen.append(Init(label, "hog", source))
    if "pixels" in rows:
        chosen.append(Init("MaskFeat, pixel target", "pixels"))
    return chosen


def _read(path):
    if os.path.exists(path):
        with open(path) as f:
            return json.load(f)
    return None


def _set_epochs(config, epochs: int) -> None:
    """A shorter or longer schedule keeps its warmup's share of it."""
    config.optim.warmup_epochs = config.optim.warmup_epochs * epochs / config.total_epochs
    config.total_epochs = epochs


def _pretrain(seed: int, init: Init, study: Study) -> str:
    workdir = study.workdir
    key = init.target if init.hog_input == "pixels" else init.key
    run_dir = os.path.join(workdir, f"seed{seed}", f"pretrain_{key}")
    config = digits_configs.pretrain(init.target)
    config.hog.input = init.hog_input
    config.seed = seed
    if study.pretrain_epochs:
        _set_epochs(config, study.pretrain_epochs)
    loop.run(config, run_dir)  # returns at once when its last checkpoint exists
    return run_dir


def _finetune(seed: int, init_from: str | None, name: str, study: Study) -> float:
    workdir = study.workdir
    run_dir = os.path.join(workdir, f"seed{seed}", f"finetune_{name}")
    done = _read(os.path.join(run_dir, "results.json"))
    config = digits_configs.finetune()
    if study.finetune_epochs:
        _set_epochs(config, study.finetune_epochs)
    if done is None or done["step"] < optim.schedule_steps(config)[0]:
        config.seed = seed
        config.init_from = init_from or ""
        loop.run(config, run_dir)
        done = _read(os.path.join(run_dir, "results.json"))
    return float(done["top1"])


def _probe(seed: int, init_from: str | None, name: str, workdir: str) -> float:
    run_dir = os.path.join(workdir, f"seed{seed}", f"probe_{name}")
    done = _read(os.path.join(run_dir, "linear_probe.json"))
    if done is None:
        config = digits_configs.probe()
        config.seed = seed
        config.init_from = init_from or ""
        done = linear_probe.run(config, run_dir)
    return float(done["top1"])


def table(results: dict) -> str:
    seeds = results["seeds"]
    kinds = [k for k in ("finetune", "probe") if results[k]]
    header = {"finetune": "fine-tune top-1 (%)", "probe": "linear probe top-1 (%)"}
    lines = [
        "| initial weights | " + " | ".join(header[k] for k in kinds) + " |",
        "|---" * (len(kinds) + 1) + "|",
    ]
    for name in results["finetune"]:
        cells = []
        for kind in kinds:
            values = 100 * np.asarray([results[kind][name][str(s)] for s in seeds])
            per_seed = ", ".join(f"{v:.1f}" for v in values)
            cells.append(
                f"{values.mean():.1f} ± {values.std(ddof=1) if len(values) > 1 else 0:.1f}"
                f" ({per_seed})"
            )
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def run(study: Study) -> str:
    """Runs (or reads back) every piece of the study; returns the results table."""
    checkpoint.quiet_orbax_logging()
    workdir = study.workdir
    os.makedirs(workdir, exist_ok=True)
    results = {"seeds": list(study.seeds), "finetune": {}, "probe": {}}
    start = time.perf_counter()
    rows = inits(study.rows, study.hog_inputs)
    for seed in study.seeds:
        for init in rows:
            init_from = _pretrain(seed, init, study) if init.target else None
            ft = _finetune(seed, init_from, init.key, study)
            results["finetune"].setdefault(init.name, {})[str(seed)] = ft
            logging.info("seed %d, %s: fine-tune %.4f", seed, init.name, ft)
            if study.probe:
                lp = _probe(seed, init_from, init.key, workdir)
                results["probe"].setdefault(init.name, {})[str(seed)] = lp
                logging.info("seed %d, %s: probe %.4f", seed, init.name, lp)
    results["minutes"] = (time.perf_counter() - start) / 60
    text = table(results)
    with open(os.path.join(workdir, "results.json"), "w") as f:
        json.dump(results, f, indent=2)
    with open(os.path.join(workdir, "results.md"), "w") as f:
        f.write(text + "\n")
    return text


if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.digits", run_name="__main__", alter_sys=True)
