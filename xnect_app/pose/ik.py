"""Kinematic skeleton fit (Stage III, spec §2.8): joint angles of a fixed-bone skeleton.

Per person and frame we minimise, over the local joint rotations, the root rotation and the
root position (rest pose and FK conventions in kinematics.py):

    w_3d     * sum_j |FK_j - P_j|^2                     3D joints, camera space (mm)
  + w_2d     * sum_j c_j^2 |proj(FK_j) - p_j|^2           optional 2D term (pixels)
  + w_smooth^2 * sum_i |log(R_prev_i^T R_i)|^2             stay near the previous frame (rad)
  + w_limits^2 * sum_i |theta_i outside its range|^2       soft joint limits (rad)

with batched Gauss-Newton / Levenberg-Marquardt over all people at once: analytic
Jacobians (a rotation perturbation w at joint i moves every joint k below it by
(G_i w) x (p_k - p_i)), one (51 x 51) solve per person and iteration; the smoothness and
limit terms go straight onto the diagonal of the normal equations. Rotations are kept as
matrices and updated on the manifold, R_i <- R_i exp(delta_i). A person warm-started from
its previous frame takes at most `max_iter_warm` iterations (the spec's "a few per frame"),
and a person that has converged leaves the batch. A cold start (no previous frame) is initialised
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

# ancestor[k, a]: joint a lies above joint k (its parent, the parent's parent, ...).
_ANCESTOR = np.zeros((J3, J3), dtype=bool)
for _k in range(J3):
    _a = PARENTS[_k]
    while _a >= 0:
        _ANCESTOR[_k, _a] = True
        _a = PARENTS[_a]
# moves[k, r]: rotating joint ROT_JOINTS[r] moves joint k.
_MOVES = _ANCESTOR[:, list(ROT_JOINTS)]

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
    max_iter_warm: int = 2   # for people warm-started from their previous frame
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


# FK: global orientations one tree level at a time (joints with children only); then every
# bone's offset in camera axes, summed down the tree by one product with the ancestry matrix.
_DEPTH = _ANCESTOR.sum(1)
_GLOB_LEVELS = tuple((np.array(js), PARENTS[js]) for js in
                     ([j for j in FK_ORDER if _DEPTH[j] == d and CHILDREN[j]] for d in range(1, _DEPTH.max() + 1))
                     if js)
_PARENT_OR_ROOT = np.where(PARENTS < 0, ROOT, PARENTS)
_ANCESTRY = (_ANCESTOR | np.eye(J3, dtype=bool)).astype(np.float64)  # [k, j] = 1: bone j is on the
_ANCESTRY[:, ROOT] = 0.0                                               # path from the root to k
# The 3D joints that have a 2D joint (the 2D term's residuals), in 2D order.
_IDX2 = np.array([j for j, k in enumerate(skeleton.JOINT_3D_OF_2D) if k >= 0])
_IDX3 = np.array([skeleton.JOINT_3D_OF_2D[j] for j in _IDX2])
_ROT_IDX = np.array(ROT_JOINTS)
_N_ROT = 3 * len(ROT_JOINTS)
_PAIR_J = _ROT_IDX[_PAIR_R]
# Flat positions in a (21, 3, N_PARAMS) Jacobian of the pairs' 3x3 blocks [pair, xyz, c], and of
# the root position's identity.
_JAC_ROT = ((_PAIR_K[:, None, None] * 3 + np.arange(3)[None, :, None]) * N_PARAMS
            + 3 * _PAIR_R[:, None, None] + np.arange(3)[None, None, :]).reshape(-1)
_JAC_ROOT = ((np.arange(J3)[:, None] * 3 + np.arange(3)) * N_PARAMS + N_PARAMS - 3 + np.arange(3)).reshape(-1)


def _forward(local: np.ndarray, root_pos: np.ndarray, offsets: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Positions (P, 21, 3) and global orientations (P, 21, 3, 3; leaves' rows unused) from local
    rotation matrices (P, 21, 3, 3; row ROOT = the root's global rotation) and rest offsets (P, 21, 3)."""
    glob = np.zeros_like(local)
    glob[:, ROOT] = local[:, ROOT]
    for js, ps in _GLOB_LEVELS:
        glob[:, js] = glob[:, ps] @ local[:, js]
    bones = (glob[:, _PARENT_OR_ROOT] @ offsets[..., None])[..., 0]         # the root's offset is 0
    return root_pos[:, None] + _ANCESTRY @ bones, glob


