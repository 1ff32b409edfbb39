"""Unusable inputs are skipped, counted and reported, and too many unreadable ones stop the run.

Inside a pipeline's transform, ``load_with_retries`` reads an element; if the record is
unreadable (corrupt, truncated, not a video: ``BadInput``) or left out on purpose by the
configuration (``Excluded``, e.g. shorter than ``config.input.min_frames``), it draws another
record from the element's own generator, as SlowFast's loaders do, so batches stay full and
the stream stays reproducible. The element then carries ``skipped`` / ``skipped_ids`` (how
many unreadable records it passed over, and their reasons) and ``excluded`` /
``excluded_ids`` (the same for the excluded ones), which travel with the batch through
worker processes. On the training host, ``BadInputMonitor`` strips these fields, logs each
unreadable record (and each excluded one once), keeps the totals for the metrics and raises
``TooManyBadInputs`` once more than ``max_fraction`` of the records read were unreadable.
Excluded records are not errors and count neither way.
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from absl import logging

from maskfeat_jax import errors
from maskfeat_jax.data.video_records import BadVideo

__all__ = [
    "HOST_FIELDS",
    "BadImage",
    "BadInput",
    "BadInputMonitor",
    "Excluded",
    "TooManyBadInputs",
    "describe_records",
    "load_with_retries",
    "record_key",
]

# Per-element fields that stay on the host (not model inputs).
HOST_FIELDS = ("skipped", "skipped_ids", "excluded", "excluded_ids")

_SHOWN = 3  # how many records an error message names; the log names them all
_REASON_CHARS = 160
_RECORD = re.compile(r"record (\d+): ")


class BadImage(ValueError):
    """An image record that cannot be decoded."""


BadInput = (BadVideo, BadImage)


class Excluded(ValueError):
    """A readable record that the configuration leaves out on purpose (e.g. a video shorter
    than ``config.input.min_frames``): replaced like a bad one, but not counted as bad."""


class TooManyBadInputs(errors.DataError):
    """More of the input was unreadable than the configuration allows."""


def _reason(index: int, error: Exception) -> str:
    # One line per record: the host splits the joined reasons on newlines.
    return f"record {index}: " + " ".join(str(error).split())


def record_key(line: str) -> tuple[str, str]:
    """("record 7", "a.mp4: truncated ...") of a reason line."""
    match = _RECORD.match(line)
    if match is None:
        return line, line
    return f"record {match.group(1)}", line[match.end() :]


def _records(n: int) -> str:
    return f"{n} record" if n == 1 else f"{n} records"


def _shorten(text: str) -> str:
    return text if len(text) <= _REASON_CHARS else text[: _REASON_CHARS - 3] + "..."


def _display(key: str, text: str) -> str:
    """One record for a message: `a.mp4 (truncated: ...)` when the reason starts with the
    record's id, else `record 7 (reason)`."""
    name, sep, why = text.partition(": ")
    if sep and "(" not in name:
        return f"{name} ({_shorten(why)})"
    return f"{key} ({_shorten(text)})"


def describe_records(reasons: Mapping[str, str], shown: int = _SHOWN) -> str:
    """`a.mp4 (reason), b.mp4 (reason), and 2 more` for {record key: reason text}."""
    items = [_display(k, v) for k, v in list(reasons.items())[:shown]]
    rest = len(reasons) - len(items)
    if rest:
        items.append(f"and {rest} more")
    return ", ".join(items)


