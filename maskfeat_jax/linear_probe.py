r"""Linear probing: a cheap readout of what a frozen encoder has learned.

The encoder (pretraining form, weights from ``config.init_from``; random when empty) maps
every example of two splits to the mean of its last-block patch tokens (evaluation views:
resize + centre crop; for clips every test view). The features are standardized with the
training split's mean and variance (a BatchNorm without affine parameters, as MAE's probe)
and a linear softmax classifier is trained on them with optax AdamW and a cosine schedule;
top-1/top-5 on the eval split (views of a clip averaged) go to ``workdir/linear_probe.json``.

  maskfeat-probe --config configs/digits.py:probe \
      --config.init_from=runs/digits/pretrain --workdir runs/digits/probe

(also ``python -m maskfeat_jax.linear_probe``; the command is ``commands/probe.py``).

``config.probe``: num_classes, train_split, eval_split, resize_size (images), epochs,
batch_size, learning_rate, weight_decay; clips also short_side, num_clips, num_crops.
"""

from __future__ import annotations

import json
import runpy
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging
from flax import nnx

from maskfeat_jax import checkpoint, evaluate, files, objectives, sharding, trainer, weights
from maskfeat_jax.data import streams


def extract_features(built: trainer.Trainer, state, split: str, workdir: str | None):
    """(features [N, D] float32, example ids [N], labels [N]) of every real view of ``split``,
    on every host (the jitted step replicates its output)."""
    config = built.config
    mean, std = config.input.mean, config.input.std

    def features(state, batch):
        model = nnx.merge(built.graphdef, state)[0]
        out = {k: batch[k] for k in ("id", "label", "valid")}
        out["features"] = model.features(objectives.normalize(batch["image"], mean, std))
        return out

    step = jax.jit(
        features,
        in_shardings=(built.state_shardings, built.batch_sharding),
        out_shardings=sharding.replicated(built.mesh),
    )
    settings = config.probe
    batch = int(settings.get("feature_batch_size") or config.input.batch_size)
    sharding.check_global_batch(batch, built.mesh, built.rules)
    ds, id_key = streams.eval_stream(
        config,
        built.spec,
        workdir,
        per_host_batch=batch // jax.process_count(),
        split=split,
        views=settings,
    )
    feats, ids, labels = [], [], []
    for host_batch in ds:
        feed = {
            "image": host_batch["image"],
            "id": np.asarray(host_batch[id_key], np.int32),
            "label": np.asarray(host_batch["label"], np.int32),
            "valid": np.asarray(host_batch["valid"], bool),
        }
        out = jax.device_get(step(state, sharding.to_global(feed, built.batch_sharding)))
        keep = np.asarray(out["valid"], bool)
        feats.append(np.asarray(out["features"])[keep])
        ids.append(np.asarray(out["id"])[keep])
        labels.append(np.asarray(out["label"])[keep])
    return np.concatenate(feats), np.concatenate(ids), np.concatenate(labels)


def train_linear(
    features: np.ndarray,
    labels: np.ndarray,
    num_classes: int,
    *,
    epochs: int,
    batch_size: int,
    learning_rate: float,
    weight_decay: float,
    seed: int = 0,
):
    """A softmax classifier on standardized features; returns (predict(features) -> probs,
    final training loss)."""
    mean = features.mean(axis=0)
    scale = 1.0 / np.sqrt(features.var(axis=0) + 1e-6)
    x_all = jnp.asarray((features - mean) * scale, jnp.float32)
    y_all = jnp.asarray(labels, jnp.int32)
    n, dim = x_all.shape
    batch_size = min(batch_size, n)
    steps_per_epoch = max(n // batch_size, 1)
    total = epochs * steps_per_epoch
    tx = optax.adamw(optax.cosine_decay_schedule(learning_rate, total), weight_decay=weight_decay)
    params = {"w": jnp.zeros((dim, num_classes)), "b": jnp.zeros((num_classes,))}
    opt_state = tx.init(params)

    def loss_fn(p, x, y):
        logits = x @ p["w"] + p["b"]
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()

    @jax.jit
    def epoch(p, s, order):
        def body(carry, idx):
            p, s = carry
            loss, g = jax.value_and_grad(loss_fn)(p, x_all[idx], y_all[idx])
            updates, s = tx.update(g, s, p)
            return (optax.apply_updates(p, updates), s), loss

        batches = order[: steps_per_epoch * batch_size].reshape(steps_per_epoch, batch_size)
        (p, s), losses = jax.lax.scan(body, (p, s), batches)
        return p, s, losses[-1]

    rng = np.random.default_rng(seed)
    loss = float("nan")
    for _ in range(epochs):
        params, opt_state, loss = epoch(params, opt_state, jnp.asarray(rng.permutation(n)))

    def predict(feats: np.ndarray) -> np.ndarray:
        x = jnp.asarray((feats - mean) * scale, jnp.float32)
        return np.asarray(jax.nn.softmax(x @ params["w"] + params["b"], axis=-1))

    return predict, float(loss)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Features of both splits, the classifier, and its top-k on the eval split."""
    if config.model.get("num_classes"):
        raise ValueError(
            "linear probing reads the pretraining-form encoder; use a config with "
            "model.num_classes=0 and the class count in config.probe.num_classes."
        )
    settings = config.probe
    built = trainer.build_trainer(config)
    state = built.init(jax.random.key(config.seed))
    source = "random init"
    if config.get("init_from"):
        # Only the encoder matters; the source may predict another target.
        flat, _ = checkpoint.load_weights(config.init_from)
        weights.assign(state[0], flat, built.spec, exclude="pred_head/")
        source = config.init_from
    train_x, _, train_y = extract_features(built, state, settings.train_split, workdir)
    test_x, test_ids, test_y = extract_features(built, state, settings.eval_split, workdir)
    predict, loss = train_linear(
        train_x,
        train_y,
        int(settings.num_classes),
        epochs=int(settings.epochs),
        batch_size=int(settings.batch_size),
        learning_rate=float(settings.learning_rate),
        weight_decay=float(settings.weight_decay),
        seed=int(config.seed),
    )
    views = evaluate.ViewAccumulator(int(settings.num_classes))
    views.add(predict(test_x), test_ids, test_y, np.ones(len(test_y), bool))
    result = {
        **views.result(),
        "train_examples": int(len(train_y)),
        "feature_dim": int(train_x.shape[1]),
        "final_train_loss": loss,
        "weights": source,
    }
    if jax.process_index() == 0:
        files.write_text(
            files.join(workdir, "linear_probe.json"), json.dumps(result, indent=2, sort_keys=True)
        )
    logging.info("Linear probe (%s): %s", source, result)
    return result


if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.probe", run_name="__main__", alter_sys=True)
