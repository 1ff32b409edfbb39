"""The random-access record sources ``config.input`` names.

Images: 'embedded' (the bundled photos), 'digits' (scikit-learn's digits, labelled),
'folder' (``ImageFolder(data_dir/split)``) or a tfds name read with ``tfds.data_source``.
Videos: 'embedded' (videos made once from the bundled photos) or any other name for record
shards that ``prepare_video`` wrote to ``config.input.data_dir``. A missing directory, build
or split is an error that names the fix.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

from maskfeat_jax import errors
from maskfeat_jax.data import digits, embedded, embedded_video, skipping, video_records

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "open_image_source", "open_video_source"]

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ImageFolder:
    """Random-access source over a folder of images (grain ``RandomAccessDataSource``).

    ``root/<class>/**/<image>`` gives labels by the sorted class names; images directly in
    ``root`` (and no class folders) have label -1. Items are ``{"image": uint8 [H, W, 3],
    "label": int32, "id": path relative to root}``, decoded with Pillow (grayscale, palette
    and RGBA made RGB); a file that does not decode raises ``BadImage``.
    """

    def __init__(self, root: str, extensions: Sequence[str] = IMAGE_EXTENSIONS):
        if not os.path.isdir(root):
            raise FileNotFoundError(f"image folder {root} does not exist")
        extensions = tuple(e.lower() for e in extensions)
        entries = sorted(os.listdir(root))
        self.classes = tuple(e for e in entries if os.path.isdir(os.path.join(root, e)))
        files: list[tuple[str, int]] = []
        if self.classes:
            for label, name in enumerate(self.classes):
                for folder, _, names in sorted(os.walk(os.path.join(root, name))):
                    files += [
                        (os.path.relpath(os.path.join(folder, f), root), label)
                        for f in sorted(names)
                        if f.lower().endswith(extensions)
                    ]
        else:
            files = [(f, -1) for f in entries if f.lower().endswith(extensions)]
        if not files:
            raise FileNotFoundError(
                f"no images ({', '.join(extensions)}) in {root} or its class folders"
            )
        self.root, self.files = root, files

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path, label = self.files[index]
        try:
            with Image.open(os.path.join(self.root, path)) as img:
                image = np.asarray(img.convert("RGB"), dtype=np.uint8)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            raise skipping.BadImage(f"{path}: {type(e).__name__}: {e}") from e
        return {"image": image, "label": np.int32(label), "id": path}


def open_image_source(config, split: str):
    """The image source of ``split`` that ``config.input`` names (see the module docstring)."""
    inp = config.input
    name = inp.get("dataset", "embedded")
    if name == "embedded":
        return embedded.load_split(split)
    if name == "digits":
        return digits.load_split(split, image_size=int(inp.get("digits_size", 32)))
    data_dir = inp.get("data_dir")
    if not data_dir:
        raise errors.ConfigError(
            f"config.input.dataset={name!r} is read from a directory; pass "
            "--config.input.data_dir=/path (a tensorflow_datasets directory, or for "
            "'folder' a directory with one folder per split), or use "
            "--config.input.dataset=embedded for the bundled photos."
        )
    if not os.path.isdir(data_dir):
        raise errors.DataError(
            f"--config.input.data_dir={data_dir} does not exist; pass the directory that holds "
            f"the {name!r} data."
        )
    if name == "folder":
        split_dir = os.path.join(data_dir, split)
        if not os.path.isdir(split_dir):
            raise errors.DataError(
                f"{data_dir} has no folder {split!r} for split {split!r} (folders there: "
                f"{sorted(os.listdir(data_dir))}); the 'folder' dataset reads "
                "data_dir/<split>/<class>/<image>."
            )
        return ImageFolder(split_dir)
    return _tfds_source(name, split, data_dir)


def _tfds_source(name: str, split: str, data_dir: str):
    """``tfds.data_source`` of a prepared ArrayRecord build. Asked for a build that is not
    there, tfds would start downloading and preparing it; here that is an error naming the
    fix."""
    import tensorflow_datasets as tfds  # Only for real datasets.

    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except tfds.core.registered.DatasetNotFoundError as e:
        raise errors.DataError(
            f"no dataset {name!r} in tfds or in {data_dir}; check --config.input.dataset "
            "(a tfds name, 'folder' or 'embedded')."
        ) from e
    prepare = (
        f"prepare it with `tfds build {name} --data_dir={data_dir} --file_format=array_record`"
    )
    if not builder.is_prepared():
        raise errors.DataError(
            f"no prepared tfds dataset {name!r} in {data_dir} (looked for "
            f"{builder.data_dir}/dataset_info.json); {prepare}, or pass the --config.input."
            "data_dir that holds it."
        )
    splits = sorted(builder.info.splits.keys())
    if split not in splits:
        raise errors.DataError(
            f"the {name!r} build in {builder.data_dir} has no split {split!r} (it has "
            f"{splits}); set the split in the config (e.g. --config.input.split=...)."
        )
    file_format = getattr(builder.info.file_format, "value", builder.info.file_format)
    if file_format != "array_record":
        raise errors.DataError(
            f"the {name!r} build in {builder.data_dir} is stored as {file_format}; random "
            f"access needs ArrayRecord: {prepare}."
        )
    return tfds.data_source(name, split=split, data_dir=data_dir)


def open_video_source(config, workdir: str | None, split: str) -> video_records.VideoRecords:
    """The video records of ``split`` that ``config.input`` names: 'embedded' builds (once)
    and reads the embedded videos in ``data_dir`` (default ``workdir/embedded_videos``; sizes
    from ``config.input.embedded_videos``, see ``EmbeddedVideos``); any other name is a
    dataset made by ``prepare_video`` in ``config.input.data_dir``."""
    inp = config.input
    name = inp.get("dataset", "embedded")
    data_dir = inp.get("data_dir")
    if name == "embedded":
        if not data_dir:
            if not workdir:
                raise errors.ConfigError(
                    "the embedded videos need a place: pass a workdir or "
                    "--config.input.data_dir=/some/dir"
                )
            data_dir = os.path.join(workdir, "embedded_videos")
        settings = embedded_video.EmbeddedVideos(**dict(inp.get("embedded_videos", None) or {}))
        embedded_video.ensure(data_dir, settings)
    elif not data_dir:
        raise errors.ConfigError(
            f"config.input.dataset={name!r} is read from record shards made by "
            "`python -m maskfeat_jax.data.prepare_video`; pass --config.input.data_dir=DIR "
            "(or use --config.input.dataset=embedded for the bundled videos)"
        )
    elif not os.path.isdir(data_dir):
        raise errors.DataError(
            f"--config.input.data_dir={data_dir} does not exist; pass the directory that "
            "`python -m maskfeat_jax.data.prepare_video --out DIR` wrote."
        )
    try:
        return video_records.VideoRecords(data_dir, split)
    except video_records.DatasetInfoError as e:
        raise errors.DataError(str(e)) from e