def load_with_retries(
    load: Callable[[int], dict[str, Any]],
    index: int,
    num_records: int,
    rng: np.random.Generator,
    max_retries: int,
) -> dict[str, Any]:
    """``load(index)``, or on ``BadInput`` / ``Excluded`` that of random other records, with
    ``skipped`` / ``skipped_ids`` and ``excluded`` / ``excluded_ids`` set (counts, and
    "record {i}: {reason}" lines). Raises ``TooManyBadInputs`` when ``max_retries + 1``
    records in a row cannot be used."""
    bad: list[str] = []
    excluded: list[str] = []
    for _ in range(max_retries + 1):
        try:
            element = load(index)
        except BadInput as e:
            bad.append(_reason(index, e))
        except Excluded as e:
            excluded.append(_reason(index, e))
        else:
            element["skipped"] = np.int32(len(bad))
            element["skipped_ids"] = "\n".join(bad)
            element["excluded"] = np.int32(len(excluded))
            element["excluded_ids"] = "\n".join(excluded)
            return element
        index = int(rng.integers(num_records))
    reasons = dict(record_key(line) for line in bad + excluded)
    raise TooManyBadInputs(
        f"{_records(len(bad) + len(excluded))} in a row could not be read or used "
        f"(config.input.max_retries={max_retries}; {len(bad)} unreadable, {len(excluded)} "
        f"left out by the config): {describe_records(reasons)}. The data is probably broken: "
        "check --config.input.data_dir and prepare it again, or the settings that leave "
        "records out (e.g. config.input.min_frames)."
    )


class BadInputMonitor:
    """Counts the unreadable and excluded records behind each host batch and stops the run
    when too many are unreadable.

    ``max_fraction`` is the largest tolerated share of unreadable records among the records
    read (used ones plus unreadable ones; excluded ones are left out of both); it is only
    enforced once ``min_seen`` records have been read, so one bad file at the start does not
    stop a run. Batches without ``excluded`` (or without any host field) are fine.
    """

    def __init__(self, max_fraction: float = 0.05, min_seen: int = 256):
        if not 0.0 <= max_fraction <= 1.0:
            raise ValueError(f"config.input.max_bad_fraction must be in [0, 1], got {max_fraction}")
        self.max_fraction = float(max_fraction)
        self.min_seen = int(min_seen)
        self.seen = 0
        self.skipped = 0
        self.excluded = 0
        # Each unreadable record once, in the order they were met: record key -> reason.
        self.unreadable: dict[str, str] = {}
        self.times_read: collections.Counter[str] = collections.Counter()
        self._excluded_logged: set[str] = set()

    def observe(self, batch: Mapping[str, Any]) -> dict[str, Any]:
        """The batch without its host-only fields, after counting and logging them."""
        model_inputs = {k: v for k, v in batch.items() if k not in HOST_FIELDS}
        used = len(next(iter(model_inputs.values())))
        skipped = int(np.sum(batch.get("skipped", 0)))
        for line in _lines(batch.get("skipped_ids")):
            logging.warning("Skipped a bad input: %s", line)
            key, text = record_key(line)
            self.unreadable.setdefault(key, text)
            self.times_read[key] += 1
        for line in _lines(batch.get("excluded_ids")):
            key, _ = record_key(line)
            if key not in self._excluded_logged:  # a record is left out every epoch
                self._excluded_logged.add(key)
                logging.info("Left out by the config (not counted as bad): %s", line)
        self.skipped += skipped
        self.excluded += int(np.sum(batch.get("excluded", 0)))
        self.seen += used + skipped
        if self.seen >= self.min_seen and self.skipped > self.max_fraction * self.seen:
            for key, text in self.unreadable.items():
                n = self.times_read[key]
                logging.error(
                    "Unreadable: %s: %s (met %d %s)", key, text, n, "time" if n == 1 else "times"
                )
            raise TooManyBadInputs(
                f"{self.skipped} of {self.seen} records read were unreadable "
                f"({self.skipped / self.seen:.1%} > config.input.max_bad_fraction="
                f"{self.max_fraction}): {describe_records(self.unreadable)}; the log names "
                "them all. Fix or remove them and rerun prepare_video, or raise "
                "--config.input.max_bad_fraction."
            )
        return model_inputs


def _lines(reasons: Any) -> list[str]:
    if reasons is None:
        return []
    return [line for r in np.asarray(reasons).reshape(-1) for line in str(r).splitlines() if line]
