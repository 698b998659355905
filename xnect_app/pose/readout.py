"""Reading 3D pose encodings (targets.py layout) at detected 2D joints.

Two read-outs:
- `read_3d`: the hand-crafted ORPM-style pose. Body joint j (0..13) is read at its own 2D
  location (triplet j); every other triplet, and body joints that were not detected, are read
  at the neck. Without a neck those joints are NaN and marked invalid; Stage II completes them.
- `stage2_inputs`: the per-joint feature tensor Stage II lifts to a full 3D pose. The trainer
  must build it with this same function (from rendered or predicted maps).
"""
from __future__ import annotations

import warnings

import numpy as np

from .. import skeleton

__all__ = ["sample_bilinear", "read_3d", "normalise_2d", "stage2_inputs", "STAGE2_DIM"]

J2, J3 = skeleton.NUM_JOINTS_2D, skeleton.NUM_JOINTS_3D
NECK = skeleton.NECK
NUM_BODY = 14
STAGE2_DIM = 3 * J3 + 3  # 63 encoding values + u, v, confidence


def sample_bilinear(maps: np.ndarray, xy: np.ndarray) -> np.ndarray:
    """Bilinear samples of (C, h, w) maps at (N, 2) x, y cell coordinates -> (N, C).

    Coordinates are clamped to the map, so points just outside read the border cells.
    """
    c, h, w = maps.shape
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    x = np.clip(xy[:, 0], 0.0, w - 1.0)
    y = np.clip(xy[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(np.floor(x).astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(np.floor(y).astype(np.int64), max(h - 2, 0))
    x1 = np.minimum(x0 + 1, w - 1)
    y1 = np.minimum(y0 + 1, h - 1)
    ax = (x - x0)[:, None]
    ay = (y - y0)[:, None]
    top = maps[:, y0, x0].T * (1 - ax) + maps[:, y0, x1].T * ax
    bottom = maps[:, y1, x0].T * (1 - ax) + maps[:, y1, x1].T * ax
    return top * (1 - ay) + bottom * ay


def _detected(kp2d_map: np.ndarray) -> np.ndarray:
    return (kp2d_map[..., 2] > 0) & np.isfinite(kp2d_map[..., :2]).all(-1)


def read_3d(enc3d: np.ndarray, kp2d_map: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """ORPM-style 3D read-out.

    Args:
        enc3d: (63, h, w) encodings in metres.
        kp2d_map: (P, 19, 3) x, y in map cells, confidence (0 = not detected).
    Returns:
        kp3d_mm (P, 21, 3) root-relative mm (NaN where invalid) and valid (P, 21) bool.
    """
    kp2d_map = np.asarray(kp2d_map, dtype=np.float64).reshape(-1, J2, 3)
    n = len(kp2d_map)
    det = _detected(kp2d_map)
    xy = np.nan_to_num(kp2d_map[..., :2])
    at_joint = sample_bilinear(enc3d, xy[:, :NUM_BODY].reshape(-1, 2)).reshape(n, NUM_BODY, J3, 3)
    at_neck = sample_bilinear(enc3d, xy[:, NECK]).reshape(n, J3, 3)
    pose = np.where(det[:, NECK, None, None], at_neck, np.nan)
    own = np.zeros((n, J3), dtype=bool)
    own[:, :NUM_BODY] = det[:, :NUM_BODY]
    body = np.arange(NUM_BODY)
    pose[:, :NUM_BODY] = np.where(own[:, :NUM_BODY, None], at_joint[:, body, body], pose[:, :NUM_BODY])
    valid = own | det[:, NECK, None]
    return pose * 1000.0, valid


def normalise_2d(kp2d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Person-centred 2D coordinates, as Stage II sees them.

    centre = the neck if detected, else the mean of the detected joints;
    scale = the longer side of the bounding box of the detected joints (at least 1e-3;
    1 when fewer than two joints are detected); uv = (xy - centre) / scale, 0 for undetected
    joints. Units cancel, so pixels or map cells give the same uv.

    Args:
        kp2d: (P, 19, 3) x, y, confidence (0 = not detected).
    Returns:
        uv (P, 19, 2), centre (P, 2), scale (P,).
    """
    kp2d = np.asarray(kp2d, dtype=np.float64).reshape(-1, J2, 3)
    det = _detected(kp2d)
    xy = np.where(det[..., None], kp2d[..., :2], np.nan)
    n_det = det.sum(1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # people with no detected joint
        mean = np.where(n_det[:, None] > 0, np.nanmean(xy, 1), 0.0)
        extent = np.nanmax(xy, 1) - np.nanmin(xy, 1)
    centre = np.where(det[:, NECK, None], np.nan_to_num(xy[:, NECK]), np.nan_to_num(mean))
    scale = np.where(n_det >= 2, np.maximum(np.nan_to_num(extent).max(1), 1e-3), 1.0)
    uv = np.where(det[..., None], (np.nan_to_num(xy) - centre[:, None]) / scale[:, None, None], 0.0)
    return uv, centre, scale


def stage2_inputs(enc3d: np.ndarray, people_kp2d_map: np.ndarray) -> np.ndarray:
    """Stage II input tensor (P, 19, 66), float32.

    For each 2D joint j (skeleton.JOINTS_2D order): [0:63] the full 63-channel encoding
    (metres) sampled bilinearly at joint j's location, [63:65] u, v from `normalise_2d`,
    [65] the joint's confidence. All 66 values are 0 for an undetected joint.
    Training from ground truth: pass the rendered (or predicted) enc3d and the labelled
    joints in map cells with confidence 1 (0 for unlabelled/dropped joints).

    Args:
        enc3d: (63, h, w).
        people_kp2d_map: (P, 19, 3) x, y in map cells, confidence.
    """
    kp = np.asarray(people_kp2d_map, dtype=np.float64).reshape(-1, J2, 3)
    n = len(kp)
    det = _detected(kp)
    feats = sample_bilinear(enc3d, np.nan_to_num(kp[..., :2]).reshape(-1, 2)).reshape(n, J2, len(enc3d))
    uv, _, _ = normalise_2d(kp)
    out = np.concatenate([feats, uv, kp[..., 2:3]], -1)
    return np.where(det[..., None], out, 0.0).astype(np.float32)

