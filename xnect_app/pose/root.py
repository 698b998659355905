"""Camera-space root translation from 2D/3D agreement (spec §2.7).

For each joint j with root-relative 3D (X, Y, Z), 2D pixel (u, v) and intrinsics, with
x = (u - cx) / fx and y = (v - cy) / fy, a root translation d = (dx, dy, dz) must satisfy
    dx - x dz = x Z - X,    dy - y dz = y Z - Y.
Both equations are scaled by the joint's 2D confidence and the 2J x 3 system is solved by
linear least squares, for all people at once (3 x 3 normal equations per person).
"""
from __future__ import annotations

import numpy as np

from .. import skeleton
from ..types import Intrinsics

__all__ = ["solve_root_translation", "to_camera"]

_PAIRS_2D = np.array([j for j, k in enumerate(skeleton.JOINT_3D_OF_2D) if k >= 0])
_PAIRS_3D = np.array([skeleton.JOINT_3D_OF_2D[j] for j in _PAIRS_2D])


def solve_root_translation(kp3d_rel_mm: np.ndarray, kp2d: np.ndarray, intrinsics: Intrinsics,
                           min_joints: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Root (pelvis) position in camera space for every person.

    Args:
        kp3d_rel_mm: (P, 21, 3) root-relative 3D (NaN = unknown).
        kp2d: (P, 19, 3) x, y in the pixels the intrinsics describe, confidence (0 = missing).
        min_joints: fewer joints present in both sets gives no solution.
    Returns:
        root_mm (P, 3), NaN where unsolved, and ok (P,) bool. A solution also needs a
        well-conditioned system and the person in front of the camera (dz > 0).
    """
    kp3d = np.asarray(kp3d_rel_mm, dtype=np.float64).reshape(-1, skeleton.NUM_JOINTS_3D, 3)[:, _PAIRS_3D]
    kp2d = np.asarray(kp2d, dtype=np.float64).reshape(-1, skeleton.NUM_JOINTS_2D, 3)[:, _PAIRS_2D]
    n = len(kp3d)
    conf = np.where(np.isfinite(kp3d).all(-1) & np.isfinite(kp2d[..., :2]).all(-1), kp2d[..., 2], 0.0)
    conf = np.clip(conf, 0.0, None)
    w = conf ** 2  # rows scaled by the confidence -> squared residuals weighted by conf^2
    xs = np.nan_to_num((kp2d[..., 0] - intrinsics.cx) / intrinsics.fx)
    ys = np.nan_to_num((kp2d[..., 1] - intrinsics.cy) / intrinsics.fy)
    X, Y, Z = np.moveaxis(np.nan_to_num(kp3d), -1, 0)
    sw = w.sum(1)
    swx, swy = (w * xs).sum(1), (w * ys).sum(1)
    ata = np.zeros((n, 3, 3))
    ata[:, 0, 0] = ata[:, 1, 1] = sw
    ata[:, 0, 2] = ata[:, 2, 0] = -swx
    ata[:, 1, 2] = ata[:, 2, 1] = -swy
    ata[:, 2, 2] = (w * (xs * xs + ys * ys)).sum(1)
    bx, by = xs * Z - X, ys * Z - Y
    atb = np.stack([(w * bx).sum(1), (w * by).sum(1), -(w * (xs * bx + ys * by)).sum(1)], 1)
    ok = (conf > 0).sum(1) >= min_joints
    # The depth is only defined when the joints spread in the image: check conditioning.
    cond = np.full(n, np.inf)
    if ok.any():
        cond[ok] = np.linalg.cond(ata[ok])
    ok &= cond < 1e10
    root = np.full((n, 3), np.nan)
    if ok.any():
        root[ok] = np.linalg.solve(ata[ok], atb[ok][..., None])[..., 0]
    ok &= root[:, 2] > 0
    root[~ok] = np.nan
    return root, ok


def to_camera(kp3d_rel_mm: np.ndarray, root_mm: np.ndarray) -> np.ndarray:
    """Root-relative (P, 21, 3) + root (P, 3) -> camera space (P, 21, 3)."""
    return np.asarray(kp3d_rel_mm, dtype=np.float64) + np.asarray(root_mm, dtype=np.float64)[:, None, :]
