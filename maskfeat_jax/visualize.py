r"""Pictures of what MaskFeat learns, like the paper's figure: for a few validation images (or
the frames of a clip) the input, the masked input, the HOG target and the predicted HOG of the
masked tokens, each HOG drawn as oriented-gradient glyphs per cell.

    maskfeat-visualize --workdir runs/demo [--checkpoint PATH] [--num_images 4] \
        [--split validation] [--out picture.png]

(also ``python -m maskfeat_jax.visualize``; the command is ``commands/visualize.py``). The
model and its config come from the run's checkpoint. Training writes the same picture
every ``config.visualize_every_steps`` steps to ``WORKDIR/pictures`` and TensorBoard.

Glyphs: a cell's nine orientation bins (averaged over colour channels) are nine strokes through
the cell centre, each along the edge direction of its bin (perpendicular to the gradient) and
as bright as the bin's value relative to the largest bin in the panel. Predictions are
regressions and may be negative; negative bins are drawn as 0.
"""

from __future__ import annotations

import runpy
from typing import Any, Callable, Mapping

import jax
import ml_collections
import numpy as np
from etils import epath
from flax import nnx
from PIL import Image, ImageDraw

from maskfeat_jax import (
    checkpoint,
    files,
    masking,
    models,
    pretrain,
    sharding,
    tasks,
    weights,
)
from maskfeat_jax.data import streams

GREY = 128  # masked pixels in the "masked input" panel


# ---------------------------------------------------------------------------------------------
# Drawing.
# ---------------------------------------------------------------------------------------------


def cell_histograms(
    tokens: np.ndarray, grid_hw: tuple[int, int], *, channels: int, nbins: int, cells: int
) -> np.ndarray:
    """Token features [h*w, C*nbins*k*k] (order c, bin, dy, dx) -> per-cell histograms
    [h*k, w*k, nbins], averaged over channels."""
    h, w = grid_hw
    t = np.asarray(tokens, np.float32).reshape(h, w, channels, nbins, cells, cells)
    t = t.mean(axis=2)  # [h, w, bin, dy, dx]
    return t.transpose(0, 3, 1, 4, 2).reshape(h * cells, w * cells, nbins)


def bin_edge_directions(nbins: int) -> np.ndarray:
    """Unit (dx, dy) in image coordinates (x right, y down) of the edge each bin stands for.

    Bin b holds gradients with atan2(gx, gy) in [b, b+1) * pi / nbins, i.e. a gradient
    (sin t, cos t) in (x, y); the edge runs perpendicular to it, along (cos t, -sin t)."""
    t = (np.arange(nbins) + 0.5) * np.pi / nbins
    return np.stack([np.cos(t), -np.sin(t)], axis=-1)


def draw_glyphs(
    hist: np.ndarray, cell_px: int, visible: np.ndarray | None = None, scale: float | None = None
) -> np.ndarray:
    """Histograms [H, W, nbins] -> a grey uint8 image [H*cell_px, W*cell_px] of glyphs.
    ``visible`` [H, W] bool: cells left black where False. ``scale``: the value drawn at full
    brightness (default: the largest bin drawn)."""
    hist = np.maximum(np.asarray(hist, np.float32), 0.0)
    rows, cols, nbins = hist.shape
    if visible is None:
        visible = np.ones((rows, cols), bool)
    top = float(scale if scale is not None else (hist[visible].max() if visible.any() else 0.0))
    canvas = Image.new("L", (cols * cell_px, rows * cell_px), 0)
    if top <= 0:
        return np.asarray(canvas)
    pen = ImageDraw.Draw(canvas)
    half = 0.45 * cell_px
    directions = bin_edge_directions(nbins) * half
    for r in range(rows):
        for c in range(cols):
            if not visible[r, c]:
                continue
            cx, cy = (c + 0.5) * cell_px, (r + 0.5) * cell_px
            for b in np.argsort(hist[r, c]):  # brightest stroke last, on top
                level = int(round(255 * min(hist[r, c, b] / top, 1.0)))
                if level == 0:
                    continue
                dx, dy = directions[b]
                pen.line([(cx - dx, cy - dy), (cx + dx, cy + dy)], fill=level, width=1)
    return np.asarray(canvas)


def _upscale(image: np.ndarray, factor: int) -> np.ndarray:
    return np.repeat(np.repeat(image, factor, axis=0), factor, axis=1)


