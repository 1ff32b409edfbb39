"""Evaluation: multi-view aggregation, exact counts over padded batches and hosts, the
standalone evaluator, and linear probing."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from maskfeat_jax import checkpoint, evaluate, linear_probe, loop, objectives
from maskfeat_jax import trainer as trainer_lib
from maskfeat_jax.data import batching, digits, images
from maskfeat_jax.experiments import digits_configs

DATA_MESH = (("data", -1), ("fsdp", 1), ("tensor", 1))


def _softmax(x):
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def test_views_are_averaged_per_example_and_padding_is_ignored():
    rng = np.random.default_rng(0)
    num, views, classes = 7, 3, 6
    logits = rng.normal(size=(num, views, classes)) * 3
    labels = rng.integers(0, classes, num)
    rows = [(i, v) for i in range(num) for v in range(views)]
    rng.shuffle(rows)
    acc = evaluate.ViewAccumulator(classes)
    # Two "hosts" of padded batches, views in any order; padding has garbage values.
    for chunk in np.array_split(np.arange(len(rows)), 4):
        probs = [_softmax(logits[rows[j]]) for j in chunk] + [np.full(classes, 1 / classes)] * 2
        ids = [rows[j][0] for j in chunk] + [-1, 3]
        labs = [labels[rows[j][0]] for j in chunk] + [-1, 0]
        valid = [True] * len(chunk) + [False, False]
        acc.add(np.stack(probs), np.asarray(ids), np.asarray(labs), np.asarray(valid))
    result = acc.result()
    mean = _softmax(logits).mean(axis=1)
    top1 = (mean.argmax(1) == labels).mean()
    top5 = np.mean([labels[i] in np.argsort(-mean[i])[:5] for i in range(num)])
    assert result["top1"] == pytest.approx(top1) and result["top5"] == pytest.approx(top5)
    assert (result["num_examples"], result["num_views"], result["invalid_views"]) == (7, 21, 8)
    assert result["views_per_example_min"] == result["views_per_example_max"] == 3
    with pytest.raises(ValueError, match="labels"):
        acc.add(
            np.full((1, classes), 0.1),
            np.asarray([0]),
            np.asarray([labels[0] + 1]),
            np.asarray([True]),
        )


def test_two_hosts_cover_every_test_image_once_with_equal_batch_counts():
    source = digits.load_split("test", image_size=24)
    seen, batches = [], []
    for host in range(2):
        options = batching.StreamOptions(per_host_batch=32, shard_index=host, shard_count=2)
        ds = images.make_image_eval_dataset(source, options, image_size=24, resize_size=24)
        host_batches = list(ds)
        batches.append(len(host_batches))
        for b in host_batches:
            seen.extend(np.asarray(b["index"])[np.asarray(b["valid"])].tolist())
    assert batches[0] == batches[1] == 9  # ceil(ceil(539 / 2) / 32)
    assert sorted(seen) == list(range(len(source)))


def tiny_classifier_config():
    c = digits_configs.finetune()
    c.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    c.eval.batch_size = 64  # 539 test images: the last batch is padded
    c.mesh = DATA_MESH
    return c


@pytest.mark.slow
def test_evaluator_counts_each_image_once_and_matches_a_direct_computation(tmp_path):
    config = tiny_classifier_config()
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(3))
    result = loop.evaluator_for(trainer, str(tmp_path))(state, step=5)
    assert (result["num_examples"], result["num_views"]) == (539, 539)
    assert result["invalid_views"] == 9 * 64 - 539
    # Independent: the model on every test image, one at a time through plain numpy views.
    model = nnx.merge(trainer.graphdef, state)[0]
    records = digits.load_split("test", image_size=24)
    x = np.stack([images.resize_center_crop(r["image"], 24, 24) for r in records])
    logits = model(objectives.normalize(jnp.asarray(x), config.input.mean, config.input.std))
    labels = np.asarray([r["label"] for r in records])
    order = np.argsort(-np.asarray(logits), axis=1, kind="stable")
    assert result["top1"] == pytest.approx((order[:, 0] == labels).mean())
    assert result["top5"] == pytest.approx((order[:, :5] == labels[:, None]).any(1).mean())
    written = json.loads((tmp_path / "results.json").read_text())
    assert written["step"] == 5 and written["split"] == "test"
    assert (tmp_path / "eval" / "test_step5.json").exists()


@pytest.mark.slow
def test_standalone_evaluation_of_a_saved_run(tmp_path):
    config = tiny_classifier_config()
    trainer = trainer_lib.build_trainer(config)
    state = trainer.init(jax.random.key(1))
    with checkpoint.RunCheckpoints(str(tmp_path / "checkpoints"), every_steps=1) as ckpts:
        ckpts.save(7, state, data=None, rng=jax.random.key(0), config=config, force=True)
    target = jax.tree.map(lambda x: x, trainer.abstract_state)
    from maskfeat_jax import sharding

    restored = checkpoint.restore_run(
        str(tmp_path), sharding.abstract_on_mesh(target, trainer.state_shardings)
    )
    direct = loop.evaluator_for(trainer, None)(state, 7)
    again = loop.evaluator_for(trainer, str(tmp_path))(restored.state, restored.step)
    assert again["top1"] == direct["top1"] and again["num_examples"] == 539


def test_linear_classifier_separates_separable_features():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(4, 16)) * 3
    y = rng.integers(0, 4, 400)
    x = centres[y] + rng.normal(size=(400, 16))
    predict, loss = linear_probe.train_linear(
        x[:300], y[:300], 4, epochs=30, batch_size=32, learning_rate=1e-2, weight_decay=0.0
    )
    assert (predict(x[300:]).argmax(1) == y[300:]).mean() > 0.95 and loss < 0.3


@pytest.mark.slow
def test_linear_probe_of_a_pretrained_run_reads_only_the_encoder(tmp_path):
    config = digits_configs.probe()
    config.model.update(width=32, depth=2, num_heads=2, mlp_dim=64)
    config.probe.epochs = 20
    config.target = "pixels"  # another head size than the probe's own (HOG) model
    pretrained = trainer_lib.build_trainer(config)
    state = pretrained.init(jax.random.key(0))
    checkpoint.save_weights(str(tmp_path / "pt"), state[0], {"config": {}})
    config.target = "hog"
    config.init_from = str(tmp_path / "pt")
    result = linear_probe.run(config, str(tmp_path / "probe"))
    assert result["num_examples"] == 539 and result["train_examples"] == 200
    assert result["feature_dim"] == 32 and result["top1"] > 0.3  # 10 classes: chance is 0.1
    assert (
        json.loads((tmp_path / "probe" / "linear_probe.json").read_text())["top1"]
        == (result["top1"])
    )
    config.model.num_classes = 10
    with pytest.raises(ValueError, match="pretraining-form"):
        linear_probe.run(config, str(tmp_path / "bad"))
