r"""Classification evaluation: top-1/top-5 over a whole eval split, exact across hosts.

Images: one view per image (resize ``image_size / 0.875`` bicubic, centre crop). Video:
``num_clips`` temporal clips x ``num_crops`` spatial crops per video; each view's softmax is
summed per video (SlowFast's ``ENSEMBLE_METHOD: sum``; same ranking as the average), then
top-k over videos. Every host reads its share of the views, padded with invalid entries so
that all hosts run the same number of steps; the jitted step returns each batch's
probabilities replicated, so every host sees every view and aggregates the same numbers.
Results go to ``workdir/eval/<split>_step<N>.json`` and ``workdir/results.json``.

Examples that give no valid view (unreadable, or left out by the config) are dropped from
the accuracy, whose denominator is the examples actually evaluated; the log line and the
results say how many examples and views were used out of how many, and name the dropped
ones with their reasons (gathered from every host).

Standalone: ``maskfeat-eval --config configs/x.py --workdir DIR`` (or ``python -m
maskfeat_jax.evaluate ...``) evaluates the latest checkpoint of ``DIR`` (or ``--checkpoint
PATH``); the command is ``commands/evaluate.py``. The ``Evaluator`` is given the jitted
predict function and the shardings; it never builds a model itself.
"""

from __future__ import annotations

import dataclasses
import json
import runpy
import time
from typing import Any, Callable, Iterable, Mapping

import jax
import ml_collections
import numpy as np
from absl import logging
from flax import nnx
from jax.experimental import multihost_utils

from maskfeat_jax import files, objectives, sharding
from maskfeat_jax.data import skipping, streams


@dataclasses.dataclass
class ViewAccumulator:
    """Sums softmax over the views of each example; counts each example once.

    ``add`` takes a batch of views: probabilities [B, C], the example id of each view, its
    label and whether it is real (padding and unreadable inputs are not)."""

    num_classes: int
    sums: dict[int, np.ndarray] = dataclasses.field(default_factory=dict)
    labels: dict[int, int] = dataclasses.field(default_factory=dict)
    views: dict[int, int] = dataclasses.field(default_factory=dict)
    invalid_views: int = 0
    # Every view of a real example (id >= 0; padding is -1), valid or not.
    all_views: dict[int, int] = dataclasses.field(default_factory=dict)

    def add(self, probs: np.ndarray, ids: np.ndarray, labels: np.ndarray, valid: np.ndarray):
        probs = np.asarray(probs, np.float64)
        if probs.ndim != 2 or probs.shape[1] != self.num_classes:
            raise ValueError(f"probs must be [B, {self.num_classes}], got {probs.shape}")
        for p, i, y, ok in zip(probs, np.asarray(ids), np.asarray(labels), np.asarray(valid)):
            if int(i) >= 0:
                self.all_views[int(i)] = self.all_views.get(int(i), 0) + 1
            if not ok:
                self.invalid_views += 1
                continue
            i, y = int(i), int(y)
            if i in self.labels and self.labels[i] != y:
                raise ValueError(f"example {i} has views with labels {self.labels[i]} and {y}")
            self.sums[i] = self.sums.get(i, 0.0) + p
            self.labels[i] = y
            self.views[i] = self.views.get(i, 0) + 1

    def result(self, ks: Iterable[int] = (1, 5)) -> dict[str, float]:
        ids = sorted(self.sums)
        out: dict[str, float] = {
            "num_examples": len(ids),
            "num_views": int(sum(self.views.values())),
            "invalid_views": self.invalid_views,
            "examples_total": len(self.all_views),
            "views_total": int(sum(self.all_views.values())),
        }
        if not ids:
            return out
        scores = np.stack([self.sums[i] for i in ids])
        labels = np.asarray([self.labels[i] for i in ids])
        # Ties broken by the lower class index, as a stable argsort of the negated scores.
        order = np.argsort(-scores, axis=1, kind="stable")
        for k in ks:
            if k <= self.num_classes:
                hit = (order[:, :k] == labels[:, None]).any(axis=1)
                out[f"top{k}"] = float(hit.mean())
        counts = np.bincount(list(self.views.values()))
        out["views_per_example_min"] = int(np.nonzero(counts)[0].min())
        out["views_per_example_max"] = int(len(counts) - 1)
        return out

    def dropped(self) -> list[int]:
        """The examples that had views but no valid one."""
        return sorted(set(self.all_views) - set(self.sums))


