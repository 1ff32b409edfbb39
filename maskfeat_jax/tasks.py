"""What kind of run a config describes, decided once: MaskFeat pretraining or classification.

``from_config(config)`` gives a ``Pretrain`` or a ``Classify`` task; everything that differs
between the two (the loss, the fields of a batch, the per-token target size of the model's
head, the training stream, whether the run evaluates or draws pictures) is asked of it, so no
other module branches on the kind of run.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, ClassVar

import jax
import ml_collections

from maskfeat_jax import finetune, models, pretrain
from maskfeat_jax.data import streams

FieldSpecs = dict[str, tuple[tuple[int, ...], Any]]


@dataclasses.dataclass(frozen=True)
class Task:
    config: ml_collections.ConfigDict
    spec: Any  # the model spec, with this task's target size

    is_pretraining: ClassVar[bool]
    name: ClassVar[str]

    @property
    def target_size(self) -> int:
        return self.spec.target_size

    def image_shape(self) -> tuple[int, ...]:
        s = self.spec.image_size
        frames = (self.spec.num_frames,) if self.spec.is_video else ()
        return (*frames, s, s, 3)

    def batch_fields(self) -> FieldSpecs:
        """Per-example (shape, dtype) of what the step takes from the host pipeline."""
        raise NotImplementedError

    def loss(self) -> Callable:
        """(model, batch, config, key, mixup_groups) -> (loss, aux metrics)."""
        raise NotImplementedError

    def train_stream(self, workdir: str | None = None):
        """This host's slice of every global training batch."""
        raise NotImplementedError

    @property
    def evaluates(self) -> bool:
        return False

    @property
    def draws_pictures(self) -> bool:
        return False


class Pretrain(Task):
    """Masked feature prediction: HOG (or pixel) targets of the masked tokens."""

    is_pretraining = True
    name = "pretrain"

    def batch_fields(self) -> FieldSpecs:
        return pretrain.batch_fields(self.config, self.spec, self.image_shape())

    def loss(self) -> Callable:
        return pretrain.loss

    def train_stream(self, workdir: str | None = None):
        grid = pretrain.mask_grid(self.config, self.spec)
        return streams.pretrain_stream(self.config, self.spec, workdir, mask_grid=grid)

    @property
    def draws_pictures(self) -> bool:
        # Pictures draw HOG glyphs; pixel targets have none.
        every = int(self.config.get("visualize_every_steps", 0) or 0)
        return bool(every) and pretrain.target_kind(self.config) == "hog"


class Classify(Task):
    """Fine-tuning a classifier: mixup / cutmix, erasing, soft-target cross-entropy, EMA."""

    is_pretraining = False
    name = "classify"

    def batch_fields(self) -> FieldSpecs:
        return finetune.batch_fields(self.config, self.image_shape())

    def loss(self) -> Callable:
        return finetune.classification_loss

    def train_stream(self, workdir: str | None = None):
        return streams.classification_stream(self.config, self.spec, workdir)

    @property
    def evaluates(self) -> bool:
        return bool(self.config.get("eval"))


def is_classification(config: ml_collections.ConfigDict) -> bool:
    """A config with classes fine-tunes a classifier; one without pretrains."""
    return bool(config.model.get("num_classes", 0))


def from_config(config: ml_collections.ConfigDict) -> Task:
    """The run's task, with the model spec sized for it (config mistakes fail here)."""
    if is_classification(config):
        return Classify(config, models.model_spec(config.model, target_size=0))
    pretrain.check_config(config)
    patch = models.model_spec(config.model, target_size=0).patch_size
    size = pretrain.target_size(config, patch)
    return Pretrain(config, models.model_spec(config.model, target_size=size))


def abstract_batch(task: Task, batch_size: int, sharding: jax.sharding.Sharding | None = None):
    """The global batch the step takes, as shape/dtype structs (placed by ``sharding``)."""
    return {
        k: jax.ShapeDtypeStruct((batch_size, *shape), dtype, sharding=sharding)
        for k, (shape, dtype) in task.batch_fields().items()
    }