def _matrix_to_rotvec(r: np.ndarray) -> np.ndarray:
    """(..., 3, 3) rotation matrices -> (..., 3) rotation vectors (scipy only near 180 deg)."""
    flat = r.reshape(r.shape[:-2] + (9,))
    cos = np.clip((flat[..., 0] + flat[..., 4] + flat[..., 8] - 1.0) * 0.5, -1.0, 1.0)
    angle = np.arccos(cos)
    scale = 0.5 * angle / np.maximum(np.sqrt(1.0 - cos * cos), 1e-12)   # angle / (2 sin angle), 1/2 at 0
    scale = np.where(angle < 1e-6, 0.5, scale)
    out = (flat[..., [7, 2, 3]] - flat[..., [5, 6, 1]]) * scale[..., None]
    near_pi = angle > np.pi - 1e-3
    if near_pi.any():
        out[near_pi] = Rotation.from_matrix(r[near_pi]).as_rotvec()
    return out


def _residuals(pos: np.ndarray, glob: np.ndarray, target: np.ndarray, valid: np.ndarray, cfg: IKConfig,
               kp2d: np.ndarray | None, intrinsics: Intrinsics | None, jacobian: bool) -> np.ndarray:
    """Residuals (P, R) of the 3D and 2D terms, or with `jacobian` their Jacobian (P, R, N_PARAMS).

    d p_k / d w_r = -[p_k - p_r]x G_r for each rotating joint r above k; d p_k / d root_pos = I.
    """
    n = len(pos)
    w3 = None if valid.all() and cfg.w_3d == 1.0 else (np.sqrt(cfg.w_3d) * valid).repeat(3, axis=1)
    if use_2d := kp2d is not None:
        idx2, idx3 = _IDX2, _IDX3
        p = pos[:, idx3]
        z = np.maximum(p[..., 2], 1.0)
        f = np.array([intrinsics.fx, intrinsics.fy])
        c = np.where(np.isfinite(kp2d[:, idx2, :2]).all(-1), np.clip(kp2d[:, idx2, 2], 0, None), 0.0)
        wc = np.sqrt(cfg.w_2d) * c[..., None]
    if not jacobian:
        res = (pos - target).reshape(n, -1)
        if w3 is not None:
            res = res * w3
        if not use_2d:
            return res
        proj = f * p[..., :2] / z[..., None] + np.array([intrinsics.cx, intrinsics.cy])
        res2 = ((proj - np.nan_to_num(kp2d[:, idx2, :2])) * wc).reshape(n, -1)
        return np.concatenate([res, res2], 1)

    lever = pos[:, _PAIR_K] - pos[:, _PAIR_J]                              # (P, M, 3)
    skew = np.zeros(lever.shape + (3,))
    skew[..., 0, 1], skew[..., 0, 2], skew[..., 1, 2] = lever[..., 2], -lever[..., 1], lever[..., 0]
    skew[..., 1, 0], skew[..., 2, 0], skew[..., 2, 1] = -lever[..., 2], lever[..., 1], -lever[..., 0]
    size = J3 * 3 * N_PARAMS
    dpos = np.zeros(n * size)                            # flat, so that one 1-D scatter fills it
    person = np.arange(n)[:, None] * size
    dpos[(person + _JAC_ROT).reshape(-1)] = (skew @ glob[:, _PAIR_J]).reshape(-1)   # -[lever]x G
    dpos[(person + _JAC_ROOT).reshape(-1)] = 1.0
    dpos = dpos.reshape(n, J3, 3, N_PARAMS)
    jac = dpos.reshape(n, 3 * J3, N_PARAMS)
    if w3 is not None:
        jac = jac * w3[..., None]
    if not use_2d:
        return jac
    dproj = np.zeros(p.shape[:2] + (2, 3))
    dproj[..., 0, 0] = f[0] / z
    dproj[..., 1, 1] = f[1] / z
    dproj[..., :, 2] = -f * p[..., :2] / (z ** 2)[..., None]
    jac2 = ((dproj @ dpos[:, idx3]) * wc[..., None]).reshape(n, -1, N_PARAMS)
    return np.concatenate([jac, jac2], 1)