def panel_row(
    image: np.ndarray,
    mask_hw: np.ndarray,
    target: np.ndarray,
    pred: np.ndarray,
    *,
    patch_size: int,
    cell_size: int,
    nbins: int,
    cell_px: int | None = None,
) -> np.ndarray:
    """One image: [input | masked input | HOG target | predicted HOG on masked tokens], RGB
    uint8. ``image`` [H, W, 3] uint8; ``mask_hw`` [h, w] bool (True = masked token);
    ``target``/``pred`` [h*w, 3*nbins*k*k]."""
    h, w = mask_hw.shape
    k = patch_size // cell_size
    cell_px = cell_px or max(cell_size, 12)
    factor = cell_px // cell_size if cell_px % cell_size == 0 else None
    hist_kw = dict(channels=image.shape[-1], nbins=nbins, cells=k)
    target_cells = cell_histograms(target, (h, w), **hist_kw)
    pred_cells = cell_histograms(pred, (h, w), **hist_kw)
    masked_cells = _upscale(mask_hw, k)
    scale = float(target_cells.max())  # one brightness scale for target and prediction
    glyph_target = draw_glyphs(target_cells, cell_px, scale=scale)
    glyph_pred = draw_glyphs(pred_cells, cell_px, visible=masked_cells, scale=scale)
    size = glyph_target.shape[:2]
    masked = image.copy()
    masked[_upscale(mask_hw, patch_size)] = GREY

    def fit(x: np.ndarray) -> np.ndarray:
        if factor:
            return _upscale(x, factor)
        return np.asarray(Image.fromarray(x).resize(size[::-1], Image.Resampling.NEAREST))

    gap = np.full((size[0], 4, 3), 255, np.uint8)
    grey = lambda g: np.repeat(g[..., None], 3, axis=-1)  # noqa: E731
    return np.concatenate(
        [fit(image), gap, fit(masked), gap, grey(glyph_target), gap, grey(glyph_pred)], axis=1
    )


def picture(
    images: np.ndarray,
    masks: np.ndarray,
    targets: np.ndarray,
    preds: np.ndarray,
    *,
    patch_size: int,
    cell_size: int,
    nbins: int,
    temporal_stride: int = 1,
) -> np.ndarray:
    """Rows of ``panel_row`` for a batch. Images [B, H, W, 3] with masks [B, h, w] and
    targets/preds [B, h*w, D]; or clips [B, T, H, W, 3] with masks [B, T', h, w] and
    targets/preds [B, T'*h*w, D], one row per target frame (frames 0, s, 2s, ...)."""
    rows = []
    for i in range(images.shape[0]):
        if images.ndim == 5:
            t_out = masks.shape[1]
            per_frame = targets.shape[1] // t_out
            for t in range(t_out):
                span = slice(t * per_frame, (t + 1) * per_frame)
                rows.append(
                    panel_row(
                        images[i, t * temporal_stride],
                        masks[i, t],
                        targets[i, span],
                        preds[i, span],
                        patch_size=patch_size,
                        cell_size=cell_size,
                        nbins=nbins,
                    )
                )
        else:
            rows.append(
                panel_row(
                    images[i],
                    masks[i],
                    targets[i],
                    preds[i],
                    patch_size=patch_size,
                    cell_size=cell_size,
                    nbins=nbins,
                )
            )
    gap = np.full((4, rows[0].shape[1], 3), 255, np.uint8)
    out = [rows[0]]
    for row in rows[1:]:
        out += [gap, row]
    return np.concatenate(out, axis=0)


def write_png(path: str, image: np.ndarray) -> str:
    files.make_dirs(str(path).rsplit("/", 1)[0] if "/" in str(path) else ".")
    with epath.Path(path).open("wb") as f:
        Image.fromarray(np.asarray(image, np.uint8)).save(f, format="PNG")
    return str(path)


# ---------------------------------------------------------------------------------------------
# Inputs and predictions.
# ---------------------------------------------------------------------------------------------


def check_hog_config(config: ml_collections.ConfigDict) -> None:
    if tasks.is_classification(config):
        raise ValueError("pictures show pretraining predictions; this config fine-tunes.")
    if pretrain.target_kind(config) != "hog":
        raise ValueError(
            "pictures draw HOG glyphs, but this run predicts pixels (config.target='pixels')."
        )


