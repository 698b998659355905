"""Kinematic skeleton fit."""
from __future__ import annotations

import numpy as np

from xnect_app import skeleton
from xnect_app.pose.ik import IKConfig, SkeletonFitter, fit_skeletons, fk, rest_offsets
from xnect_app.pose.kinematics import LEAF_JOINTS, bone_lengths_of
from xnect_app.pose.synthetic import project, random_people
from xnect_app.types import Intrinsics

ROOT = skeleton.ROOT_3D
NON_ROOT = [j for j in range(21) if j != ROOT]


def _people(n=8, seed=0):
    p = random_people(np.random.default_rng(seed), n)
    root = np.stack([np.linspace(-1500, 1500, n), np.full(n, 300.0), np.linspace(3000, 8000, n)], 1)
    return p, p["kp3d_rel_mm"] + root[:, None]


def test_rest_pose_is_a_t_pose_facing_the_camera():
    bones = np.full(21, 100.0)
    off = rest_offsets(bones)
    assert off.shape == (21, 3) and np.allclose(off[ROOT], 0)
    pose = fk(np.zeros((21, 3)), np.zeros(3), np.zeros(3), bones)
    j = skeleton.JOINTS_3D.index
    assert pose[j("r_wrist"), 0] < pose[j("r_shoulder"), 0] < pose[j("neck"), 0] < pose[j("l_shoulder"), 0]
    assert np.isclose(pose[j("r_wrist"), 1], pose[j("neck"), 1])          # arms horizontal
    assert pose[j("head_top"), 1] < pose[j("neck"), 1] < pose[ROOT, 1] < pose[j("l_ankle"), 1]


def test_fit_reproduces_a_pose_made_by_fk():
    people, target = _people()
    res = fit_skeletons(target, people["bone_lengths"])
    assert np.linalg.norm(res.joints - target, axis=-1).max() < 1.0
    again = fk(res.angles, res.root_rot, res.root_pos, people["bone_lengths"])
    assert np.allclose(again, res.joints, atol=1e-6)
    assert np.allclose(bone_lengths_of(res.joints)[:, NON_ROOT], people["bone_lengths"][:, NON_ROOT], atol=1e-6)
    assert np.allclose(res.angles[:, LEAF_JOINTS], 0)


def test_fit_keeps_the_skeleton_when_the_target_disagrees():
    people, target = _people(seed=1)
    noisy = target + np.random.default_rng(2).normal(0, 25.0, target.shape)
    res = fit_skeletons(noisy, people["bone_lengths"])
    assert np.allclose(bone_lengths_of(res.joints)[:, NON_ROOT], people["bone_lengths"][:, NON_ROOT], atol=1e-6)
    err_noisy = np.linalg.norm(noisy - target, axis=-1).mean()
    err_fit = np.linalg.norm(res.joints - target, axis=-1).mean()
    assert err_fit < err_noisy                  # fixed bones filter part of the noise out
    assert np.all(res.rms_mm < 60)


def test_batched_fit_equals_one_by_one():
    people, target = _people(n=4, seed=3)
    together = fit_skeletons(target, people["bone_lengths"])
    for k in range(4):
        alone = fit_skeletons(target[k:k + 1], people["bone_lengths"][k])
        assert np.abs(alone.joints[0] - together.joints[k]).max() < 0.1   # within the solver tolerance


def test_missing_joints_are_left_to_the_skeleton():
    people, target = _people(n=3, seed=4)
    partial = target.copy()
    partial[:, [4, 17]] = np.nan                 # right wrist and hand unseen
    res = fit_skeletons(partial, people["bone_lengths"])
    seen = [j for j in range(21) if j not in (4, 17)]
    assert np.linalg.norm(res.joints[:, seen] - target[:, seen], axis=-1).max() < 1.0
    assert np.isfinite(res.joints).all()


def test_warm_started_tracking_is_continuous_and_cheap():
    rng = np.random.default_rng(5)
    people, target = _people(n=2, seed=5)
    fitter = SkeletonFitter()
    prev = None
    iters = []
    for f in range(6):
        moved = target + np.array([20.0 * f, 0, 0])                      # walking sideways
        noisy = moved + rng.normal(0, 5.0, moved.shape)
        res = fitter.fit([7, 9], noisy, people["bone_lengths"])
        assert np.linalg.norm(res.joints - moved, axis=-1).mean() < 10
        if prev is not None:
            assert np.abs(res.angles - prev).max() < 0.5                 # no flips between frames
            iters.append(res.iterations)
        prev = res.angles
    assert max(iters) <= 3


