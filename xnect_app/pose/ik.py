"""Kinematic skeleton fit (Stage III, spec §2.8): joint angles of a fixed-bone skeleton.

Per person and frame we minimise, over the local joint rotations, the root rotation and the
root position (rest pose and FK conventions in kinematics.py):

    w_3d     * sum_j |FK_j - P_j|^2                     3D joints, camera space (mm)
  + w_2d     * sum_j c_j^2 |proj(FK_j) - p_j|^2           optional 2D term (pixels)
  + w_smooth^2 * sum_i |log(R_prev_i^T R_i)|^2             stay near the previous frame (rad)
  + w_limits^2 * sum_i |theta_i outside its range|^2       soft joint limits (rad)

with batched Gauss-Newton / Levenberg-Marquardt over all people at once: analytic
Jacobians (a rotation perturbation w at joint i moves every joint k below it by
(G_i w) x (p_k - p_i)), one (51 x 51) solve per person and iteration. Rotations are updated
on the manifold, R_i <- R_i exp(delta_i). A cold start (no previous frame) is initialised
analytically: each joint's rotation aligns its rest-pose child directions with the target's
(Kabsch), which is already exact for a noise-free pose with the right bone lengths; warm
starts reuse the track's previous angles. `SkeletonFitter` keeps that state per track id.
(scipy.optimize.least_squares was the first plan; with a finite-difference Jacobian it needs
about 50 residual evaluations per iteration, the analytic Jacobian costs about one.)
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .. import skeleton
from ..types import Intrinsics
from .kinematics import (FK_ORDER, JOINT_RANGES_DEG, PARENTS, REST_DIRS, bone_lengths_of, fk, rest_offsets,
                         rotvec_to_matrix)

__all__ = ["IKConfig", "IKResult", "fit_skeletons", "initial_angles", "SkeletonFitter", "rest_offsets", "fk"]

J3 = skeleton.NUM_JOINTS_3D
ROOT = skeleton.ROOT_3D
CHILDREN = {j: [c for c in range(J3) if PARENTS[c] == j] for j in range(J3)}
# Joints whose rotation moves something (the root first), and the parameter layout:
# 3 per rotating joint (local perturbation), then the root position.
ROT_JOINTS = (ROOT,) + tuple(j for j in FK_ORDER if j != ROOT and CHILDREN[j])
N_PARAMS = 3 * len(ROT_JOINTS) + 3

# moves[k, r]: rotating joint ROT_JOINTS[r] moves joint k.
_MOVES = np.zeros((J3, len(ROT_JOINTS)), dtype=bool)
for _r, _j in enumerate(ROT_JOINTS):
    for _k in range(J3):
        _a = _k
        while PARENTS[_a] >= 0:
            if PARENTS[_a] == _j:
                _MOVES[_k, _r] = True
                break
            _a = PARENTS[_a]

_PAIR_K, _PAIR_R = np.nonzero(_MOVES)

_LIMIT_LO = np.full((J3, 3), -np.inf)
_LIMIT_HI = np.full((J3, 3), np.inf)
for _j, _ranges in JOINT_RANGES_DEG.items():
    _LIMIT_LO[_j] = np.radians([r[0] for r in _ranges])
    _LIMIT_HI[_j] = np.radians([r[1] for r in _ranges])


@dataclass(frozen=True)
class IKConfig:
    """Weights (see the module docstring) and solver settings.

    w_smooth and w_limits are in mm per radian: a 0.1 rad deviation costs like a
    w * 0.1 mm joint error. w_2d is in mm per pixel.
    """

    w_3d: float = 1.0
    w_2d: float = 0.0
    w_smooth: float = 20.0
    w_limits: float = 200.0
    limit_margin_deg: float = 15.0
    max_iter: int = 5
    tol_mm: float = 0.5   # stop when no joint moves more than this in an iteration
    damping: float = 1e-3


@dataclass
class IKResult:
    angles: np.ndarray     # (P, 21, 3) local rotation vectors; row ROOT holds root_rot
    root_rot: np.ndarray   # (P, 3)
    root_pos: np.ndarray   # (P, 3) mm
    joints: np.ndarray     # (P, 21, 3) fitted joint positions, same space as the targets
    rms_mm: np.ndarray     # (P,) root-mean-square 3D residual over the valid joints
    iterations: int


def _kabsch(src: np.ndarray, dst: np.ndarray, w: np.ndarray) -> np.ndarray:
    """(P, K, 3) src/dst directions, (P, K) weights -> (P, 3, 3) R with R src ~ dst."""
    h = np.einsum("pk,pki,pkj->pij", w, src, dst)
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(np.swapaxes(vt, 1, 2) @ np.swapaxes(u, 1, 2)))
    d = np.where(d == 0, 1.0, d)
    fix = np.ones((len(src), 3))
    fix[:, 2] = d
    return np.swapaxes(vt, 1, 2) @ (fix[:, :, None] * np.swapaxes(u, 1, 2))


def _min_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(P, 3) unit vectors -> (P, 3) rotation vectors of the smallest rotations taking a to b."""
    axis = np.cross(a, b)
    s = np.linalg.norm(axis, axis=-1)
    c = np.einsum("pi,pi->p", a, b)
    angle = np.arctan2(s, c)
    # Opposite vectors: turn about any axis perpendicular to a.
    perp = np.cross(a, np.where(np.abs(a[:, :1]) < 0.9, [[1.0, 0, 0]], [[0, 1.0, 0]]))
    axis = np.where((s < 1e-9)[:, None] & (c < 0)[:, None], perp, axis)
    norm = np.maximum(np.linalg.norm(axis, axis=-1, keepdims=True), 1e-12)
    return axis / norm * angle[:, None]


