"""Short clips rendered from a still photo by a moving virtual camera.

A ``CameraPath`` is a smooth move of a crop box over a photo. Its centre
(relative coordinates, x right and y down in [0, 1]), its area (fraction of
the photo's area, the role of RandomResizedCrop's ``scale``) and its in-plane
rotation go from a start to an end value over the clip; its aspect ratio
(w / h in pixels) stays fixed. Frame ``i`` of ``n`` sits at progress
``t = i / (n - 1)``, eased by ``smoothstep`` (``ease='smooth'``, the camera
starts and stops gently) or not (``'linear'``). Centre and rotation move
linearly in the eased progress, the area geometrically (constant zoom speed).

A positive rotation turns the crop box counter-clockwise on screen, so the
content of the frames turns clockwise.

``sample_path`` draws a random path whose every frame lies inside the photo;
``render_clip`` warps the photo with each frame's affine map (PIL
``Image.transform``) into ``size x size`` frames. PIL's affine warp samples
without a low-pass filter, so a large reduction (a 512 px photo to 32 px
frames) would alias: the photo is first reduced once per clip with
``Image.resize`` (which filters) along each axis to the finest sampling that
any frame needs, and the per-frame warp then only adds the zoom and rotation.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from collections.abc import Sequence
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["CameraPath", "check_ranges", "render_clip", "sample_path"]

_EASES = ("linear", "smooth")


def _pair(value: Any, name: str) -> tuple[float, float]:
    try:
        x, y = (float(v) for v in value)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a pair (x, y) of floats, got {value!r}") from None
    if not (0.0 <= x <= 1.0 and 0.0 <= y <= 1.0):
        raise ValueError(
            f"{name} {value!r} must lie in [0, 1] x [0, 1] (relative to the photo's width and "
            "height, (0.5, 0.5) is the centre)"
        )
    return x, y


def _photo_hw(photo_shape: Sequence[int]) -> tuple[int, int]:
    try:
        height, width = (int(s) for s in tuple(photo_shape)[:2])
    except (TypeError, ValueError):
        raise ValueError(f"photo_shape must be (H, W) or (H, W, C), got {photo_shape!r}") from None
    if height < 1 or width < 1:
        raise ValueError(f"photo_shape must have positive H and W, got {photo_shape!r}")
    return height, width


@dataclasses.dataclass(frozen=True)
class CameraPath:
    """A smooth camera move over a photo (see the module docstring).

    Attributes:
      start_center, end_center: crop centre ``(x, y)`` relative to the photo.
      start_scale, end_scale: crop area as a fraction of the photo's area.
      aspect: crop width / height in pixels.
      start_rotation, end_rotation: crop rotation in degrees (counter-clockwise).
      ease: 'smooth' (smoothstep) or 'linear' progress over the clip.
    """

    start_center: tuple[float, float] = (0.5, 0.5)
    end_center: tuple[float, float] = (0.5, 0.5)
    start_scale: float = 1.0
    end_scale: float = 1.0
    aspect: float = 1.0
    start_rotation: float = 0.0
    end_rotation: float = 0.0
    ease: str = "smooth"

    def __post_init__(self):
        fields = dict(
            start_center=_pair(self.start_center, "start_center"),
            end_center=_pair(self.end_center, "end_center"),
            start_scale=float(self.start_scale),
            end_scale=float(self.end_scale),
            aspect=float(self.aspect),
            start_rotation=float(self.start_rotation),
            end_rotation=float(self.end_rotation),
        )
        for name in ("start_scale", "end_scale"):
            if not 0.0 < fields[name] <= 1.0:
                raise ValueError(
                    f"{name} must be in (0, 1] (fraction of the photo's area), got {fields[name]}"
                )
        if not (math.isfinite(fields["aspect"]) and fields["aspect"] > 0):
            raise ValueError(f"aspect (crop w / h) must be positive, got {self.aspect}")
        for name in ("start_rotation", "end_rotation"):
            if not math.isfinite(fields[name]):
                raise ValueError(f"{name} must be a finite angle in degrees, got {fields[name]}")
        if self.ease not in _EASES:
            raise ValueError(f"unknown ease {self.ease!r}; use one of {list(_EASES)}")
        for name, value in fields.items():
            object.__setattr__(self, name, value)  # frozen dataclass

    def progress(self, num_frames: int) -> np.ndarray:
        """Eased progress in [0, 1] of each frame (0 for a single frame)."""
        num_frames = _check_count(num_frames, "num_frames")
        t = np.linspace(0.0, 1.0, num_frames) if num_frames > 1 else np.zeros(1)
        return t * t * (3.0 - 2.0 * t) if self.ease == "smooth" else t

    def frame_params(self, num_frames: int) -> np.ndarray:
        """Per frame ``(cx, cy, scale, rotation_deg)``, float64 ``[num_frames, 4]``."""
        p = self.progress(num_frames)
        (x0, y0), (x1, y1) = self.start_center, self.end_center
        scale = self.start_scale * (self.end_scale / self.start_scale) ** p
        rotation = self.start_rotation + (self.end_rotation - self.start_rotation) * p
        return np.stack([x0 + (x1 - x0) * p, y0 + (y1 - y0) * p, scale, rotation], axis=1)

    def frame_boxes(self, photo_shape: Sequence[int], num_frames: int) -> np.ndarray:
        """Per frame crop box in pixels ``(cx, cy, w, h, rotation_deg)`` for a photo of
        ``photo_shape`` (H, W[, C]), float64 ``[num_frames, 5]``."""
        height, width = _photo_hw(photo_shape)
        cx, cy, scale, rotation = self.frame_params(num_frames).T
        area = scale * height * width
        w, h = np.sqrt(area * self.aspect), np.sqrt(area / self.aspect)
        return np.stack([cx * width, cy * height, w, h, rotation], axis=1)

    def frame_corners(self, photo_shape: Sequence[int], num_frames: int) -> np.ndarray:
        """Corners ``(x, y)`` in pixels of each frame's rotated box, ``[num_frames, 4, 2]``
        (top-left, top-right, bottom-right, bottom-left as seen in the frame)."""
        cx, cy, w, h, rotation = self.frame_boxes(photo_shape, num_frames).T
        theta = np.deg2rad(rotation)
        # The box's x axis is (cos, -sin) and its y axis (sin, cos) in photo pixels.
        ux = np.stack([np.cos(theta), -np.sin(theta)], axis=1) * (w / 2)[:, None]
        uy = np.stack([np.sin(theta), np.cos(theta)], axis=1) * (h / 2)[:, None]
        centre = np.stack([cx, cy], axis=1)
        signs = ((-1, -1), (1, -1), (1, 1), (-1, 1))
        return np.stack([centre + sx * ux + sy * uy for sx, sy in signs], axis=1)

    def fits(self, photo_shape: Sequence[int], num_frames: int = 33, tol: float = 1e-6) -> bool:
        """Whether every one of ``num_frames`` frames lies inside the photo."""
        height, width = _photo_hw(photo_shape)
        corners = self.frame_corners(photo_shape, num_frames)
        x, y = corners[..., 0], corners[..., 1]
        return bool(
            (x >= -tol).all()
            and (x <= width + tol).all()
            and (y >= -tol).all()
            and (y <= height + tol).all()
        )


def _check_count(value: Any, name: str) -> int:
    try:
        value = operator.index(value)
    except TypeError:
        raise ValueError(f"{name} must be an int, got {value!r}") from None
    if value < 1:
        raise ValueError(f"{name} must be >= 1, got {value}")
    return value


def check_ranges(
    scale=(0.5, 1.0),
    ratio=(3 / 4, 4 / 3),
    max_shift: float = 0.25,
    max_zoom: float = 1.3,
    max_rotation: float = 10.0,
):
    """Validates ``sample_path``'s ranges; returns them as floats."""
    scale = tuple(float(s) for s in scale)
    ratio = tuple(float(r) for r in ratio)
    if len(scale) != 2 or not 0 < scale[0] <= scale[1] <= 1:
        raise ValueError(
            f"crop scale must be (lo, hi) with 0 < lo <= hi <= 1 (fractions of the photo's "
            f"area), got {scale}"
        )
    if len(ratio) != 2 or not 0 < ratio[0] <= ratio[1] or not math.isfinite(ratio[1]):
        raise ValueError(f"crop ratio must be (lo, hi) with 0 < lo <= hi (w / h), got {ratio}")
    if not 0.0 <= float(max_shift) <= 1.0:
        raise ValueError(
            f"max_shift must be in [0, 1] (fraction of the photo's size), got {max_shift}"
        )
    if not 1.0 <= float(max_zoom) < math.inf:
        raise ValueError(f"max_zoom must be >= 1 (1 = no zoom), got {max_zoom}")
    if not 0.0 <= float(max_rotation) <= 90.0:
        raise ValueError(f"max_rotation must be in [0, 90] degrees, got {max_rotation}")
    return scale, ratio, float(max_shift), float(max_zoom), float(max_rotation)