def test_2d_term_pulls_the_fit_onto_the_image_evidence():
    intr = Intrinsics.from_fov(512, 320, 60)
    people, target = _people(n=3, seed=6)
    kp2d = np.zeros((3, 19, 3))
    kp2d[:, :14, :2] = project(target[:, :14], intr)
    kp2d[:, :14, 2] = 1.0
    shifted = target + np.array([150.0, 0.0, 0.0])                       # 3D placed 15 cm off
    off = fit_skeletons(shifted, people["bone_lengths"])
    on = fit_skeletons(shifted, people["bone_lengths"], kp2d=kp2d, intrinsics=intr,
                       cfg=IKConfig(w_2d=2000.0, max_iter=10))

    def reproj(j):
        return np.linalg.norm(project(j[:, :14], intr) - kp2d[:, :14, :2], axis=-1).mean()
    assert reproj(on.joints) < 0.3 * reproj(off.joints)


def test_analytic_jacobian_matches_finite_differences():
    from xnect_app.pose import ik
    from xnect_app.pose.kinematics import rotvec_to_matrix
    people, target = _people(n=2, seed=7)
    intr = Intrinsics.from_fov(512, 320, 60)
    kp2d = np.zeros((2, 19, 3))
    kp2d[:, :14, :2] = project(target[:, :14], intr) + 3.0
    kp2d[:, :14, 2] = 0.8
    angles = people["angles"].copy()
    angles[:, ROOT] = people["root_rot"]
    angles += np.random.default_rng(0).normal(0, 0.05, angles.shape)   # away from the optimum
    local, root = rotvec_to_matrix(angles), target[:, ROOT] + 30.0
    offsets = rest_offsets(people["bone_lengths"])
    valid = np.ones((2, 21), dtype=bool)
    valid[1, 4] = False
    cfg = IKConfig(w_2d=3.0, w_limits=50.0, limit_margin_deg=-10.0, w_smooth=0.0)
    rot_idx = np.array(ik.ROT_JOINTS)
    lo = (np.radians(10.0) + ik._LIMIT_LO[rot_idx]).reshape(-1)
    hi = (np.radians(-10.0) + ik._LIMIT_HI[rot_idx]).reshape(-1)
    none = np.zeros(2, dtype=bool)

    def residuals(local, root):
        pos, glob = ik._forward(local, root, offsets)
        return ik._residuals(pos, glob, target, valid, cfg, kp2d, intr, jacobian=False)

    pos, glob = ik._forward(local, root, offsets)
    jac = ik._residuals(pos, glob, target, valid, cfg, kp2d, intr, jacobian=True)
    cost, terms = ik._evaluate(local, root, offsets, target, valid, None, none, lo, hi, cfg, kp2d, intr)
    assert (terms[3] != 0).any()                                      # some joints beyond their limits
    jtj, jtr = ik._normal_equations(terms, target, valid, none, cfg, kp2d, intr)
    res = residuals(local, root)
    eps = 1e-6
    for k in range(ik.N_PARAMS):
        d = np.zeros((2, ik.N_PARAMS))
        d[:, k] = eps
        numeric = (residuals(*ik._perturb(local, root, d)) - res) / eps
        assert np.allclose(numeric, jac[:, :, k], atol=1e-3 * max(1.0, np.abs(numeric).max())), k
    # the limit rows (one per out-of-range angle, identity Jacobian) join the normal equations
    beyond = np.pad(terms[3], ((0, 0), (0, 3)))
    assert np.isclose(cost, (res ** 2).sum(1) + (beyond ** 2).sum(1)).all()
    assert np.allclose(jtr, (np.swapaxes(jac, 1, 2) @ res[..., None])[..., 0] + cfg.w_limits * beyond)
    assert np.allclose(jtj, np.swapaxes(jac, 1, 2) @ jac
                       + np.apply_along_axis(np.diag, 1, cfg.w_limits ** 2 * (beyond != 0)))