def initial_angles(kp3d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Analytic angles (P, 21, 3) and root rotation (P, 3) pointing every bone at the target.

    Args:
        kp3d: (P, 21, 3) target joints (any origin). NaN joints are skipped (their bones keep
            the rest direction relative to the parent).
    """
    kp3d = np.asarray(kp3d, dtype=np.float64)
    n = len(kp3d)
    angles = np.zeros((n, J3, 3))
    glob = np.zeros((n, J3, 3, 3))
    for j in FK_ORDER:
        kids = CHILDREN[j]
        parent_g = np.broadcast_to(np.eye(3), (n, 3, 3)) if j == ROOT else glob[:, PARENTS[j]]
        if not kids:
            glob[:, j] = parent_g
            continue
        target = kp3d[:, kids] - kp3d[:, j:j + 1]                    # (P, K, 3) world
        length = np.linalg.norm(target, axis=-1)
        ok = np.isfinite(length) & (length > 1e-6)
        t_local = np.einsum("pji,pkj->pki", parent_g, np.where(ok[..., None], target, 0.0))
        t_local /= np.maximum(length, 1e-6)[..., None]
        rest = np.broadcast_to(REST_DIRS[kids], t_local.shape)
        if len(kids) == 1:
            rot = _min_rotation(rest[:, 0], np.where(ok[:, :1], t_local[:, 0], rest[:, 0]))
            local = rotvec_to_matrix(rot)
        else:
            w = ok.astype(np.float64)
            local = _kabsch(rest, t_local, w)
            local = np.where((w.sum(1) >= 2)[:, None, None], local, np.eye(3))
            rot = _matrix_to_rotvec(local)
        angles[:, j] = rot
        glob[:, j] = parent_g @ local
    return angles, angles[:, ROOT].copy()


def _forward(angles: np.ndarray, root_pos: np.ndarray, bones: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (P, 21, 3) and global orientations (P, 21, 3, 3); angles[:, ROOT] = root rotation."""
    n = len(angles)
    local = rotvec_to_matrix(angles)
    offsets = rest_offsets(bones)
    glob = np.empty((n, J3, 3, 3))
    pos = np.empty((n, J3, 3))
    glob[:, ROOT] = local[:, ROOT]
    pos[:, ROOT] = root_pos
    for j in FK_ORDER[1:]:
        p = PARENTS[j]
        pos[:, j] = pos[:, p] + (glob[:, p] @ offsets[:, j, :, None])[..., 0]
        glob[:, j] = glob[:, p] @ local[:, j]
    return pos, glob


def _matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors (scipy only near 180 deg)."""
    cos = np.clip((np.einsum("...ii->...", r) - 1.0) / 2.0, -1.0, 1.0)
    angle = np.arccos(cos)
    v = np.stack([r[..., 2, 1] - r[..., 1, 2], r[..., 0, 2] - r[..., 2, 0], r[..., 1, 0] - r[..., 0, 1]], -1)
    sin = np.sin(angle)
    scale = np.where(angle < 1e-6, 0.5 + angle ** 2 / 12, angle / (2 * np.where(angle < 1e-6, 1.0, sin)))
    out = v * scale[..., None]
    near_pi = angle > np.pi - 1e-3
    if near_pi.any():
        out[near_pi] = Rotation.from_matrix(r[near_pi]).as_rotvec()
    return out


def _rot_log_rel(prev: np.ndarray, cur: np.ndarray) -> np.ndarray:
    """Rotation vectors of prev^T cur for (..., 3) rotation vectors."""
    return _matrix_to_rotvec(np.swapaxes(rotvec_to_matrix(prev), -1, -2) @ rotvec_to_matrix(cur))


def fit_skeletons(kp3d: np.ndarray, bone_lengths: np.ndarray, init_angles: np.ndarray | None = None,
                  init_root_pos: np.ndarray | None = None, prev_angles: np.ndarray | None = None,
                  kp2d: np.ndarray | None = None, intrinsics: Intrinsics | None = None,
                  cfg: IKConfig = IKConfig()) -> IKResult:
    """Fit all people at once.

    Args:
        kp3d: (P, 21, 3) target joints (camera space, or root-relative), NaN = unknown.
        bone_lengths: (P, 21) or (21,) mm.
        init_angles: (P, 21, 3) warm start (row ROOT = root rotation); analytic if None.
            Rows may be NaN for people without a previous frame.
        init_root_pos: (P, 3); the target pelvis if None.
        prev_angles: (P, 21, 3) previous frame's angles for the smoothness term (NaN rows: none).
        kp2d, intrinsics: (P, 19, 3) pixels + confidence for the optional 2D term (cfg.w_2d > 0).
    """
    kp3d = np.asarray(kp3d, dtype=np.float64).reshape(-1, J3, 3)
    n = len(kp3d)
    bones = np.broadcast_to(np.asarray(bone_lengths, dtype=np.float64), (n, J3))
    valid = np.isfinite(kp3d).all(-1)
    target = np.nan_to_num(kp3d)

    warm = np.zeros(n, dtype=bool)
    angles = np.zeros((n, J3, 3))
    if init_angles is not None:
        init_angles = np.asarray(init_angles, dtype=np.float64)
        warm = np.isfinite(init_angles).all((1, 2))
        angles[warm] = init_angles[warm]
    if not warm.all():
        angles[~warm] = initial_angles(kp3d[~warm])[0]
    root_pos = np.where(valid[:, ROOT, None], target[:, ROOT], _valid_mean(target, valid))
    if init_root_pos is not None:
        root_pos = np.where(np.isfinite(init_root_pos), init_root_pos, root_pos)
    has_prev = np.zeros(n, dtype=bool)
    if prev_angles is not None:
        prev_angles = np.asarray(prev_angles, dtype=np.float64)
        has_prev = np.isfinite(prev_angles).all((1, 2))
    use_2d = cfg.w_2d > 0 and kp2d is not None and intrinsics is not None
    rot_idx = np.array(ROT_JOINTS)
    lo = np.radians(-cfg.limit_margin_deg) + _LIMIT_LO[rot_idx]
    hi = np.radians(cfg.limit_margin_deg) + _LIMIT_HI[rot_idx]

    def evaluate(angles: np.ndarray, root_pos: np.ndarray):
        pos, glob = _forward(angles, root_pos, bones)
        res, jac = _residuals(pos, glob, angles, target, valid, prev_angles, has_prev, lo, hi, cfg,
                              kp2d if use_2d else None, intrinsics)
        return res, jac, (res ** 2).sum(1), pos

    # Levenberg-Marquardt, one damping factor per person: a step that raises a person's cost
    # is undone and retried with more damping.
    res, jac, cost, pos = evaluate(angles, root_pos)
    lam = np.full(n, cfg.damping)
    diag = np.arange(N_PARAMS)
    it = 0
    for it in range(1, cfg.max_iter + 1):
        jt = np.swapaxes(jac, 1, 2)
        jtj = jt @ jac
        jtr = jt @ res[..., None]
        jtj[:, diag, diag] += lam[:, None] * (jtj[:, diag, diag] + 1.0)
        delta = -np.linalg.solve(jtj, jtr)[..., 0]
        new_angles, new_root = _apply(angles, root_pos, delta)
        new_res, new_jac, new_cost, new_pos = evaluate(new_angles, new_root)
        better = new_cost <= cost
        angles = np.where(better[:, None, None], new_angles, angles)
        root_pos = np.where(better[:, None], new_root, root_pos)
        res = np.where(better[:, None], new_res, res)
        jac = np.where(better[:, None, None], new_jac, jac)
        cost = np.where(better, new_cost, cost)
        lam = np.where(better, np.maximum(lam / 3.0, 1e-7), lam * 5.0)
        step = np.abs(new_pos - pos).max((1, 2), initial=0.0)    # largest joint move (mm)
        pos = np.where(better[:, None, None], new_pos, pos)
        if n == 0 or np.all((step < cfg.tol_mm) | (lam > 1e6)):
            break
    pos, _ = _forward(angles, root_pos, bones)
    err = np.where(valid, np.linalg.norm(pos - target, axis=-1), 0.0)
    rms = np.sqrt((err ** 2).sum(1) / np.maximum(valid.sum(1), 1))
    return IKResult(angles=angles, root_rot=angles[:, ROOT].copy(), root_pos=root_pos, joints=pos,
                    rms_mm=rms, iterations=it)


def _valid_mean(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return (target * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]


def _residuals(pos, glob, angles, target, valid, prev_angles, has_prev, lo, hi, cfg, kp2d, intrinsics):
    """Stacked residuals (P, R) and Jacobian (P, R, N_PARAMS) of every term."""
    n = len(pos)
    rot_idx = np.array(ROT_JOINTS)
    # d p_k / d w_r = -[p_k - p_r]x G_r = columns G_r[:, c] x (p_k - p_r), for each joint r
    # that moves k; d p_k / d root_pos = I.
    lever = pos[:, _PAIR_K] - pos[:, rot_idx[_PAIR_R]]                     # (P, M, 3)
    g = glob[:, rot_idx[_PAIR_R]]                                          # (P, M, 3, 3)
    l0, l1, l2 = lever[..., 0, None], lever[..., 1, None], lever[..., 2, None]
    g0, g1, g2 = g[..., 0, :], g[..., 1, :], g[..., 2, :]                  # rows: (P, M, 3) over c
    dpos = np.zeros((n, J3, 3, N_PARAMS))
    cols = 3 * _PAIR_R[:, None] + np.arange(3)                             # (M, 3)
    dpos[:, _PAIR_K[:, None], 0, cols] = g1 * l2 - g2 * l1
    dpos[:, _PAIR_K[:, None], 1, cols] = g2 * l0 - g0 * l2
    dpos[:, _PAIR_K[:, None], 2, cols] = g0 * l1 - g1 * l0
    dpos[:, :, [0, 1, 2], [N_PARAMS - 3, N_PARAMS - 2, N_PARAMS - 1]] = 1.0
    w3 = np.sqrt(cfg.w_3d) * valid[..., None]
    res = [((pos - target) * w3).reshape(n, -1)]
    jac = [(dpos * w3[..., None]).reshape(n, 3 * J3, N_PARAMS)]

    if kp2d is not None:
        idx2 = np.array([j for j, k in enumerate(skeleton.JOINT_3D_OF_2D) if k >= 0])
        idx3 = np.array([skeleton.JOINT_3D_OF_2D[j] for j in idx2])
        p = pos[:, idx3]
        z = np.maximum(p[..., 2], 1.0)
        f = np.array([intrinsics.fx, intrinsics.fy])
        proj = f * p[..., :2] / z[..., None] + np.array([intrinsics.cx, intrinsics.cy])
        c = np.where(np.isfinite(kp2d[:, idx2, :2]).all(-1), np.clip(kp2d[:, idx2, 2], 0, None), 0.0)
        wc = np.sqrt(cfg.w_2d) * c[..., None]
        dproj = np.zeros(p.shape[:2] + (2, 3))
        dproj[..., 0, 0] = f[0] / z
        dproj[..., 1, 1] = f[1] / z
        dproj[..., :, 2] = -f * p[..., :2] / (z ** 2)[..., None]
        res.append(((proj - np.nan_to_num(kp2d[:, idx2, :2])) * wc).reshape(n, -1))
        jac.append(((dproj @ dpos[:, idx3]) * wc[..., None]).reshape(n, -1, N_PARAMS))

    rot = angles[:, rot_idx]                                               # (P, R, 3)
    eye = np.zeros((n, 3 * len(rot_idx), N_PARAMS))
    eye[:, np.arange(3 * len(rot_idx)), np.arange(3 * len(rot_idx))] = 1.0
    if prev_angles is not None and has_prev.any():
        ws = cfg.w_smooth * has_prev[:, None]
        rel = np.zeros_like(rot)
        rel[has_prev] = _rot_log_rel(prev_angles[has_prev][:, rot_idx], rot[has_prev])
        res.append(rel.reshape(n, -1) * ws)
        jac.append(eye * ws[..., None])
    below, above = np.minimum(rot - lo, 0.0), np.maximum(rot - hi, 0.0)
    out_of_range = (below + above).reshape(n, -1)
    res.append(out_of_range * cfg.w_limits)
    jac.append(eye * (out_of_range != 0)[..., None] * cfg.w_limits)
    return np.concatenate(res, 1), np.concatenate(jac, 1)


def _apply(angles: np.ndarray, root_pos: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    rot_idx = np.array(ROT_JOINTS)
    n = len(angles)
    d = delta[:, :-3].reshape(n, len(rot_idx), 3)
    r = rotvec_to_matrix(angles[:, rot_idx]) @ rotvec_to_matrix(d)
    out = angles.copy()
    out[:, rot_idx] = _matrix_to_rotvec(r)
    return out, root_pos + delta[:, -3:]


class SkeletonFitter:
    """Per-track skeleton fitting with warm starts and smoothness across frames.

    Args:
        cfg: weights and solver settings.
        max_age: frames a track's state is kept after it was last fitted.
    """

    def __init__(self, cfg: IKConfig = IKConfig(), max_age: int = 5):
        self.cfg, self.max_age = cfg, max_age
        self._state: dict[int, tuple[np.ndarray, int]] = {}  # id -> angles, frame fitted
        self._frame = 0

    def reset(self) -> None:
        self._state.clear()

    def fit(self, track_ids: list[int], kp3d: np.ndarray, bone_lengths: np.ndarray,
            kp2d: np.ndarray | None = None, intrinsics: Intrinsics | None = None) -> IKResult:
        """Fit this frame's people (kp3d camera space or root-relative, (P, 21, 3)).

        bone_lengths (P, 21): the tracks' bone lengths (rows of NaN: use the pose's own).
        """
        self._frame += 1
        kp3d = np.asarray(kp3d, dtype=np.float64).reshape(-1, J3, 3)
        n = len(kp3d)
        bones = np.asarray(bone_lengths, dtype=np.float64).reshape(n, J3).copy()
        own = bone_lengths_of(kp3d)
        bones = np.where(np.isfinite(bones), bones, np.nan_to_num(own))
        prev = np.full((n, J3, 3), np.nan)
        for k, tid in enumerate(track_ids):
            if tid in self._state:
                prev[k] = self._state[tid][0]
        result = fit_skeletons(kp3d, bones, init_angles=prev, prev_angles=prev, kp2d=kp2d,
                               intrinsics=intrinsics, cfg=self.cfg)
        for k, tid in enumerate(track_ids):
            self._state[tid] = (result.angles[k].copy(), self._frame)
        for tid in [t for t, (_, f) in self._state.items() if self._frame - f > self.max_age]:
            del self._state[tid]
        return result
