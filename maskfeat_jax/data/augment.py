"""Fine-tuning augmentations: timm-style RandAugment and random erasing.

The reference fine-tuning recipes use timm's ``rand_augment_transform`` (image
``rand-m9-mstd0.5-inc1``, video ``rand-m7-mstd0.5-inc1``) and
``RandomErasing(mode='pixel')``. timm draws from Python's global ``random``,
which is neither reproducible per element nor resumable, and needs torch. Here
every draw comes from the ``np.random.Generator`` that grain hands to each
element, in the same order and with the same meaning as timm's draws, so the
pipeline stays deterministic and checkpointable on torch-free TPU hosts.

* ``RandAugment`` works on uint8 ``[H, W, 3]`` images or ``[T, H, W, 3]`` clips
  (one op sequence for the whole clip, as SlowFast does for video).
* Random erasing is split: ``sample_erase_boxes`` draws the boxes on the host
  (images stay uint8 there), ``erase`` fills them with N(0, 1) noise on the
  device after normalization.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageOps

__all__ = [
    "IMAGENET_MEAN",
    "INCREASING_OPS",
    "RAND_OPS",
    "RandAugment",
    "RandAugmentConfig",
    "SampledOp",
    "erase",
    "parse_rand_augment_spec",
    "sample_erase_boxes",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)

# Magnitudes are on a 0..10 scale; level functions divide by this.
_LEVEL_DENOM = 10.0

# timm's _RAND_TRANSFORMS (inc0) and _RAND_INCREASING_TRANSFORMS (inc1), same order.
RAND_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "Posterize",
    "Solarize",
    "SolarizeAdd",
    "Color",
    "Contrast",
    "Brightness",
    "Sharpness",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)
INCREASING_OPS = (
    "AutoContrast",
    "Equalize",
    "Invert",
    "Rotate",
    "PosterizeIncreasing",
    "SolarizeIncreasing",
    "SolarizeAdd",
    "ColorIncreasing",
    "ContrastIncreasing",
    "BrightnessIncreasing",
    "SharpnessIncreasing",
    "ShearX",
    "ShearY",
    "TranslateXRel",
    "TranslateYRel",
)

# Ops whose argument gets a random sign (one extra draw, after the magnitude draw).
_SIGNED_OPS = frozenset(
    {
        "Rotate",
        "ShearX",
        "ShearY",
        "TranslateXRel",
        "TranslateYRel",
        "ColorIncreasing",
        "ContrastIncreasing",
        "BrightnessIncreasing",
        "SharpnessIncreasing",
    }
)
_ENHANCERS = {
    "Color": ImageEnhance.Color,
    "Contrast": ImageEnhance.Contrast,
    "Brightness": ImageEnhance.Brightness,
    "Sharpness": ImageEnhance.Sharpness,
}
_RESAMPLING = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


# --------------------------------------------------------------------------- spec parsing


@dataclasses.dataclass(frozen=True)
class RandAugmentConfig:
    """Parsed ``rand-...`` spec; defaults are timm's."""

    magnitude: int = 10
    num_layers: int = 2
    magnitude_std: float = 0.0  # inf means uniform in [0, magnitude]
    magnitude_max: int | None = None  # None means clip to 10
    increasing: bool = False
    prob: float = 0.5


def parse_rand_augment_spec(spec: str) -> RandAugmentConfig:
    """Parses timm's RandAugment config string, e.g. ``rand-m9-mstd0.5-inc1``.

    Sections after ``rand``: ``m<int>`` magnitude, ``n<int>`` ops per image,
    ``mstd<float>`` magnitude noise (> 100 means uniform), ``mmax<int>`` clip
    bound, ``inc<0|1>`` increasing op set, ``p<float>`` per-op probability.
    Anything else (including timm's ``t<set>`` transform sets, repeated keys
    and empty sections, which timm skips silently) raises ``ValueError``.
    """
    sections = spec.split("-")
    if sections[0] != "rand":
        raise ValueError(f"RandAugment spec {spec!r} must start with 'rand'")
    values: dict[str, object] = {}
    for section in sections[1:]:
        if section.startswith("t"):
            raise ValueError(f"RandAugment spec {spec!r}: transform sets ({section!r}) unsupported")
        match = re.fullmatch(r"([a-z]+)(\d.*)", section)
        if match is None:
            raise ValueError(f"RandAugment spec {spec!r}: cannot parse section {section!r}")
        key, text = match.groups()
        if key in values:
            raise ValueError(f"RandAugment spec {spec!r}: section {key!r} given twice")
        values[key] = _parse_section(spec, key, text)
    return RandAugmentConfig(**{_CONFIG_FIELDS[key]: value for key, value in values.items()})


