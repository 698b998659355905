"""Root translation from 2D/3D agreement."""
from __future__ import annotations

import numpy as np

from xnect_app import skeleton
from xnect_app.pose.root import solve_root_translation, to_camera
from xnect_app.pose.synthetic import random_scene


def _scene(seed: int = 0, n: int = 6):
    return random_scene(np.random.default_rng(seed), n, layout="random", height_px=(60, 250))


def test_exact_translation_from_noiseless_data():
    s = _scene()
    root, ok = solve_root_translation(s.kp3d_rel_mm, s.kp2d, s.intrinsics)
    truth = s.kp3d_cam_mm[:, skeleton.ROOT_3D]
    visible = (s.kp2d[:, :14, 2] > 0).sum(1) >= 3
    assert np.array_equal(ok, visible)
    assert np.allclose(root[ok], truth[ok], atol=1e-6)
    assert np.allclose(to_camera(s.kp3d_rel_mm, root)[ok], s.kp3d_cam_mm[ok], atol=1e-6)


def test_noisy_data_gives_a_small_error():
    rng = np.random.default_rng(1)
    errs, depths = [], []
    for seed in range(10):
        s = _scene(seed)
        kp2d = s.kp2d.copy()
        kp2d[..., :2] += rng.normal(0, 2.0, kp2d[..., :2].shape)       # 2 px
        kp3d = s.kp3d_rel_mm + rng.normal(0, 20.0, s.kp3d_rel_mm.shape)  # 20 mm
        root, ok = solve_root_translation(kp3d, kp2d, s.intrinsics)
        errs.append(np.linalg.norm(root[ok] - s.kp3d_cam_mm[ok, skeleton.ROOT_3D], axis=-1))
        depths.append(s.kp3d_cam_mm[ok, skeleton.ROOT_3D, 2])
    rel = np.concatenate(errs) / np.concatenate(depths)
    assert np.median(rel) < 0.05 and rel.max() < 0.25


def test_confidence_weights_downweight_outliers():
    s = _scene(2, n=1)
    kp2d = s.kp2d.copy()
    kp2d[0, 4, :2] += 80.0                     # a badly wrong wrist...
    bad, _ = solve_root_translation(s.kp3d_rel_mm, kp2d, s.intrinsics)
    kp2d[0, 4, 2] = 0.01                        # ...that the network was unsure about
    good, _ = solve_root_translation(s.kp3d_rel_mm, kp2d, s.intrinsics)
    truth = s.kp3d_cam_mm[0, skeleton.ROOT_3D]
    assert np.linalg.norm(good[0] - truth) < 0.1 * np.linalg.norm(bad[0] - truth)


def test_too_few_joints_gives_nan_and_flag():
    s = _scene(3, n=3)
    kp2d = s.kp2d.copy()
    kp2d[0, :, 2] = 0
    kp2d[0, [1, 2], 2] = 1                      # two joints only
    kp3d = s.kp3d_rel_mm.copy()
    kp3d[1] = np.nan                            # no 3D at all
    root, ok = solve_root_translation(kp3d, kp2d, s.intrinsics)
    assert not ok[0] and not ok[1] and np.isnan(root[:2]).all()
    assert ok[2] == ((s.kp2d[2, :14, 2] > 0).sum() >= 3)
    empty, ok0 = solve_root_translation(np.zeros((0, 21, 3)), np.zeros((0, 19, 3)), s.intrinsics)
    assert empty.shape == (0, 3) and ok0.shape == (0,)
