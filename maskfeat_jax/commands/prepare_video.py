r"""Video files -> record shards::

    maskfeat-prepare-video --videos_dir kinetics/train --out data/k400 --split train
    python -m maskfeat_jax.data.prepare_video --videos_dir kinetics/val \
        --out data/k400 --split validation --classes data/k400/classes.txt
    python -m maskfeat_jax.data.prepare_video --videos_dir clips --csv clips.csv \
        --out data/clips --split train

Inputs: class folders ``videos_dir/<class>/<file>``, a ``--csv`` of ``path,label`` rows, or
``--unlabelled`` (every video under ``videos_dir``, label -1). The first labelled split leaves
``out/classes.txt``; later splits use it (``--classes`` or ``--classes_from``). Rerunning the
same command resumes an interrupted run. Prints what was written and the files skipped, by
reason (each one in ``out/<split>.skipped.tsv``); a mistake in the inputs or flags is one
line on stderr and exit code 1. The details: ``maskfeat_jax/data/prepare_video.py``.
"""

from __future__ import annotations

import sys

from absl import app, flags

from maskfeat_jax import cli
from maskfeat_jax.data import prepare_video

_VIDEOS_DIR = flags.DEFINE_string(
    "videos_dir", None, "Folder of the videos: <class>/<file>, or what --csv lists."
)
_CSV = flags.DEFINE_string(
    "csv", None, "Rows `path,label` (path relative to --videos_dir or absolute)."
)
_CLASSES = flags.DEFINE_string(
    "classes", None, "File with the class names, one per line (default: sorted labels)."
)
_CLASSES_FROM = flags.DEFINE_string(
    "classes_from", None, "Dataset folder whose classes.txt is the class list (--classes)."
)
_UNLABELLED = flags.DEFINE_bool(
    "unlabelled", False, "Every video under --videos_dir, any depth, with label -1."
)
_OUT = flags.DEFINE_string(
    "out", None, "Dataset directory for the shards and split info.", allow_override=True
)
_SPLIT = flags.DEFINE_string(
    "split", None, "Split name, e.g. train or validation.", allow_override=True
)
_SHARD_SIZE_MB = flags.DEFINE_float("shard_size_mb", 512, "Input bytes per shard, in MiB (about).")
_WORKERS = flags.DEFINE_integer("workers", None, "Processes writing shards (default: one per CPU).")
_EXTENSIONS = flags.DEFINE_list(
    "extensions",
    list(prepare_video.DEFAULT_EXTENSIONS),
    "Extensions of video files (class folders).",
)
_CLIP_SECONDS = flags.DEFINE_float(
    "clip_seconds",
    prepare_video.DEFAULT_CLIP_SECONDS,
    "Videos shorter than this are reported as short (default: 16 frames at stride 4, 30 fps).",
)
_PROGRESS = flags.DEFINE_bool("progress", True, "Show a progress bar.")


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    if not _CLIP_SECONDS.value > 0:
        raise app.UsageError(f"--clip_seconds must be positive, got {_CLIP_SECONDS.value}")
    try:
        info = prepare_video.prepare(
            _VIDEOS_DIR.value,
            _OUT.value,
            _SPLIT.value,
            csv=_CSV.value,
            classes=_CLASSES.value,
            classes_from=_CLASSES_FROM.value,
            unlabelled=_UNLABELLED.value,
            shard_size_mb=_SHARD_SIZE_MB.value,
            workers=_WORKERS.value,
            extensions=_EXTENSIONS.value,
            progress=_PROGRESS.value,
        )
    except prepare_video.NothingUsable as e:
        print(e.summary)
        print(f"Error: {e}", file=sys.stderr)
        sys.exit(1)
    except (ValueError, OSError) as e:
        print(f"Error: {prepare_video.error_line(e)}", file=sys.stderr)
        sys.exit(1)
    print(prepare_video.report(info, _OUT.value, _CLIP_SECONDS.value))


def run():
    cli.run_command(main, __name__, required=["videos_dir", "out", "split"])


if __name__ == "__main__":
    run()