def validation_batch(
    config: ml_collections.ConfigDict,
    spec,
    num: int,
    *,
    split: str = "validation",
    workdir: str | None = None,
    seed: int = 0,
) -> dict[str, np.ndarray]:
    """The first ``num`` evaluation views of ``split`` (fewer if the split is smaller; resize +
    centre crop; for video one centre clip) with masks drawn by the config's generator from
    ``seed``. Every host reads the same views, so the pictures are identical on all of them."""
    views_setting = dict(num_clips=1, num_crops=1, worker_count=0)
    ds, _ = streams.eval_stream(
        config, spec, workdir, per_host_batch=num, split=split, views=views_setting, shard=(0, 1)
    )
    iterator = iter(ds)
    try:
        batch = next(iterator)
    finally:
        close = getattr(iterator, "close", None)
        if close is not None:  # no reader threads or workers left behind
            close()
    views = np.asarray(batch["image"])[np.asarray(batch["valid"], bool)]  # not the padding
    if not len(views):
        raise ValueError(f"split {split!r} gave no readable images to draw.")
    generator = masking.from_config(config.mask, grid=pretrain.mask_grid(config, spec))
    rng = np.random.default_rng(seed)
    masks = np.stack([generator(rng) for _ in range(len(views))])
    return {"image": views, "mask": masks}


def make_outputs_fn(graphdef: nnx.GraphDef, config, state_sharding: Any = None, mesh=None):
    """Jitted (state, batch) -> (pred, target, loss mask) of the model part of ``state``
    (a (model, optimizer[, ema]) state, or a model state alone). With a mesh the batch is
    replicated, so a few images work on any number of devices."""

    def outputs(state, batch):
        model = nnx.merge(graphdef, state)
        model = model[0] if isinstance(model, tuple) else model
        return pretrain.outputs(model, batch, config)

    if mesh is None:
        return jax.jit(outputs)
    replicated = sharding.replicated(mesh)
    return jax.jit(outputs, in_shardings=(state_sharding, replicated), out_shardings=replicated)


def render(config, spec, batch: Mapping[str, np.ndarray], pred, target, loss_mask) -> np.ndarray:
    pred, target, loss_mask = (np.asarray(jax.device_get(x)) for x in (pred, target, loss_mask))
    b = loss_mask.shape[0]
    masks = loss_mask.reshape(b, *spec.grid)
    return picture(
        np.asarray(batch["image"]),
        masks,
        target,
        pred,
        patch_size=spec.patch_size,
        cell_size=int(config.hog.cell_size),
        nbins=int(config.hog.nbins),
        temporal_stride=spec.tubelet if spec.is_video else 1,
    )


class TrainingPictures:
    """The picture of a fixed validation batch, drawn from the training state every
    ``config.visualize_every_steps`` steps into ``workdir/pictures/step_<N>.png``.
    ``outputs`` is a ``make_outputs_fn`` for the training state."""

    def __init__(self, config: ml_collections.ConfigDict, spec, outputs: Callable, workdir: str):
        check_hog_config(config)
        self.config, self.spec, self.outputs, self.workdir = config, spec, outputs, workdir
        num = int(config.get("visualize_images", 4) or 4)
        self.batch = validation_batch(
            config,
            spec,
            num,
            split=config.get("visualize_split", "validation"),
            workdir=workdir,
        )

    def __call__(self, state, step: int) -> tuple[str, np.ndarray]:
        pred, target, loss_mask = self.outputs(state, self.batch)
        image = render(self.config, self.spec, self.batch, pred, target, loss_mask)
        path = files.join(self.workdir, "pictures", f"step_{step:07d}.png")
        if jax.process_index() == 0:
            write_png(path, image)
        return path, image


def from_checkpoint(
    path: str, num: int, split: str = "validation", workdir: str | None = None, seed: int = 0
) -> np.ndarray:
    """The picture for the weights in a checkpoint (its recorded config), on one device."""
    flat, meta = checkpoint.load_weights(path)
    config = checkpoint.config_from_meta(meta)
    check_hog_config(config)
    task = tasks.from_config(config)
    model = models.from_config(config.model, nnx.Rngs(0), target_size=task.target_size)
    graphdef, state = nnx.split(model)
    try:
        weights.assign(state, flat, adapt=False)
    except ValueError as e:
        raise ValueError(f"checkpoint {path}: {e}") from e
    batch = validation_batch(config, model.spec, num, split=split, workdir=workdir, seed=seed)
    pred, target, loss_mask = make_outputs_fn(graphdef, config)(state, batch)
    return render(config, model.spec, batch, pred, target, loss_mask)


if __name__ == "__main__":
    runpy.run_module("maskfeat_jax.commands.visualize", run_name="__main__", alter_sys=True)