_CONFIG_FIELDS = {
    "m": "magnitude",
    "n": "num_layers",
    "mstd": "magnitude_std",
    "mmax": "magnitude_max",
    "inc": "increasing",
    "p": "prob",
}


def _parse_section(spec: str, key: str, text: str) -> object:
    def fail(why: str) -> ValueError:
        return ValueError(f"RandAugment spec {spec!r}: section {key + text!r} {why}")

    if key not in _CONFIG_FIELDS:
        raise fail(f"has unknown key {key!r} (known: {', '.join(_CONFIG_FIELDS)})")
    is_float = key in ("mstd", "p")
    try:
        value = float(text) if is_float else int(text)
    except ValueError:
        raise fail(f"needs {'a number' if is_float else 'an integer'}") from None
    if key == "mstd":
        return math.inf if value > 100 else value  # timm: mstd > 100 means uniform sampling
    if key == "mmax" and value < 1:
        raise fail("must be >= 1")  # timm would silently fall back to 10 for mmax0
    if key == "inc":
        if value not in (0, 1):
            raise fail("must be inc0 or inc1")
        return bool(value)
    if key == "p" and not 0.0 <= value <= 1.0:
        raise fail("must be a probability in [0, 1]")
    return value


# --------------------------------------------------------------------------- ops


@dataclasses.dataclass(frozen=True)
class SampledOp:
    """One applied RandAugment op: magnitude already noised and clipped."""

    name: str
    magnitude: float
    negate: bool = False  # sign flip; only meaningful for signed ops


def _op_argument(name: str, magnitude: float, negate: bool) -> float | int | None:
    """timm's level-to-argument mapping (same float operations, same order)."""
    fraction = magnitude / _LEVEL_DENOM
    sign = -1.0 if negate and name in _SIGNED_OPS else 1.0
    if name in ("AutoContrast", "Equalize", "Invert"):
        return None
    if name == "Rotate":
        return sign * (fraction * 30.0)  # degrees
    if name in ("ShearX", "ShearY"):
        return sign * (fraction * 0.3)
    if name in ("TranslateXRel", "TranslateYRel"):
        return sign * (fraction * 0.45)  # fraction of the image side
    if name == "Posterize":
        return int(fraction * 4)  # bits kept
    if name == "PosterizeIncreasing":
        return 4 - int(fraction * 4)
    if name == "Solarize":
        return min(256, int(fraction * 256))  # threshold
    if name == "SolarizeIncreasing":
        return 256 - min(256, int(fraction * 256))
    if name == "SolarizeAdd":
        return min(128, int(fraction * 110))
    if name in _ENHANCERS:
        return fraction * 1.8 + 0.1  # blend factor in [0.1, 1.9]
    if name.removesuffix("Increasing") in _ENHANCERS:
        return max(0.1, 1.0 + sign * (fraction * 0.9))  # 1.0 is identity
    raise ValueError(f"unknown RandAugment op {name!r}")


def _lookup(frames: np.ndarray, table: Sequence[int]) -> np.ndarray:
    return np.asarray(table, dtype=np.uint8)[frames]


def _per_frame(frames: np.ndarray, transform) -> np.ndarray:
    return np.stack([np.asarray(transform(Image.fromarray(frame))) for frame in frames])