def eval_split(config: ml_collections.ConfigDict) -> str:
    return config.eval.get("split") or "validation"


def make_predict(graphdef: nnx.GraphDef, config, mesh, state_shardings, batch_sharding):
    """Jitted (state, batch) -> softmax of the model (and of the EMA model when the state
    carries one), with the batch's ids/labels/valid, all replicated to every host."""
    mean, std = config.input.mean, config.input.std

    def predict(state, batch):
        parts = nnx.merge(graphdef, state)
        images = objectives.normalize(batch["image"], mean, std)
        out = {k: batch[k] for k in ("id", "label", "valid")}
        out["probs"] = jax.nn.softmax(parts[0](images), axis=-1)
        if len(parts) > 2:
            out["probs_ema"] = jax.nn.softmax(parts[2](images), axis=-1)
        return out

    return jax.jit(
        predict,
        in_shardings=(state_shardings, batch_sharding),
        out_shardings=sharding.replicated(mesh),
    )


def run_eval(
    predict: Callable,
    state: Any,
    batches: Iterable[Mapping[str, np.ndarray]],
    *,
    id_key: str,
    num_classes: int,
    batch_sharding,
) -> dict[str, float]:
    """Feeds every batch through ``predict`` and aggregates; keys ``top1``, ``top5``, ... and
    ``ema_top1``, ... when the state has an EMA model."""
    plain = ViewAccumulator(num_classes)
    ema = ViewAccumulator(num_classes)
    skipped = 0
    reasons: dict[int, dict[str, str]] = {}  # this host's: example id -> kind, reason
    for host_batch in batches:
        skipped += int(np.sum(host_batch.get("skipped", 0)))
        _collect_reasons(host_batch, id_key, reasons)
        feed = {
            "image": host_batch["image"],
            "id": np.asarray(host_batch[id_key], np.int32),
            "label": np.asarray(host_batch["label"], np.int32),
            "valid": np.asarray(host_batch["valid"], bool),
        }
        out = jax.device_get(predict(state, sharding.to_global(feed, batch_sharding)))
        plain.add(out["probs"], out["id"], out["label"], out["valid"])
        if "probs_ema" in out:
            ema.add(out["probs_ema"], out["id"], out["label"], out["valid"])
    result = plain.result()
    if ema.sums:
        result.update({f"ema_{k}": v for k, v in ema.result().items() if k.startswith("top")})
    result["unreadable_inputs_this_host"] = skipped
    reasons = _from_all_hosts(reasons)
    result["dropped"] = [
        {"index": i, **reasons.get(i, {"kind": "unknown", "reason": "no valid view"})}
        for i in plain.dropped()
    ]
    result["num_dropped"] = len(result["dropped"])
    result["summary"] = coverage_line(result, "videos" if id_key == "video_index" else "images")
    return result


def _collect_reasons(host_batch: Mapping[str, Any], id_key: str, out: dict) -> None:
    """Why this host's invalid views of real examples are invalid (first reason per id)."""
    valid = np.asarray(host_batch["valid"], bool).reshape(-1)
    if valid.all():
        return
    ids = np.asarray(host_batch[id_key]).reshape(-1)
    size = len(ids)
    texts = np.asarray(host_batch.get("skipped_ids", [""] * size)).reshape(-1)
    excluded = np.asarray(host_batch.get("excluded", np.zeros(size))).reshape(-1)
    for i, ok, text, left_out in zip(ids, valid, texts, excluded):
        if ok or int(i) < 0 or int(i) in out:
            continue
        _, reason = skipping.record_key(str(text).strip())
        kind = "excluded" if left_out else "unreadable"
        out[int(i)] = {"kind": kind, "reason": reason or "no valid view"}