def _evaluate(local, root_pos, offsets, target, valid, prev_t, has_prev, lo, hi, cfg, kp2d, intrinsics):
    """The cost (P,) at one state, with what `_normal_equations` needs to linearise it there."""
    pos, glob = _forward(local, root_pos, offsets)
    res = _residuals(pos, glob, target, valid, cfg, kp2d, intrinsics, jacobian=False)
    cost = (res * res).sum(1)
    n = len(pos)
    rot_local = local[:, _ROT_IDX]
    rel = None
    if prev_t is None:
        rot = _matrix_to_rotvec(rot_local).reshape(n, -1)                  # (P, 3 R)
    else:
        both = _matrix_to_rotvec(np.concatenate([rot_local, prev_t @ rot_local], 1)).reshape(n, 2, -1)
        rot, rel = both[:, 0], both[:, 1] * (cfg.w_smooth * has_prev[:, None])
        cost += (rel * rel).sum(1)
    out_of_range = (np.minimum(rot - lo, 0.0) + np.maximum(rot - hi, 0.0)) * cfg.w_limits
    cost += (out_of_range * out_of_range).sum(1)
    return cost, (pos, glob, res, out_of_range, rel)


def _normal_equations(terms, target, valid, has_prev, cfg, kp2d, intrinsics):
    """J^T J (P, N, N) and J^T r (P, N) of the state `_evaluate` returned `terms` for.

    The smoothness and limit terms have identity Jacobians in the local perturbations, so
    they add to the diagonal rather than being stacked as rows.
    """
    pos, glob, res, out_of_range, rel = terms
    jac = _residuals(pos, glob, target, valid, cfg, kp2d, intrinsics, jacobian=True)
    jt = np.swapaxes(jac, 1, 2)
    jtj = jt @ jac
    jtr = (jt @ res[..., None])[..., 0]
    n = len(pos)
    diag = jtj.reshape(n, -1)[:, ::N_PARAMS + 1][:, :_N_ROT]                # a view
    diag += cfg.w_limits ** 2 * (out_of_range != 0)
    jtr[:, :_N_ROT] += cfg.w_limits * out_of_range
    if rel is not None:
        diag += cfg.w_smooth ** 2 * has_prev[:, None]
        jtr[:, :_N_ROT] += cfg.w_smooth * rel
    return jtj, jtr


