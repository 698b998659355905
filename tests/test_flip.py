"""Test-time flip: mirrored maps turned back, and an estimator whose results mirror with the image."""
from pathlib import Path

import cv2
import numpy as np
import pytest

from xnect_app import skeleton
from xnect_app.estimator import PoseEstimator, default_weights_path
from xnect_app.pose.flip import average_with_mirror, unmirror_maps
from xnect_app.pose.synthetic import random_scene
from xnect_app.pose.targets import render_targets
from xnect_app.train.augment import flip_labels

COCO_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_dev"


def _targets(kp2d, kp3d):
    t = render_targets(kp2d, kp3d, (512, 320))
    return t["heatmaps"][None], t["pafs"][None], t["enc3d"][None]


def test_the_targets_of_a_mirrored_scene_unmirror_into_the_targets_of_the_scene():
    scene = random_scene(np.random.default_rng(3), 3)
    maps = _targets(scene.kp2d, scene.kp3d_rel_mm)
    kp, k3, _ = flip_labels(scene.kp2d, scene.kp3d_rel_mm, scene.kp2d[..., 2].copy(), 512)
    mirrored = _targets(kp, k3)
    for name, want, got in zip(("heatmaps", "pafs", "enc3d"), maps, unmirror_maps(*mirrored)):
        assert np.abs(want).max() > 0.5, name
        np.testing.assert_allclose(got, want, atol=1e-4, err_msg=name)
    # its own inverse, and the average of a frame with its exact mirror is the frame's maps
    for want, got in zip(mirrored, unmirror_maps(*unmirror_maps(*mirrored))):
        np.testing.assert_array_equal(got, want)
    both = tuple(np.concatenate([m, x]) for m, x in zip(maps, mirrored))
    for want, got in zip(maps, average_with_mirror(*both)):
        np.testing.assert_allclose(got, want, atol=1e-4)


def test_flip_test_is_dense_only():
    with pytest.raises(ValueError, match="dynconv"):
        PoseEstimator(random_init=True, dynconv="motion", flip_test=True, torch_thread=False)


@pytest.mark.skipif(not COCO_DEV.is_dir() or not default_weights_path().is_file(),
                    reason="needs ../shared/data/coco_dev and the bundled weights")
def test_with_flip_test_the_people_of_a_mirrored_photo_are_the_mirrored_people():
    """Without flip test a network's left/right and sub-cell biases differ between a photo and its
    mirror; with it both give the same people, mirrored, left and right joints swapped."""
    photo = cv2.imread(str(COCO_DEV / "images" / "000000000192.jpg"))
    assert photo is not None
    photo = cv2.resize(photo, (640, 400))  # the input's aspect: no letterbox border to break symmetry
    est = PoseEstimator(flip_test=True, tracking=False, torch_thread=False)
    people = est(photo).people
    mirrored = est(np.ascontiguousarray(photo[:, ::-1])).people
    assert len(people) >= 1 and len(mirrored) == len(people)
    for p, m in zip(people, mirrored):
        assert m.score == pytest.approx(p.score, abs=1e-3)
        back = m.kp2d[list(skeleton.FLIP_2D)].copy()
        back[:, 0] = 639 - back[:, 0]
        seen = p.kp2d[:, 2] > 0
        np.testing.assert_array_equal(back[:, 2] > 0, seen)
        np.testing.assert_allclose(back[seen, :2], p.kp2d[seen, :2], atol=0.05)
        assert np.isfinite(p.kp3d_cam_mm).all()
