r"""Draws what a pretrained checkpoint predicts for a few validation images (or clips)::

    maskfeat-visualize --workdir runs/demo [--checkpoint PATH] [--num_images 4] \
        [--split validation] [--seed 0] [--out picture.png]

(also ``python -m maskfeat_jax.visualize``): input | masked input | HOG target | predicted
HOG, one row per image; the model and its config come from the checkpoint.
"""

from __future__ import annotations

from absl import app, flags

from maskfeat_jax import checkpoint, cli, files, visualize

_WORKDIR = flags.DEFINE_string(
    "workdir", None, "Run directory (its checkpoints are read).", allow_override=True
)
_CHECKPOINT = flags.DEFINE_string(
    "checkpoint", None, "Checkpoint (default: the workdir's).", allow_override=True
)
_NUM = flags.DEFINE_integer("num_images", 4, "Validation images (or clips) to draw.")
_SPLIT = flags.DEFINE_string(
    "split", "validation", "Dataset split of the images.", allow_override=True
)
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the masks.", allow_override=True)
_OUT = flags.DEFINE_string(
    "out", None, "PNG path (default WORKDIR/pictures/checkpoint.png).", allow_override=True
)


def main(argv):
    if len(argv) > 1:
        raise app.UsageError(f"Unexpected arguments: {argv[1:]}")
    checkpoint.quiet_orbax_logging()
    workdir = _WORKDIR.value
    path = _CHECKPOINT.value or files.join(workdir, "checkpoints")
    image = visualize.from_checkpoint(
        path, _NUM.value, _SPLIT.value, workdir=workdir, seed=_SEED.value
    )
    out = _OUT.value or files.join(workdir, "pictures", "checkpoint.png")
    visualize.write_png(out, image)
    print(f"Wrote {out} ({image.shape[1]}x{image.shape[0]} px): input | masked | HOG | predicted.")


def run():
    cli.run_command(main, __name__, required=["workdir"])


if __name__ == "__main__":
    run()