def _max_extent(w: float, h: float, max_angle: float) -> tuple[float, float]:
    """Largest axis-aligned extent (x, y) of a w x h box turned by any angle in
    [-max_angle, max_angle] radians (max_angle <= pi / 2)."""
    diag = math.hypot(w, h)
    phi = math.atan2(h, w)  # w|cos|+h|sin| grows up to |angle| = phi, then shrinks
    ex = diag if max_angle >= phi else w * math.cos(max_angle) + h * math.sin(max_angle)
    ey = (
        diag
        if max_angle >= math.pi / 2 - phi
        else w * math.sin(max_angle) + h * math.cos(max_angle)
    )
    return ex, ey


def sample_path(
    rng: np.random.Generator,
    photo_shape: Sequence[int],
    *,
    scale=(0.5, 1.0),
    ratio=(3 / 4, 4 / 3),
    max_shift: float = 0.25,
    max_zoom: float = 1.3,
    max_rotation: float = 10.0,
    ease: str = "smooth",
) -> CameraPath:
    """Random camera path whose every frame lies inside a photo of ``photo_shape``.

    The start crop is drawn as RandomResizedCrop draws a box: area uniform in
    ``scale`` times the photo's area, aspect (w / h) log-uniform in ``ratio``,
    centre uniform over the positions where it fits. The end crop is zoomed by
    a factor log-uniform in ``[1 / max_zoom, max_zoom]`` (side length), its
    centre moved by up to ``max_shift`` of the photo's width / height along each
    axis; both rotations are uniform in ``[-max_rotation, max_rotation]``
    degrees. If the largest box at the largest angle does not fit the photo,
    both areas shrink by the same factor until it does; centres are clipped
    to where it fits. Since the area and angle move monotonically, every frame
    then fits. Uses 9 uniforms from ``rng``.

    Args:
      rng: source of randomness (e.g. grain's per-element generator).
      photo_shape: ``(H, W)`` or ``(H, W, C)`` of the photo.
      scale, ratio: RandomResizedCrop area fraction and aspect ranges.
      max_shift: largest centre move per axis, as a fraction of the photo size.
      max_zoom: largest zoom factor (>= 1) between the first and last frames.
      max_rotation: largest absolute rotation in degrees (<= 90).
      ease: 'smooth' or 'linear' progress (see ``CameraPath``).
    """
    height, width = _photo_hw(photo_shape)
    scale, ratio, max_shift, max_zoom, max_rotation = check_ranges(
        scale, ratio, max_shift, max_zoom, max_rotation
    )
    u_area, u_ratio, u_zoom, u_r0, u_r1, u_x, u_y, u_dx, u_dy = rng.random(9).tolist()
    area0 = scale[0] + (scale[1] - scale[0]) * u_area
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
    zoom = math.exp(math.log(max_zoom) * (2.0 * u_zoom - 1.0))
    area1 = area0 / zoom**2  # zoom > 1 moves in: a smaller box
    rot0 = max_rotation * (2.0 * u_r0 - 1.0)
    rot1 = max_rotation * (2.0 * u_r1 - 1.0)

    # Worst frame: the largest box at the largest angle (both are monotone in t).
    big = max(area0, area1) * height * width
    ex, ey = _max_extent(
        math.sqrt(big * aspect), math.sqrt(big / aspect), math.radians(max(abs(rot0), abs(rot1)))
    )
    shrink = min(1.0, width / ex, height / ey)
    if shrink < 1.0:
        shrink *= 1.0 - 1e-9  # keep the corners inside despite rounding
        area0, area1 = area0 * shrink**2, area1 * shrink**2
        ex, ey = ex * shrink, ey * shrink
    # Centre range that keeps the worst box inside, in relative coordinates.
    lo_x, lo_y = ex / (2 * width), ey / (2 * height)
    hi_x, hi_y = 1.0 - lo_x, 1.0 - lo_y
    x0 = lo_x + (hi_x - lo_x) * u_x
    y0 = lo_y + (hi_y - lo_y) * u_y
    x1 = min(max(x0 + max_shift * (2.0 * u_dx - 1.0), lo_x), hi_x)
    y1 = min(max(y0 + max_shift * (2.0 * u_dy - 1.0), lo_y), hi_y)
    return CameraPath(
        start_center=(x0, y0),
        end_center=(x1, y1),
        start_scale=min(area0, 1.0),
        end_scale=min(area1, 1.0),
        aspect=aspect,
        start_rotation=rot0,
        end_rotation=rot1,
        ease=ease,
    )


