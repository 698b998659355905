"""Augmentation: random affine crop (scale, rotation, flip) with labels, and photometric jitter.

Geometry is one 2x3 affine per sample, applied to the image (cv2.warpAffine), the 2D joints and
the ignore mask; the in-plane rotation also rotates the 3D pose about the camera z axis (camera
roll rotates x and y of camera-space 3D). Flips swap left/right joints (skeleton.FLIP_2D/3D) and
negate 3D x.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from .. import skeleton
from .data import Sample

FLIP_2D = np.array(skeleton.FLIP_2D)
FLIP_3D = np.array(skeleton.FLIP_3D)


@dataclass(frozen=True)
class AugmentConfig:
    size: tuple[int, int] = (256, 256)     # output (width, height)
    small_prob: float = 0.4                # share of samples whose main person is 30-80 px tall
    small_px: tuple[float, float] = (30.0, 80.0)
    large_frac: tuple[float, float] = (0.3, 1.25)  # otherwise this share of the output height (>1: close-ups, cut off)
    max_rotation_deg: float = 30.0
    rotation_prob: float = 0.6
    flip_prob: float = 0.5
    color_prob: float = 0.8
    blur_prob: float = 0.15
    gray_prob: float = 0.05
    center_jitter: float = 0.35            # main person centre moves up to this * output size
    min_cover: float = 0.8                 # real images: the scaled image spans >= this of the crop


def person_height(kp: np.ndarray) -> float:
    """Height of a person in pixels from its labelled joints (0 if fewer than two)."""
    lab = kp[:, 2] > 0
    if lab.sum() < 2:
        return 0.0
    xy = kp[lab, :2]
    ext = xy.max(0) - xy.min(0)
    # a person lying down or bent is as "big" as its longest extent
    return float(max(ext[1], 0.8 * ext[0]))


def affine_matrix(center: tuple[float, float], scale: float, rot_deg: float,
                  out_size: tuple[int, int]) -> np.ndarray:
    """2x3 map: source `center` -> output centre, scaled by `scale`, rotated by rot_deg (ccw)."""
    w, h = out_size
    M = cv2.getRotationMatrix2D((float(center[0]), float(center[1])), rot_deg, scale)
    M[0, 2] += w / 2.0 - center[0]
    M[1, 2] += h / 2.0 - center[1]
    return M


def transform_points(kp: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Apply a 2x3 affine to the x, y of (..., 3) keypoints; the state column is kept."""
    out = kp.copy()
    xy = kp[..., :2]
    out[..., 0] = xy[..., 0] * M[0, 0] + xy[..., 1] * M[0, 1] + M[0, 2]
    out[..., 1] = xy[..., 0] * M[1, 0] + xy[..., 1] * M[1, 1] + M[1, 2]
    out[..., :2] = np.where(kp[..., 2:3] > 0, out[..., :2], 0.0)
    return out


def rotate_3d(kp3d: np.ndarray, M: np.ndarray) -> np.ndarray:
    """Rotate x, y of camera-space 3D by the rotation part of affine M (about z)."""
    s = math.hypot(M[0, 0], M[1, 0])
    R = M[:, :2] / s
    out = kp3d.copy()
    out[..., 0] = kp3d[..., 0] * R[0, 0] + kp3d[..., 1] * R[0, 1]
    out[..., 1] = kp3d[..., 0] * R[1, 0] + kp3d[..., 1] * R[1, 1]
    return out


