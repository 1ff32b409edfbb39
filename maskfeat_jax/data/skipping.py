"""Bad inputs are skipped, counted and reported, and too many of them stop the run.

Inside a pipeline's transform, ``load_with_retries`` reads an element; if the record is
bad (corrupt, truncated, too short: ``BadInput``), it draws another record from the
element's own generator, as SlowFast's loaders do, so batches stay full and the stream stays
reproducible. The element then carries ``skipped`` (how many records it passed over) and
``skipped_ids`` (their ids and reasons), which travel with the batch through worker
processes. On the training host, ``BadInputMonitor`` strips these fields, logs each skipped
record, keeps the totals for the metrics and raises ``TooManyBadInputs`` once more than
``max_fraction`` of the records read were bad.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging

from maskfeat_jax.data.video_records import BadVideo

__all__ = [
    "HOST_FIELDS",
    "BadImage",
    "BadInput",
    "BadInputMonitor",
    "TooManyBadInputs",
    "load_with_retries",
]

# Per-element fields that stay on the host (not model inputs).
HOST_FIELDS = ("skipped", "skipped_ids")


class BadImage(ValueError):
    """An image record that cannot be decoded."""


BadInput = (BadVideo, BadImage)


class TooManyBadInputs(RuntimeError):
    """More of the input was unreadable than the configuration allows."""


def load_with_retries(
    load: Callable[[int], dict[str, Any]],
    index: int,
    num_records: int,
    rng: np.random.Generator,
    max_retries: int,
) -> dict[str, Any]:
    """``load(index)``, or on ``BadInput`` of random other records, with ``skipped`` and
    ``skipped_ids`` set. Raises ``TooManyBadInputs`` when ``max_retries + 1`` reads fail."""
    failures = []
    for _ in range(max_retries + 1):
        try:
            element = load(index)
        except BadInput as e:
            failures.append(f"record {index}: {e}")
            index = int(rng.integers(num_records))
            continue
        element["skipped"] = np.int32(len(failures))
        element["skipped_ids"] = "\n".join(failures)
        return element
    raise TooManyBadInputs(
        f"{len(failures)} records in a row could not be read; the data is probably broken "
        "(check the dataset path, or prepare it again). Last errors:\n" + "\n".join(failures)
    )


class BadInputMonitor:
    """Counts the bad records behind each host batch and stops the run when there are too many.

    ``max_fraction`` is the largest tolerated share of bad records among all records read
    (good ones plus skipped ones); it is only enforced once ``min_seen`` records have been
    read, so one bad file at the start does not stop a run.
    """

    def __init__(self, max_fraction: float = 0.05, min_seen: int = 256):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"config.input.max_bad_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction = float(max_fraction)
        self.min_seen = int(min_seen)
        self.seen = 0
        self.skipped = 0

    def observe(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch without its host-only fields, after counting and logging them."""
        model_inputs = {k: v for k, v in batch.items() if k not in HOST_FIELDS}
        if "skipped" not in batch:
            self.seen += len(next(iter(model_inputs.values())))
            return model_inputs
        skipped = np.asarray(batch["skipped"])
        for reasons in np.asarray(batch["skipped_ids"]).reshape(-1):
            for reason in str(reasons).splitlines():
                logging.warning("Skipped a bad input: %s", reason)
        self.skipped += int(skipped.sum())
        self.seen += int(skipped.size + skipped.sum())
        if self.seen >= self.min_seen and self.skipped > self.max_fraction * self.seen:
            raise TooManyBadInputs(
                f"{self.skipped} of {self.seen} records read so far were unreadable "
                f"({self.skipped / self.seen:.1%} > config.input.max_bad_fraction="
                f"{self.max_fraction}); the warnings above name them. Repair or drop them "
                "(rerun prepare_video, which skips unreadable files), or raise "
                "--config.input.max_bad_fraction."
            )
        return model_inputs
