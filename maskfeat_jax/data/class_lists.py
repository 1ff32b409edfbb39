"""The class list the splits of one dataset share, so that their label indices line up.

The first labelled split written to ``out`` leaves its list in ``out/classes.txt``; a later
split uses it (``--classes`` or ``--classes_from``), or, given neither, uses it when it holds
all of the split's labels. Any other list is an error.
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Sequence

from maskfeat_jax.data.shard_plan import write_text
from maskfeat_jax.data.video_inputs import Inputs, read_class_list, shown_names

__all__ = ["CLASS_LIST", "class_list_in", "shared_classes", "write_class_list"]

CLASS_LIST = "classes.txt"  # written next to the splits by the first labelled one


def class_list_in(folder: str) -> str:
    path = os.path.join(folder, CLASS_LIST)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"--classes_from {folder} has no {CLASS_LIST}; a labelled split prepared into "
            f"{folder} leaves one (or pass --classes FILE)"
        )
    return path


def shared_classes(out: str, split: str, inputs: Inputs, explicit: bool) -> Inputs:
    """``inputs`` with the class list the splits already in ``out`` use (see the module
    docstring)."""
    path = os.path.join(out, CLASS_LIST)
    if not (inputs.classes and inputs.videos and os.path.isfile(path)):
        return inputs
    shared = read_class_list(path)
    if inputs.classes == shared:
        return inputs
    used = sorted({inputs.classes[label] for _, label, _ in inputs.videos})
    outside = [name for name in used if name not in shared]
    if not explicit and not outside:
        print(
            f"Using the class list of {path} ({len(shared)} classes): it holds every label of "
            f"split {split!r}, and the splits already in {out} use it.",
            file=sys.stderr,
        )
        index = {name: i for i, name in enumerate(shared)}
        videos = [(i, index[inputs.classes[label]], size) for i, label, size in inputs.videos]
        return dataclasses.replace(inputs, videos=videos, classes=shared)
    lacking = f"; {shown_names(outside)} not in it" if outside else ""
    raise ValueError(
        f"split {split!r} has the classes [{shown_names(inputs.classes)}] but the splits in {out} "
        f"use [{shown_names(shared)}] ({path}), so label indices would not line up. Pass --classes "
        f"{path} (every label must be in it{lacking}), or use another --out"
    )


def write_class_list(out: str, classes: Sequence[str]) -> None:
    """``out/classes.txt``, written by the first labelled split: the ``--classes`` file that
    gives the other splits the same label indices."""
    path = os.path.join(out, CLASS_LIST)
    if classes and not os.path.exists(path):
        write_text(path, "".join(f"{name}\n" for name in classes))