def _perturb(local: np.ndarray, root_pos: np.ndarray, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The state moved by a parameter step (P, N_PARAMS): R_i <- R_i exp(delta_i), root + delta."""
    out = local.copy()
    out[:, _ROT_IDX] = local[:, _ROT_IDX] @ rotvec_to_matrix(delta[:, :-3].reshape(len(local), -1, 3))
    return out, root_pos + delta[:, -3:]


def _take(terms, idx):
    return tuple(None if t is None else t[idx] for t in terms)


def fit_skeletons(kp3d: np.ndarray, bone_lengths: np.ndarray, init_angles: np.ndarray | None = None,
                  init_root_pos: np.ndarray | None = None, prev_angles: np.ndarray | None = None,
                  kp2d: np.ndarray | None = None, intrinsics: Intrinsics | None = None,
                  cfg: IKConfig = IKConfig()) -> IKResult:
    """Fit all people at once.

    Args:
        kp3d: (P, 21, 3) target joints (camera space, or root-relative), NaN = unknown.
        bone_lengths: (P, 21) or (21,) mm.
        init_angles: (P, 21, 3) warm start (row ROOT = root rotation); analytic if None.
            Rows may be NaN for people without a previous frame. Warm-started people take
            at most cfg.max_iter_warm iterations, the others cfg.max_iter.
        init_root_pos: (P, 3); the target pelvis if None.
        prev_angles: (P, 21, 3) previous frame's angles for the smoothness term (NaN rows: none).
        kp2d, intrinsics: (P, 19, 3) pixels + confidence for the optional 2D term (cfg.w_2d > 0).
    """
    kp3d = np.asarray(kp3d, dtype=np.float64).reshape(-1, J3, 3)
    n = len(kp3d)
    offsets = rest_offsets(np.broadcast_to(np.asarray(bone_lengths, dtype=np.float64), (n, J3)))
    valid = np.isfinite(kp3d).all(-1)
    target = np.nan_to_num(kp3d)

    warm = np.zeros(n, dtype=bool)
    angles = np.zeros((n, J3, 3))
    prev_is_init = prev_angles is init_angles
    if init_angles is not None:
        init_angles = np.asarray(init_angles, dtype=np.float64)
        warm = np.isfinite(init_angles).all((1, 2))
        angles[warm] = init_angles[warm]
    if not warm.all():
        angles[~warm] = initial_angles(kp3d[~warm])[0]
    local = rotvec_to_matrix(angles)
    root_pos = np.where(valid[:, ROOT, None], target[:, ROOT], _valid_mean(target, valid))
    if init_root_pos is not None:
        root_pos = np.where(np.isfinite(init_root_pos), init_root_pos, root_pos)
    prev_t, has_prev = None, np.zeros(n, dtype=bool)
    if prev_angles is not None:
        prev_angles = np.asarray(prev_angles, dtype=np.float64)
        has_prev = np.isfinite(prev_angles).all((1, 2))
        if has_prev.any():
            prev = local if prev_is_init else rotvec_to_matrix(np.nan_to_num(prev_angles))
            prev_t = np.swapaxes(prev[:, _ROT_IDX], -1, -2)
    use_2d = cfg.w_2d > 0 and kp2d is not None and intrinsics is not None
    lo = (np.radians(-cfg.limit_margin_deg) + _LIMIT_LO[_ROT_IDX]).reshape(-1)
    hi = (np.radians(cfg.limit_margin_deg) + _LIMIT_HI[_ROT_IDX]).reshape(-1)

    def evaluate(idx, local, root_pos):
        return _evaluate(local, root_pos, offsets[idx], target[idx], valid[idx],
                         None if prev_t is None else prev_t[idx], has_prev[idx], lo, hi, cfg,
                         kp2d[idx] if use_2d else None, intrinsics)

    def normal_equations(idx, terms):
        return _normal_equations(terms, target[idx], valid[idx], has_prev[idx], cfg,
                                 kp2d[idx] if use_2d else None, intrinsics)

    # Levenberg-Marquardt, one damping factor per person: a step that raises a person's cost
    # is undone and retried with more damping. The state is kept as rotation matrices; a
    # person stops at convergence or at its iteration limit.
    cost, terms = evaluate(slice(None), local, root_pos)
    pos = terms[0]
    jtj, jtr = normal_equations(slice(None), terms)
    lam = np.full(n, cfg.damping)
    limit = np.where(warm, min(cfg.max_iter_warm, cfg.max_iter), cfg.max_iter)
    done_iters = np.zeros(n, dtype=int)
    active = np.arange(n)[limit > 0]
    diag = np.arange(N_PARAMS)
    while len(active):
        idx = slice(None) if len(active) == n else active
        a = jtj[idx].copy()
        a[:, diag, diag] += lam[idx, None] * (a[:, diag, diag] + 1.0)
        delta = -np.linalg.solve(a, jtr[idx, :, None])[..., 0]
        new_local, new_root = _perturb(local[idx], root_pos[idx], delta)
        new_cost, new_terms = evaluate(idx, new_local, new_root)
        new_pos = new_terms[0]
        better = new_cost <= cost[idx]
        step = np.abs(new_pos - pos[idx]).max((1, 2), initial=0.0)    # largest joint move (mm)
        took = active[better]
        local[took], root_pos[took], pos[took], cost[took] = (new_local[better], new_root[better],
                                                              new_pos[better], new_cost[better])
        lam[active] = np.where(better, np.maximum(lam[active] / 3.0, 1e-7), lam[active] * 5.0)
        done_iters[active] += 1
        going = (step >= cfg.tol_mm) & (lam[active] <= 1e6) & (done_iters[active] < limit[active])
        relinearise = going & better
        if relinearise.any():
            jtj[active[relinearise]], jtr[active[relinearise]] = normal_equations(
                active[relinearise], _take(new_terms, relinearise))
        active = active[going]
    angles[:, _ROT_IDX] = _matrix_to_rotvec(local[:, _ROT_IDX])
    err = np.where(valid, np.linalg.norm(pos - target, axis=-1), 0.0)
    rms = np.sqrt((err ** 2).sum(1) / np.maximum(valid.sum(1), 1))
    return IKResult(angles=angles, root_rot=angles[:, ROOT].copy(), root_pos=root_pos, joints=pos,
                    rms_mm=rms, iterations=int(done_iters.max(initial=0)))


def _valid_mean(target: np.ndarray, valid: np.ndarray) -> np.ndarray:
    return (target * valid[..., None]).sum(1) / np.maximum(valid.sum(1), 1)[:, None]


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
