"""Fine-tuning for classification: the batch it takes, its loss and the weight EMA.

Reference recipe (SlowFast ``in1k_VIT_*_MaskFeat_FT`` / ``k400_MVITv2_*_FT``): the host
pipeline does RandomResizedCrop, flip and RandAugment and draws random-erasing boxes
(``data/augment.py``); inside the jitted step the uint8 batch is normalized, the boxes are
filled with N(0, 1) noise (timm's 'pixel' erasing, after normalization as in the reference),
the batch is mixed (Mixup / CutMix with label smoothing, ``mixup.py``) and the mean-pooled
classifier is trained with soft-target cross-entropy and drop path.

A model EMA (``config.optim.ema_decay`` > 0) is a second copy of the model whose parameters
follow ``ema = d * ema + (1 - d) * params`` after every step; evaluation reports it too.
"""

from __future__ import annotations

from typing import Any, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx

from maskfeat_jax import mixup, objectives
from maskfeat_jax.data import augment

Batch = Mapping[str, Any]


def erase_count(config: ml_collections.ConfigDict) -> int:
    """Boxes per example the pipeline draws (0: random erasing off)."""
    inp = config.input
    return int(inp.get("erase_count", 1)) if inp.get("erase_prob", 0.0) else 0


def batch_fields(
    config: ml_collections.ConfigDict, image_shape: tuple[int, ...]
) -> dict[str, tuple[tuple[int, ...], Any]]:
    """Per-example (shape, dtype) of what a fine-tuning step takes."""
    fields = {"image": (image_shape, jnp.uint8), "label": ((), jnp.int32)}
    if erase_count(config):
        fields["erase_boxes"] = ((erase_count(config), 4), jnp.int32)
    return fields


def mixup_config(config: ml_collections.ConfigDict) -> mixup.MixupConfig:
    """``config.mixup``; without one, plain cross-entropy (no mixing, no smoothing)."""
    num_classes = config.model.num_classes
    if config.get("mixup") is None:
        return mixup.MixupConfig(
            num_classes=num_classes, mixup_alpha=0.0, cutmix_alpha=0.0, label_smoothing=0.0
        )
    return mixup.MixupConfig.from_config(config.mixup, num_classes)


def classification_loss(
    model: nnx.Module,
    batch: Batch,
    config: ml_collections.ConfigDict,
    key: jax.Array,
    mixup_groups: int = 1,
):
    """Soft-target cross-entropy of the mixed, erased, normalized batch; drop path on."""
    erase_key, mix_key, drop_key = jax.random.split(key, 3)
    images = objectives.normalize(batch["image"], config.input.mean, config.input.std)
    if "erase_boxes" in batch:
        images = augment.erase(images, batch["erase_boxes"], erase_key)
    images, targets, lam = mixup.mix_batch(
        mix_key, images, batch["label"], mixup_config(config), groups=mixup_groups
    )
    logits = model(images, key=drop_key)
    loss = mixup.soft_target_cross_entropy(logits, targets)
    accuracy = jnp.mean((jnp.argmax(logits, -1) == jnp.argmax(targets, -1)).astype(jnp.float32))
    return loss, {"train_accuracy": accuracy, "mix_lambda": lam}


def make_ema(model: nnx.Module) -> nnx.Module:
    """A second model with the same parameters (it is never differentiated)."""
    graphdef, state = nnx.split(model)
    return nnx.merge(graphdef, jax.tree.map(jnp.copy, state))


def update_ema(ema: nnx.Module, model: nnx.Module, decay: float) -> None:
    params = nnx.state(model, nnx.Param)
    averaged = optax.tree.update_moment(params, nnx.state(ema, nnx.Param), decay, 1)
    nnx.update(ema, averaged)