def _apply_op(
    frames: np.ndarray, op: SampledOp, fill: tuple[int, ...], resample: Image.Resampling
) -> np.ndarray:
    """Applies one op to uint8 ``[T, H, W, 3]`` frames (the same op on every frame)."""
    argument = _op_argument(op.name, op.magnitude, op.negate)
    name = op.name
    # Pure lookup-table ops run vectorised over the clip; identical to PIL's point().
    if name == "Invert":
        return 255 - frames
    if name.startswith("Posterize"):
        if argument >= 8:
            return frames
        # Zero (or fewer) bits kept gives black; newer PIL rejects bits < 1, so build the table.
        keep_mask = ~(2 ** (8 - argument) - 1)
        return _lookup(frames, [value & keep_mask for value in range(256)])
    if name.startswith("Solarize") and name != "SolarizeAdd":
        return _lookup(frames, [v if v < argument else 255 - v for v in range(256)])
    if name == "SolarizeAdd":
        return _lookup(frames, [min(255, v + argument) if v < 128 else v for v in range(256)])
    # Histogram-, blend- and resampling-based ops go through PIL frame by frame.
    if name == "AutoContrast":
        return _per_frame(frames, ImageOps.autocontrast)
    if name == "Equalize":
        return _per_frame(frames, ImageOps.equalize)
    enhancer = _ENHANCERS.get(name.removesuffix("Increasing"))
    if enhancer is not None:
        return _per_frame(frames, lambda image: enhancer(image).enhance(argument))
    if name == "Rotate":
        return _per_frame(
            frames, lambda image: image.rotate(argument, resample=resample, fillcolor=fill)
        )
    height, width = frames.shape[1:3]
    # PIL affine data maps output (x, y) to input (a*x + b*y + c, d*x + e*y + f).
    affine = {
        "ShearX": (1, argument, 0, 0, 1, 0),
        "ShearY": (1, 0, 0, argument, 1, 0),
        "TranslateXRel": (1, 0, argument * width, 0, 1, 0),
        "TranslateYRel": (1, 0, 0, 0, 1, argument * height),
    }[name]
    return _per_frame(
        frames,
        lambda image: image.transform(
            image.size, Image.Transform.AFFINE, affine, resample=resample, fillcolor=fill
        ),
    )