def warp_sample(s: Sample, M: np.ndarray, out_size: tuple[int, int],
                border_value: tuple[int, int, int] = (0, 0, 0)) -> Sample:
    """Warp image, ignore mask and labels of a sample with one affine (no flip)."""
    w, h = out_size
    img, Mi = s.image, M
    scale = math.hypot(M[0, 0], M[1, 0])
    if scale < 0.7:  # downscale with area averaging first, so small people don't alias
        f = max(scale, 1e-3) * 1.2
        img = cv2.resize(img, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
        sx = img.shape[1] / s.image.shape[1]
        sy = img.shape[0] / s.image.shape[0]
        Mi = M @ np.array([[1 / sx, 0, 0], [0, 1 / sy, 0], [0, 0, 1]])
    image = cv2.warpAffine(img, Mi, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT,
                           borderValue=border_value)
    ignore = cv2.warpAffine(s.ignore_mask, M, (w, h), flags=cv2.INTER_NEAREST,
                            borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    return Sample(image=image, kp2d=transform_points(s.kp2d, M), kp3d_mm=rotate_3d(s.kp3d_mm, M),
                  labelled_2d=s.labelled_2d.copy(), ignore_mask=ignore, source=s.source,
                  weight_2d=s.weight_2d.copy(), conf_3d=s.conf_3d.copy())


def flip_labels(kp2d: np.ndarray, kp3d: np.ndarray, weight: np.ndarray, width: int):
    """Labels of the horizontally mirrored image (x -> width - 1 - x, left <-> right)."""
    k = kp2d[:, FLIP_2D].copy()
    k[..., 0] = np.where(k[..., 2] > 0, width - 1 - k[..., 0], 0.0)
    k3 = kp3d[:, FLIP_3D].copy()
    k3[..., 0] = -k3[..., 0]
    return k, k3, weight[:, FLIP_2D].copy()


def flip_sample(s: Sample) -> Sample:
    w = s.image.shape[1]
    kp, k3, wt = flip_labels(s.kp2d, s.kp3d_mm, s.weight_2d, w)
    return Sample(image=s.image[:, ::-1].copy(), kp2d=kp, kp3d_mm=k3,
                  labelled_2d=s.labelled_2d[FLIP_2D].copy(), ignore_mask=s.ignore_mask[:, ::-1].copy(),
                  source=s.source, weight_2d=wt, conf_3d=s.conf_3d.copy())


def color_jitter(img: np.ndarray, rng: np.random.Generator, cfg: AugmentConfig) -> np.ndarray:
    out = img
    if rng.random() < cfg.color_prob:
        alpha = rng.uniform(0.7, 1.3)            # contrast
        beta = rng.uniform(-30, 30)              # brightness
        out = cv2.convertScaleAbs(out, alpha=alpha, beta=beta)
        if rng.random() < 0.5:                   # saturation and hue
            hsv = cv2.cvtColor(out, cv2.COLOR_BGR2HSV).astype(np.int16)
            hsv[..., 0] = (hsv[..., 0] + rng.integers(-8, 9)) % 180
            hsv[..., 1] = np.clip(hsv[..., 1] * rng.uniform(0.6, 1.4), 0, 255)
            out = cv2.cvtColor(hsv.astype(np.uint8), cv2.COLOR_HSV2BGR)
    if rng.random() < cfg.blur_prob:
        k = int(rng.choice([3, 5]))
        out = cv2.GaussianBlur(out, (k, k), 0)
    if rng.random() < cfg.gray_prob:
        out = cv2.cvtColor(cv2.cvtColor(out, cv2.COLOR_BGR2GRAY), cv2.COLOR_GRAY2BGR)
    return out


def sample_target_height(rng: np.random.Generator, cfg: AugmentConfig) -> float:
    """Output height of the main person: a share small (30-80 px), the rest up to the full crop."""
    h = cfg.size[1]
    if rng.random() < cfg.small_prob:
        lo, hi = cfg.small_px
    else:
        lo, hi = cfg.large_frac[0] * h, cfg.large_frac[1] * h
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _keep_inside(center: np.ndarray, scale: float, image_wh: tuple[int, int], out_wh: tuple[int, int],
                 slack: float = 0.1) -> np.ndarray:
    """Move the crop centre so the crop stays on the image where it can (little empty border):
    per axis, a crop smaller than the image stays inside it (up to `slack` of the crop), a larger
    one stays around the image centre."""
    c = center.astype(np.float64).copy()
    for a in range(2):
        half = out_wh[a] / scale / 2
        size = image_wh[a]
        lo, hi = half - slack * 2 * half, size - half + slack * 2 * half
        if lo <= hi:
            c[a] = min(max(c[a], lo), hi)
        else:
            c[a] = min(max(c[a], size / 2 - slack * 2 * half), size / 2 + slack * 2 * half)
    return c


def random_affine(s: Sample, rng: np.random.Generator, cfg: AugmentConfig, fit: bool = False) -> np.ndarray:
    """Random crop around a random person (or anywhere if there is none).

    The main person gets a random output height (sample_target_height), but the image is never
    shrunk below cfg.min_cover of the crop (small people come from composites and from people
    who are small in their image). fit=True: the image (a composite made at the output size)
    just fills the crop.
    """
    w, h = cfg.size
    H, W = s.image.shape[:2]
    min_scale = cfg.min_cover * max(w / W, h / H)
    if fit:
        scale = max(w / W, h / H) * rng.uniform(1.0, 1.15)
        center = np.array([W / 2, H / 2]) + rng.uniform(-0.5, 0.5, 2) * np.maximum(np.array([W, H]) - np.array([w, h]) / scale, 0)
        rot = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg) if rng.random() < cfg.rotation_prob else 0.0
        return affine_matrix((center[0], center[1]), scale, rot, (w, h))
    heights = np.array([person_height(k) for k in s.kp2d]) if s.num_people else np.zeros(0)
    cand = np.flatnonzero(heights >= 8)
    if len(cand):
        i = int(rng.choice(cand))
        lab = s.kp2d[i, :, 2] > 0
        xy = s.kp2d[i, lab, :2]
        center = 0.5 * (xy.min(0) + xy.max(0))
        scale = max(sample_target_height(rng, cfg) / heights[i], min_scale)
        center = center + rng.uniform(-1, 1, 2) * cfg.center_jitter * np.array([w, h]) / scale
    else:
        # no people: a random window of the image, zoomed in up to 2x
        scale = max(w / W, h / H) / rng.uniform(0.5, 1.0)
        center = np.array([rng.uniform(0.3, 0.7) * W, rng.uniform(0.3, 0.7) * H])
    center = _keep_inside(center, scale, (W, H), (w, h))
    rot = rng.uniform(-cfg.max_rotation_deg, cfg.max_rotation_deg) if rng.random() < cfg.rotation_prob else 0.0
    return affine_matrix((center[0], center[1]), scale, rot, (w, h))


def augment(s: Sample, rng: np.random.Generator, cfg: AugmentConfig = AugmentConfig(), fit: bool = False) -> Sample:
    """Random affine crop to cfg.size, flip, colour jitter, blur, grayscale; labels follow.
    fit=True for composites built at the output size (see random_affine)."""
    M = random_affine(s, rng, cfg, fit)
    border = tuple(int(v) for v in rng.integers(0, 256, 3)) if rng.random() < 0.5 else (0, 0, 0)
    out = warp_sample(s, M, cfg.size, border)
    if rng.random() < cfg.flip_prob:
        out = flip_sample(out)
    out.image = color_jitter(out.image, rng, cfg)
    return out