def _from_all_hosts(local: dict[int, dict[str, str]]) -> dict[int, dict[str, str]]:
    """The union of every host's ``local`` (each host reads its own share of the views)."""
    if jax.process_count() == 1:
        return local
    data = np.frombuffer(json.dumps(local).encode(), np.uint8)
    sizes = np.asarray(multihost_utils.process_allgather(np.asarray([data.size], np.int32)))
    padded = np.zeros(int(sizes.max()), np.uint8)
    padded[: data.size] = data
    rows = np.asarray(multihost_utils.process_allgather(padded))
    merged: dict[int, dict[str, str]] = {}
    for size, row in zip(sizes.reshape(-1), rows.reshape(len(sizes.reshape(-1)), -1)):
        for key, value in json.loads(bytes(row[: int(size)]).decode()).items():
            merged.setdefault(int(key), value)
    return merged


def coverage_line(result: Mapping[str, Any], noun: str) -> str:
    """The coverage of a ``run_eval`` result in one line: `Evaluated 20 of 23 videos (200 of
    230 views); 3 dropped: x.mp4 (truncated ...), ...`."""
    line = (
        f"Evaluated {result['num_examples']} of {result['examples_total']} {noun} "
        f"({result['num_views']} of {result['views_total']} views)"
    )
    dropped = result.get("dropped", [])
    if not dropped:
        return line + "; none dropped"
    named = skipping.describe_records({f"record {d['index']}": d["reason"] for d in dropped})
    return f"{line}; {len(dropped)} dropped: {named}"


def write_results(workdir: str, split: str, step: int, result: Mapping[str, Any]) -> str:
    """``eval/<split>_step<N>.json`` and the latest in ``results.json`` (host 0, atomic)."""
    if jax.process_index() != 0:
        return ""
    record = {"split": split, "step": int(step), **result}
    path = files.join(workdir, "eval", f"{split}_step{step}.json")
    for target in (path, files.join(workdir, "results.json")):
        files.write_text(target, json.dumps(record, indent=2, sort_keys=True))
    return path


class Evaluator:
    """Evaluation of a state on the config's eval split with a jitted ``predict`` (see
    ``make_predict``); ``rules`` are the sharding rules the batch is placed by."""

    def __init__(
        self,
        config: ml_collections.ConfigDict,
        spec,
        predict: Callable,
        batch_sharding: jax.sharding.NamedSharding,
        rules: Mapping[str, Any],
        workdir: str | None,
    ):
        self.config, self.spec, self.workdir = config, spec, workdir
        self.predict, self.batch_sharding = predict, batch_sharding
        self.batch_size = int(config.eval.get("batch_size") or config.input.batch_size)
        sharding.check_global_batch(self.batch_size, batch_sharding.mesh, rules)
        if self.batch_size % jax.process_count():
            raise ValueError(
                f"config.eval.batch_size={self.batch_size} must split evenly over "
                f"{jax.process_count()} hosts."
            )

    def __call__(self, state, step: int) -> dict[str, float]:
        t0 = time.perf_counter()
        split = eval_split(self.config)
        ds, id_key = streams.eval_stream(
            self.config,
            self.spec,
            self.workdir,
            per_host_batch=self.batch_size // jax.process_count(),
            split=split,
            views=self.config.eval,
        )
        result = run_eval(
            self.predict,
            state,
            ds,
            id_key=id_key,
            num_classes=self.config.model.num_classes,
            batch_sharding=self.batch_sharding,
        )
        result["seconds"] = time.perf_counter() - t0
        if self.workdir:
            write_results(self.workdir, split, step, result)
        logging.info(
            "eval %s at step %d: %s. %s.",
            split,
            step,
            ", ".join(f"{k} {v:.4g}" for k, v in result.items() if isinstance(v, float)),
            result["summary"],
        )
        for d in result["dropped"]:
            logging.warning(
                "eval %s: dropped record %d (%s): %s", split, d["index"], d["kind"], d["reason"]
            )
        return result


if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.evaluate", run_name="__main__", alter_sys=True)