class RandAugment:
    """timm's RandAugment driven by a numpy Generator.

    Draw order per call (as timm): ``num_layers`` op indices at once (with
    replacement); then per chosen op: apply if ``u <= prob`` (no draw when
    prob is 1), then the magnitude (``normal(m, mstd)``, or ``uniform(0, m)``
    for infinite mstd; no draw when mstd is 0), clipped to ``[0, mmax or 10]``,
    then the sign for signed ops (negative if ``u > 0.5``). Skipped ops draw
    nothing further.

    ``mean`` sets the fill colour of rotate/shear/translate (``round(255 * m)``,
    as timm's ``img_mean``); SlowFast's video path passes no mean, i.e. grey
    128, which is ``mean=(128 / 255,) * 3``. ``image_size`` gives timm's
    ``translate_const``, which only absolute-translate ops use; neither op set
    contains them (both translate relative to the image size), so it is kept
    for parity of the hyperparameters only.
    """

    def __init__(
        self,
        spec: str,
        *,
        image_size: int | tuple[int, int],
        mean: Sequence[float] = IMAGENET_MEAN,
        interpolation: str = "bicubic",
    ):
        self.spec = spec
        self.config = parse_rand_augment_spec(spec)
        self.op_names = INCREASING_OPS if self.config.increasing else RAND_OPS
        if interpolation not in _RESAMPLING:
            raise ValueError(f"interpolation {interpolation!r} not in {sorted(_RESAMPLING)}")
        self.resample = _RESAMPLING[interpolation]
        self.fill = tuple(min(255, round(255 * channel_mean)) for channel_mean in mean)
        sides = (image_size, image_size) if isinstance(image_size, int) else image_size
        self.translate_const = int(min(sides) * 0.45)

    def sample(self, rng: np.random.Generator) -> tuple[SampledOp, ...]:
        """Draws the ops (in application order) for one image or clip."""
        config = self.config
        upper = config.magnitude_max or _LEVEL_DENOM
        chosen = rng.integers(0, len(self.op_names), size=config.num_layers)
        applied = []
        for index in chosen.tolist():
            if config.prob < 1.0 and rng.random() > config.prob:
                continue
            magnitude = float(config.magnitude)
            if config.magnitude_std == math.inf:
                magnitude = float(rng.uniform(0.0, magnitude))
            elif config.magnitude_std > 0:
                magnitude = float(rng.normal(magnitude, config.magnitude_std))
            magnitude = max(0.0, min(magnitude, upper))
            name = self.op_names[index]
            negate = name in _SIGNED_OPS and bool(rng.random() > 0.5)
            applied.append(SampledOp(name, magnitude, negate))
        return tuple(applied)

    def apply(self, frames: np.ndarray, ops: Sequence[SampledOp]) -> np.ndarray:
        """Applies ``ops`` in order to ``[H, W, 3]`` or (frame by frame) ``[T, H, W, 3]``."""
        frames = np.asarray(frames)
        if frames.dtype != np.uint8 or frames.ndim not in (3, 4) or frames.shape[-1] != 3:
            raise ValueError(
                f"expected uint8 [H, W, 3] or [T, H, W, 3], got {frames.dtype} {frames.shape}"
            )
        clip = frames[None] if frames.ndim == 3 else frames
        for op in ops:
            clip = _apply_op(clip, op, self.fill, self.resample)
        return clip[0] if frames.ndim == 3 else clip

    def __call__(self, frames: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return self.apply(frames, self.sample(rng))

    def __repr__(self) -> str:
        return f"RandAugment({self.spec!r}, fill={self.fill})"


# --------------------------------------------------------------------------- random erasing


def sample_erase_boxes(
    rng: np.random.Generator,
    height: int,
    width: int,
    *,
    probability: float,
    max_count: int = 1,
    min_area: float = 0.02,
    max_area: float = 1 / 3,
    min_aspect: float = 0.3,
    max_attempts: int = 10,
) -> np.ndarray:
    """Draws timm ``RandomErasing`` boxes as int32 ``[max_count, 4]`` rows of (top, left, h, w).

    Same draws as timm: one uniform for the erase decision (erase unless
    ``u > probability``), the box count uniform in ``[1, max_count]`` (drawn
    only when ``max_count > 1``), then per box up to ``max_attempts`` tries of
    area ``U(min_area, max_area) * H * W / count`` and log-uniform aspect in
    ``[min_aspect, 1 / min_aspect]``, rounded, accepted when ``h < H and
    w < W``, placed uniformly. Rows without a box stay zero (zero-sized boxes
    erase nothing). For a clip, draw once and use the box on every frame
    (SlowFast's ``cube`` erasing, which makes 100 attempts instead of 10).
    """
    boxes = np.zeros((max_count, 4), dtype=np.int32)
    if rng.random() > probability:
        return boxes
    count = 1 if max_count == 1 else int(rng.integers(1, max_count + 1))
    log_aspect_range = (math.log(min_aspect), math.log(1 / min_aspect))
    image_area = height * width
    for slot in range(count):
        for _ in range(max_attempts):
            target_area = float(rng.uniform(min_area, max_area)) * image_area / count
            aspect = math.exp(float(rng.uniform(*log_aspect_range)))
            # Python round() (half to even), as timm.
            box_h = int(round(math.sqrt(target_area * aspect)))
            box_w = int(round(math.sqrt(target_area / aspect)))
            if box_w < width and box_h < height:
                top = int(rng.integers(0, height - box_h + 1))
                left = int(rng.integers(0, width - box_w + 1))
                boxes[slot] = (top, left, box_h, box_w)
                break
    return boxes


def erase(images, boxes, key):
    """Replaces every pixel inside ``boxes`` with independent N(0, 1) noise (timm 'pixel' mode).

    ``images``: normalized float ``[B, H, W, C]`` or ``[B, T, H, W, C]``;
    ``boxes``: int ``[B, K, 4]`` from ``sample_erase_boxes``. For clips a box
    covers all frames, with fresh noise per frame and channel. Static shapes,
    so it jits; overlapping boxes are filled once (timm refills, same law).
    """
    import jax
    import jax.numpy as jnp

    images = jnp.asarray(images)
    boxes = jnp.asarray(boxes, dtype=jnp.int32)
    batch, height, width = images.shape[0], images.shape[-3], images.shape[-2]
    top, left, box_h, box_w = (boxes[:, :, column, None, None] for column in range(4))
    rows = jnp.arange(height)[:, None]
    cols = jnp.arange(width)[None, :]
    inside = (rows >= top) & (rows < top + box_h) & (cols >= left) & (cols < left + box_w)
    mask = inside.any(axis=1)  # [B, H, W]
    mask = mask.reshape((batch,) + (1,) * (images.ndim - 4) + (height, width, 1))
    noise = jax.random.normal(key, images.shape, images.dtype)
    return jnp.where(mask, noise, images)