def _check_photo(photo: Any) -> np.ndarray:
    photo = np.asarray(photo)
    if photo.dtype != np.uint8 or photo.ndim != 3 or photo.shape[-1] != 3:
        raise ValueError(
            f"photo must be uint8 [H, W, 3], got {photo.dtype} {photo.shape}; convert "
            "grayscale/RGBA to RGB and floats to uint8 first"
        )
    if photo.shape[0] < 1 or photo.shape[1] < 1:
        raise ValueError(f"photo must not be empty, got shape {photo.shape}")
    return photo


def render_clip(
    photo: np.ndarray,
    path: CameraPath,
    num_frames: int,
    size: int | tuple[int, int],
    *,
    resample: Image.Resampling = Image.Resampling.BICUBIC,
) -> np.ndarray:
    """Renders ``path`` over ``photo`` to uint8 ``[num_frames, H, W, 3]``.

    ``size`` is ``S`` (square frames) or ``(H, W)``. Each frame maps the rotated
    crop box onto ``H x W`` pixels (so a box whose aspect differs from W / H is
    stretched, as RandomResizedCrop does). Parts of a
    box outside the photo (only for hand-made paths) come out black.
    Deterministic for a given photo and path.
    """
    photo = _check_photo(photo)
    if not isinstance(path, CameraPath):
        raise ValueError(
            f"path must be a CameraPath, got {type(path).__name__}; build one with "
            "sample_path(rng, photo.shape) or CameraPath(...)"
        )
    num_frames = _check_count(num_frames, "num_frames")
    out_h, out_w = (size, size) if np.ndim(size) == 0 else tuple(size)
    out_h, out_w = _check_count(out_h, "size (height)"), _check_count(out_w, "size (width)")
    height, width = photo.shape[:2]
    cx, cy, w, h, rotation = path.frame_boxes((height, width), num_frames).T
    theta = np.deg2rad(rotation)
    cos, sin = np.cos(theta), np.sin(theta)

    # Photo pixels per frame pixel along each photo axis, for the densest frame:
    # reducing the photo by that much first loses nothing the frames could show.
    kx = 1.0 / np.sqrt((out_w * cos / w) ** 2 + (out_h * sin / h) ** 2).max()
    ky = 1.0 / np.sqrt((out_w * sin / w) ** 2 + (out_h * cos / h) ** 2).max()
    small_w = max(1, round(width / max(kx, 1.0)))
    small_h = max(1, round(height / max(ky, 1.0)))
    image = Image.fromarray(np.ascontiguousarray(photo))
    if (small_w, small_h) != (width, height):
        image = image.resize((small_w, small_h), resample)
    sx, sy = small_w / width, small_h / height

    out = np.empty((num_frames, out_h, out_w, 3), np.uint8)
    for i in range(num_frames):
        # Frame point (u, v) -> photo point: centre + (u - W/2) * x_axis + (v - H/2) * y_axis,
        # with the box axes (cos, -sin) * w / W and (sin, cos) * h / H.
        a, d = w[i] / out_w * cos[i], -w[i] / out_w * sin[i]
        b, e = h[i] / out_h * sin[i], h[i] / out_h * cos[i]
        c = cx[i] - a * out_w / 2 - b * out_h / 2
        f = cy[i] - d * out_w / 2 - e * out_h / 2
        coeffs = (a * sx, b * sx, c * sx, d * sy, e * sy, f * sy)
        frame = image.transform((out_w, out_h), Image.Transform.AFFINE, coeffs, resample=resample)
        out[i] = np.asarray(frame)
    return out
