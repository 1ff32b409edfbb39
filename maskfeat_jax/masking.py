"""Host-side mask generators for MaskFeat pretraining, plus mask upsampling.

Two generators reproduce the SlowFast MaskFeat data-loader masks:

* ``BlockMaskGenerator`` (images, ``kind='block'``): BEiT-style block-wise
  masking on a (H, W) grid of tokens, as SlowFast's 2-D ``MaskingGenerator``
  used by its ImageNet loader. With the defaults (grid 14x14, ratio 0.4):
  ``num = round(H*W*ratio) = 78``, ``min_patches = num // 5 = 15``,
  ``max_patches = num``, aspect ratio log-uniform in ``[0.3, 1/0.3]``.
  Each block draws an area ``~ U(min, min(remaining, max))`` and an aspect
  ``ar``; ``h = round(sqrt(area*ar))``, ``w = round(sqrt(area/ar))``; it must
  satisfy ``h < H`` and ``w < W``; top/left are uniform over every position
  where the block fits. The block is applied only if it masks ``0 < new <=
  min(remaining, max)`` new cells; up to 10 attempts per block. Generation
  stops when ``num`` cells are masked or when a block adds nothing, so a mask
  can hold fewer than ``num`` cells (SlowFast measured: mean 77.54, min 70,
  exactly 78 in 71% of 2000 draws). ``exact=True`` instead keeps drawing
  blocks until exactly ``num`` cells are masked (mmpretrain's
  ``BEiTMaskGenerator`` behaviour); every draw then has the same count.

* ``CubeMaskGenerator`` (video, ``kind='cube'``): SlowFast's
  ``MaskingGenerator3D`` on a (T, H, W) grid of mask units (default 8x7x7;
  one unit = 2 frames x 32x32 px for MViT-S 16x4). ``num = round(T*H*W*ratio)
  = 157``, ``max_patches = H*W = 49``, ``min_patches = max // 5 = 9``. Unlike
  the 2-D generator the spatial area is drawn from ``U(min, max)`` (not capped
  by what remains). The temporal extent ``t`` is uniform in ``[1, T]``;
  front/top/left are uniform; a cube is applied only if it adds ``0 < new <=
  remaining`` cells; up to 100 attempts per cube; stop at ``num`` or when a
  cube adds nothing (SlowFast measured mean 155.65, min 143).

Both take a ``np.random.Generator`` and return a boolean array of the grid
shape (True = masked), so results are reproducible per seed. Random draws use
the same distributions as the reference (``random.uniform`` on the real
interval, inclusive ``randint``), not the same bit stream.

``upsample_mask`` maps mask units to token grids by integer nearest
upsampling (SlowFast uses ``F.interpolate`` with the default 'nearest'), e.g.
(B, 8, 7, 7) -> (B, 8, 14, 14) for output tokens and -> (B, 8, 56, 56) for
MViT input tokens. For images one unit is one token, so no upsampling.

Config (``from_config``)::

    config.mask = dict(kind='block', grid=(14, 14), ratio=0.4, min_aspect=0.3,
                       max_aspect=None, min_patches=None, max_patches=None,
                       exact=False, max_attempts=10)
    config.mask = dict(kind='cube', grid=(8, 7, 7), ratio=0.4, min_aspect=0.3,
                       max_aspect=None, min_patches=None, max_patches=None,
                       max_attempts=100)

``None`` entries take the SlowFast defaults described above; ``grid=None``
takes the ``grid`` argument of ``from_config`` (the model's token grid).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np

__all__ = [
    "BlockMaskGenerator",
    "CubeMaskGenerator",
    "MaskGenerator",
    "from_config",
    "make_mask_generator",
    "upsample_mask",
    "upsample_mask_to",
]

# Exact mode can in principle stall (e.g. only huge blocks are drawn); this
# bounds the number of consecutive empty rounds before giving up loudly.
_EXACT_MAX_EMPTY_ROUNDS = 10_000


def _block_size(area: float, aspect: float) -> tuple[int, int]:
    # Python's round (half to even), as in the reference.
    return (int(round(math.sqrt(area * aspect))), int(round(math.sqrt(area / aspect))))


def _check_grid(grid: Any, ndim: int, kind: str) -> tuple[int, ...]:
    try:
        grid = tuple(int(g) for g in grid)
    except TypeError:
        raise ValueError(
            f"mask grid for kind={kind!r} must be a sequence of {ndim} ints, got {grid!r}"
        ) from None
    if len(grid) != ndim:
        raise ValueError(
            f"mask grid for kind={kind!r} must have {ndim} entries "
            f"({'(T, H, W)' if ndim == 3 else '(H, W)'}), got {grid!r}"
        )
    if any(g <= 0 for g in grid):
        raise ValueError(f"mask grid sizes must be positive, got {grid!r}")
    h, w = grid[-2:]
    if h < 2 or w < 2:
        raise ValueError(
            f"mask grid {grid!r} is too small: blocks need h < H and w < W, "
            "so the spatial grid must be at least 2x2; use a larger grid"
        )
    return grid


def _check_ratio(ratio: float) -> float:
    ratio = float(ratio)
    if not 0.0 < ratio < 1.0:
        raise ValueError(
            f"mask ratio must be in the open interval (0, 1), got {ratio}; MaskFeat uses 0.4"
        )
    return ratio


def _check_aspect(min_aspect: float, max_aspect: float | None):
    min_aspect = float(min_aspect)
    if not 0.0 < min_aspect <= 1.0:
        raise ValueError(
            f"min_aspect must be in (0, 1], got {min_aspect}; the aspect "
            "range is [min_aspect, 1/min_aspect] (MaskFeat uses 0.3)"
        )
    max_aspect = 1.0 / min_aspect if max_aspect is None else float(max_aspect)
    if max_aspect < min_aspect:
        raise ValueError(
            f"max_aspect ({max_aspect}) must be >= min_aspect ({min_aspect}); "
            "leave max_aspect=None to use 1/min_aspect"
        )
    return min_aspect, max_aspect


def _check_fits(min_area: int, height: int, width: int, lo: float, hi: float, what: str) -> None:
    """Refuses a minimum block area that can never round to h < H, w < W."""
    if min_area <= 0:
        return
    # round(sqrt(a*ar)) <= H-1  <=>  a*ar < (H-0.5)^2 (ignoring exact ties),
    # so some ar in [lo, hi] must lie in the open interval (ar_low, ar_high).
    ar_low = min_area / (width - 0.5) ** 2
    ar_high = (height - 0.5) ** 2 / min_area
    if not (ar_low < hi and lo < ar_high and ar_low < ar_high):
        raise ValueError(
            f"{what}={min_area} cannot fit a block with h < {height} and "
            f"w < {width} for aspect ratios in [{lo:.3g}, {hi:.3g}]; lower "
            f"{what}, widen the aspect range or use a larger grid"
        )


def _check_min_max(min_patches: Any, max_patches: Any, default_min: int, default_max: int):
    max_p = default_max if max_patches is None else int(max_patches)
    if max_p < 1:
        raise ValueError(f"max_patches must be >= 1, got {max_p}")
    min_p = default_min if min_patches is None else int(min_patches)
    if min_p < 0:
        raise ValueError(f"min_patches must be >= 0, got {min_p}")
    if min_p > max_p:
        raise ValueError(
            f"min_patches ({min_p}) must not exceed max_patches ({max_p}); "
            "lower min_patches or raise max_patches"
        )
    return min_p, max_p


def _place_first(mask: np.ndarray, candidates: Iterable, cap: int, limited_axes: Sequence[int]):
    """Applies the first candidate box that adds ``0 < new <= cap`` cells.

    ``candidates`` yields ``(sizes, uniforms)`` per attempt: the box extent
    per axis and one uniform in [0, 1) per axis that places the start
    uniformly in ``[0, dim - size]`` (the reference's inclusive randint). A
    candidate must be strictly smaller than the grid along ``limited_axes``
    (the reference's ``h < H and w < W``). Returns ``(starts, sizes, new)``
    or None; ``mask`` is updated in place.
    """
    dims = mask.shape
    for sizes, us in candidates:
        if any(sizes[ax] >= dims[ax] for ax in limited_axes):
            continue
        starts = tuple(int(u * (d - z + 1)) for u, d, z in zip(us, dims, sizes))
        region = mask[tuple(slice(s, s + z) for s, z in zip(starts, sizes))]
        new = math.prod(sizes) - int(np.count_nonzero(region))
        # A box that would overshoot is dropped entirely (not clipped).
        if 0 < new <= cap:
            region[...] = True
            return starts, sizes, new
    return None


class _MaskGeneratorBase:
    """What the block and cube generators share: validation of the common settings, the
    grid accessors and sampling without box records. Subclasses are frozen dataclasses
    with ``grid``, ``ratio``, ``min/max_patches``, ``min/max_aspect``, ``max_attempts``."""

    def _validate(
        self, ndim: int, kind: str, unit: str, default_max, min_of_max: bool, **extra
    ) -> None:
        """Checks and normalizes the settings. ``default_max(grid, num)`` is the largest area
        per block when ``max_patches`` is None; the smallest defaults to ``max_patches // 5``
        if ``min_of_max`` (SlowFast's 3-D generator) else ``num // 5`` (its 2-D one)."""
        grid = _check_grid(self.grid, ndim, kind)
        ratio = _check_ratio(self.ratio)
        num = int(round(math.prod(grid) * ratio))
        if num < 1:
            raise ValueError(
                f"ratio {ratio} masks no {unit} of a {grid} grid "
                f"(round({math.prod(grid)}*{ratio}) = 0); raise the ratio or use a larger grid"
            )
        lo, hi = _check_aspect(self.min_aspect, self.max_aspect)
        max_p = default_max(grid, num) if self.max_patches is None else int(self.max_patches)
        default_min = max_p // 5 if min_of_max else num // 5
        min_p, max_p = _check_min_max(self.min_patches, max_p, default_min, max_p)
        _check_fits(min_p, grid[-2], grid[-1], lo, hi, "min_patches")
        if int(self.max_attempts) < 1:
            raise ValueError(f"max_attempts must be >= 1, got {self.max_attempts}")
        fields = dict(
            grid=grid,
            ratio=ratio,
            min_aspect=lo,
            max_aspect=hi,
            min_patches=min_p,
            max_patches=max_p,
            max_attempts=int(self.max_attempts),
            **extra,
        )
        for name, value in fields.items():
            object.__setattr__(self, name, value)  # frozen dataclass

    @property
    def shape(self) -> tuple[int, ...]:
        return self.grid

    @property
    def num_masking_patches(self) -> int:
        return int(round(math.prod(self.grid) * self.ratio))

    def __call__(self, rng: np.random.Generator) -> np.ndarray:
        return self.sample_with_boxes(rng, record=False)[0]


@dataclasses.dataclass(frozen=True)
class BlockMaskGenerator(_MaskGeneratorBase):
    """BEiT/SlowFast block-wise image mask on an (H, W) token grid.

    Call with a ``np.random.Generator``; returns ``bool[H, W]``.
    ``min_patches=None`` -> ``num // 5``; ``max_patches=None`` -> ``num``;
    ``max_aspect=None`` -> ``1 / min_aspect``. See the module docstring.
    """

    grid: tuple[int, int] = (14, 14)
    ratio: float = 0.4
    min_patches: int | None = None
    max_patches: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None
    exact: bool = False
    max_attempts: int = 10

    def __post_init__(self):
        self._validate(
            2, "block", "cell", lambda grid, num: num, min_of_max=False, exact=bool(self.exact)
        )

    def sample_with_boxes(self, rng: np.random.Generator, *, record: bool = True):
        """Returns ``(mask, boxes)``; boxes are ``(top, left, h, w)`` in the
        order they were applied (empty list when ``record=False``)."""
        num = self.num_masking_patches
        log_lo, log_hi = math.log(self.min_aspect), math.log(self.max_aspect)
        mask = np.zeros(self.grid, dtype=bool)
        boxes = []
        count = 0
        empty_rounds = 0
        while count < num:
            cap = min(num - count, self.max_patches)
            # One draw per round; consuming attempts in order until the
            # first acceptance equals the reference's sequential retries.
            u = rng.random((self.max_attempts, 4)).tolist()
            box = _place_first(
                mask,
                (
                    # Like random.uniform(min, cap), also when cap < min (few
                    # cells remain): the area then lies in [cap, min].
                    (
                        _block_size(
                            self.min_patches + (cap - self.min_patches) * ua,
                            math.exp(log_lo + (log_hi - log_lo) * ub),
                        ),
                        (ut, ul),
                    )
                    for ua, ub, ut, ul in u
                ),
                cap,
                (0, 1),
            )
            if box is None:
                if not self.exact:
                    break
                empty_rounds += 1
                if empty_rounds > _EXACT_MAX_EMPTY_ROUNDS:
                    raise RuntimeError(
                        f"exact block masking stalled at {count}/{num} cells "
                        f"on grid {self.grid}; relax min_patches/min_aspect"
                    )
                continue
            empty_rounds = 0
            count += box[2]
            if record:
                boxes.append(box[0] + box[1])
        return mask, boxes


@dataclasses.dataclass(frozen=True)
class CubeMaskGenerator(_MaskGeneratorBase):
    """SlowFast MaskFeat cube mask on a (T, H, W) grid of mask units.

    Call with a ``np.random.Generator``; returns ``bool[T, H, W]``.
    ``max_patches=None`` -> ``H*W`` (largest spatial area per cube);
    ``min_patches=None`` -> ``max_patches // 5``. See the module docstring.
    """

    grid: tuple[int, int, int] = (8, 7, 7)
    ratio: float = 0.4
    min_patches: int | None = None
    max_patches: int | None = None
    min_aspect: float = 0.3
    max_aspect: float | None = None
    max_attempts: int = 100

    def __post_init__(self):
        # The largest cube covers the whole spatial grid (area drawn from U(min, max)).
        self._validate(3, "cube", "unit", lambda grid, num: grid[1] * grid[2], min_of_max=True)

    def sample_with_boxes(self, rng: np.random.Generator, *, record: bool = True):
        """Returns ``(mask, boxes)``; boxes are ``(front, top, left, t, h,
        w)`` in application order (empty list when ``record=False``)."""
        frames = self.grid[0]
        num = self.num_masking_patches
        log_lo, log_hi = math.log(self.min_aspect), math.log(self.max_aspect)
        mask = np.zeros(self.grid, dtype=bool)
        boxes = []
        count = 0
        while count < num:
            remaining = num - count
            u = rng.random((self.max_attempts, 6)).tolist()
            box = _place_first(
                mask,
                (
                    # Spatial area ignores `remaining` (differs from 2-D); the
                    # temporal extent is uniform in [1, T].
                    (
                        (min(int(ut * frames), frames - 1) + 1,)
                        + _block_size(
                            self.min_patches + (self.max_patches - self.min_patches) * ua,
                            math.exp(log_lo + (log_hi - log_lo) * ub),
                        ),
                        (uf, uh, uw),
                    )
                    for ua, ub, ut, uf, uh, uw in u
                ),
                remaining,
                (1, 2),
            )
            if box is None:
                break
            count += box[2]
            if record:
                boxes.append(box[0] + box[1])
        return mask, boxes


MaskGenerator = BlockMaskGenerator | CubeMaskGenerator

_KINDS = {"block": BlockMaskGenerator, "cube": CubeMaskGenerator}


def make_mask_generator(kind: str, **params) -> MaskGenerator:
    """Builds a generator: ``kind`` is 'block' (images) or 'cube' (video).

    ``params`` are the dataclass fields of the chosen generator (grid, ratio,
    min_patches, max_patches, min_aspect, max_aspect, max_attempts, and exact
    for 'block'). Unknown kinds or option names raise ValueError.
    """
    if kind not in _KINDS:
        raise ValueError(
            f"unknown mask kind {kind!r}; use one of {sorted(_KINDS)} "
            "('block' for images, 'cube' for video)"
        )
    cls = _KINDS[kind]
    allowed = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - allowed)
    if unknown:
        raise ValueError(
            f"unknown option(s) {unknown} for mask kind {kind!r}; allowed: {sorted(allowed)}"
        )
    return cls(**params)


def from_config(cfg: Mapping[str, Any] | Any, grid: Sequence[int] | None = None) -> MaskGenerator:
    """Builds a generator from ``config.mask`` (ConfigDict or mapping).

    ``grid`` fills in ``cfg.grid`` when that is None/absent (e.g. the model's
    token grid); an explicit ``cfg.grid`` wins. Absent both, the generator's
    default grid is used; an explicit ``grid=None`` with no fallback raises.
    """
    if hasattr(cfg, "to_dict"):
        cfg = cfg.to_dict()
    params = dict(cfg)
    if "kind" not in params:
        raise ValueError(
            "mask config needs a 'kind' entry ('block' for images or 'cube' for video)"
        )
    kind = params.pop("kind")
    if params.get("grid") is None:
        if grid is not None:
            params["grid"] = tuple(grid)
        elif "grid" in params:
            raise ValueError(
                "config.mask.grid is None and no token grid was given; set it "
                "(e.g. (14, 14) for images, (8, 7, 7) for video) or pass grid="
            )
    return make_mask_generator(kind, **params)


def _module_of(x):
    """Returns the array namespace (numpy or jax.numpy) that owns ``x``."""
    if isinstance(x, np.ndarray):
        return np
    import jax.numpy as jnp  # Only needed for device arrays.

    return jnp


def upsample_mask(mask, factors: Sequence[int]):
    """Nearest upsampling of the trailing ``len(factors)`` axes by integers.

    E.g. ``upsample_mask(m, (1, 2, 2))`` maps (B, 8, 7, 7) -> (B, 8, 14, 14)
    and ``(1, 8, 8)`` -> (B, 8, 56, 56). Works on NumPy and jax.numpy arrays
    and returns the same kind of array.
    """
    factors = tuple(factors)
    if len(factors) > mask.ndim:
        raise ValueError(f"{len(factors)} factors given for a {mask.ndim}-d mask")
    for f in factors:
        if int(f) != f or f < 1:
            raise ValueError(f"upsampling factors must be positive ints, got {factors}")
    xp = _module_of(mask)
    out = mask
    for axis, f in zip(range(-len(factors), 0), factors):
        if f != 1:
            out = xp.repeat(out, int(f), axis=axis)
    return out


def upsample_mask_to(mask, shape: Sequence[int]):
    """Upsamples the trailing axes of ``mask`` to ``shape`` (integer ratios)."""
    shape = tuple(int(s) for s in shape)
    src = tuple(mask.shape[-len(shape) :]) if shape else ()
    if len(shape) > mask.ndim or any(s % m for s, m in zip(shape, src)):
        raise ValueError(
            f"cannot upsample mask trailing shape {src} to {shape}: target "
            "sizes must be integer multiples"
        )
    return upsample_mask(mask, tuple(s // m for s, m in zip(shape, src)))
