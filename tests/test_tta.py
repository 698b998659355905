"""Test-time augmentation: mirrored maps turned back, rescaled maps resampled onto the input grid
and fused, an estimator whose results mirror with the image, and the bench."""
from dataclasses import replace

import cv2
import numpy as np
import pytest

from xnect_app import skeleton
from xnect_app.estimator import ModelConfig, PoseEstimator, TrackConfig
from xnect_app.pose.peaks import find_peaks
from xnect_app.pose.synthetic import random_scene
from xnect_app.pose.targets import render_targets
from xnect_app.runtime.tta import average_with_mirror, fuse_scales, resize_maps, scaled_size, unmirror_maps
from xnect_app.train.augment import flip_labels
from xnect_app.weights import default_weights_path

UNTRACKED = TrackConfig(tracking=False)

from shared_data import DATA, needs_data

COCO_DEV = DATA / "coco_dev"


def _targets(kp2d, kp3d, size=(512, 320)):
    t = render_targets(kp2d, kp3d, size)
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


def test_maps_of_a_half_size_frame_resample_onto_the_full_size_grid():
    """The joints of a scene rendered at 256x160, resampled to the 64x40 grid of 512x320, peak
    where the full-size rendering puts them (pixel centres scale as image resizing scales them)."""
    scene = random_scene(np.random.default_rng(5), 2, height_px=(150.0, 250.0))
    half = scene.kp2d.copy()
    half[..., :2] = (half[..., :2] + 0.5) * 0.5 - 0.5
    full_hm = _targets(scene.kp2d, scene.kp3d_rel_mm)[0][0]
    small = _targets(half, scene.kp3d_rel_mm, (256, 160))
    resampled = resize_maps(small, (64, 40))
    assert [m.shape[1:] for m in resampled] == [(19, 40, 64), (36, 40, 64), (63, 40, 64)]
    errors = []
    for want, got in zip(find_peaks(full_hm, 0.5), find_peaks(resampled[0][0], 0.3)):
        for x, y, _ in want:
            if len(got):
                errors.append(np.hypot(*(got[:, :2] - (x, y)).T).min())
    errors = np.array(errors)  # in cells; face points close together may merge at half size
    assert len(errors) >= 20 and np.median(errors) < 0.15 and np.mean(errors < 0.3) > 0.8, errors.round(2)


def test_fusing_scales_keeps_a_person_only_one_scale_sees():
    """A small person the coarse scale misses keeps full-height peaks and full-length PAFs (an
    average would halve them), and a large one the coarse scale sees better takes its maps."""
    small, large = random_scene(np.random.default_rng(1), 1), random_scene(np.random.default_rng(2), 1)
    fine = _targets(small.kp2d, small.kp3d_rel_mm)
    coarse = _targets(large.kp2d, large.kp3d_rel_mm)
    hm, paf, enc = fuse_scales([fine, coarse])
    np.testing.assert_array_equal(hm, np.maximum(fine[0], coarse[0]))
    fine_len, coarse_len = (np.hypot(m[1][:, 0::2], m[1][:, 1::2]) for m in (fine, coarse))
    np.testing.assert_allclose(np.hypot(paf[:, 0::2], paf[:, 1::2]), np.maximum(fine_len, coarse_len), atol=1e-6)
    from_fine = np.repeat(fine_len > coarse_len, 2, axis=1)  # x and y of the limbs where fine is longer
    assert from_fine.sum() > 20 and (~from_fine & (np.abs(coarse[1]) > 0.5)).sum() > 20
    np.testing.assert_array_equal(paf[from_fine], fine[1][from_fine])
    np.testing.assert_array_equal(paf[~from_fine], coarse[1][~from_fine])
    assert enc is fine[2]
    assert fuse_scales([fine]) is fine


def test_scaled_sizes_stay_multiples_of_16():
    assert scaled_size((512, 320), 0.75) == (384, 240)
    assert scaled_size((512, 320), 0.5) == (256, 160)
    assert scaled_size((512, 320), 0.3) == (160, 96)
    assert scaled_size((512, 320), 0.01) == (32, 32)
    with pytest.raises(ValueError):
        scaled_size((512, 320), 0.0)


def test_flip_and_scales_are_dense_only():
    with pytest.raises(ValueError, match="dynconv"):
        ModelConfig(random_init=True, dynconv="motion", flip_test=True)
    with pytest.raises(ValueError, match="dynconv"):
        ModelConfig(random_init=True, dynconv="motion", test_scales=(1, 0.5))
    # scale 1 alone is the plain single pass
    assert PoseEstimator(ModelConfig(random_init=True, dynconv="motion", test_scales=(1.0,), torch_thread=False)).dynconv


def test_scales_and_a_reduced_mirror_run_on_both_backends_with_the_same_result():
    frame = np.random.default_rng(0).integers(0, 255, (240, 320, 3), np.uint8)
    model = ModelConfig(input_size=(128, 80), test_scales=(1, 0.75, 0.5), flip_test=True, flip_scale=0.75,
                        torch_thread=False, precision="fp32")
    torch_est = PoseEstimator(replace(model, random_init=True), track=UNTRACKED)
    ort_est = PoseEstimator.from_networks(torch_est.stage1, torch_est.stage2, replace(model, backend="onnxruntime"),
                                          track=UNTRACKED)
    a = torch_est.runner([frame[:80, :128].copy()])
    b = ort_est.runner([frame[:80, :128].copy()])
    assert a.masks is None and b.masks is None
    for x, y in zip(a[:3], b[:3]):
        assert x.shape[-2:] == (10, 16)
        np.testing.assert_allclose(x, y, atol=2e-3)


def test_a_reduced_mirror_is_resampled_and_averaged_with_the_full_size_pass():
    frame = np.random.default_rng(1).integers(0, 255, (80, 128, 3), np.uint8)
    est = PoseEstimator(ModelConfig(random_init=True, input_size=(128, 80), flip_test=True, flip_scale=0.5,
                                    torch_thread=False, precision="fp32"), track=UNTRACKED)
    assert est.settings()["flip_scale"] == 0.5
    one_pass = est.runner.runner  # the single passes the flip test combines
    got = est.runner([frame])
    plain = one_pass([frame])
    small = cv2.resize(frame, scaled_size((128, 80), 0.5), interpolation=cv2.INTER_AREA)
    small = np.ascontiguousarray(small[:, ::-1])
    back = resize_maps(unmirror_maps(*one_pass([small])[:3]), (16, 10))
    for g, a, b in zip(got[:3], plain[:3], back):
        assert g.shape == a.shape and np.abs(a - b).max() > 1e-3  # the mirror's maps do differ
        np.testing.assert_allclose(g, (a + b) / 2, atol=1e-5)
    with pytest.raises(ValueError, match="flip scale"):
        ModelConfig(random_init=True, flip_test=True, flip_scale=1.5)


def test_flip_scale_on_the_command_line(capsys):
    from xnect_app.cli.eval import main
    with pytest.raises(SystemExit) as e:
        main(["coco", str(COCO_DEV), "--flip-scale", "1.5"])
    assert e.value.code == 2 and "--flip-scale" in capsys.readouterr().err


@needs_data("coco_dev")
@pytest.mark.skipif(not default_weights_path().is_file(), reason="needs the bundled weights")
def test_with_flip_test_the_people_of_a_mirrored_photo_are_the_mirrored_people():
    """Without flip test a network's left/right and sub-cell biases differ between a photo and its
    mirror; with it both give the same people, mirrored, left and right joints swapped."""
    photo = cv2.imread(str(COCO_DEV / "images" / "000000000192.jpg"))
    assert photo is not None
    photo = cv2.resize(photo, (640, 400))  # the input's aspect: no letterbox border to break symmetry
    est = PoseEstimator(ModelConfig(flip_test=True, torch_thread=False), track=UNTRACKED)
    people = est(photo).people
    mirrored = est(np.ascontiguousarray(photo[:, ::-1])).people
    assert len(people) >= 1 and len(mirrored) == len(people)
    for p, m in zip(people, mirrored):
        assert m.score == pytest.approx(p.score, abs=1e-3)
        back = m.kp2d[list(skeleton.FLIP_2D)].copy()
        back[:, 0] = 639 - back[:, 0]
        seen = p.kp2d[:, 2] > 0
        np.testing.assert_array_equal(back[:, 2] > 0, seen)
        # within a fifth of a map cell (10 px here): bfloat16 rounding can tip a near-tie in the
        # sub-cell refinement; without flip test the same joints differ by up to 100 px
        np.testing.assert_allclose(back[seen, :2], p.kp2d[seen, :2], atol=2.0)
        assert np.isfinite(p.kp3d_cam_mm).all()


@pytest.mark.skipif(not default_weights_path().is_file(), reason="needs the bundled weights")
def test_bench_times_every_setting_on_the_same_frames(tmp_path, capsys):
    import json

    from server_helpers import clip_path
    from xnect_app.cli.bench import main
    out = tmp_path / "tta.json"
    assert main(["tta", "--video", str(clip_path()), "--frames", "2", "--input-size", "256x160",
                 "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["setting"] for r in rows] == ["single pass", "--flip", "--flip-scale 0.625", "--scales 1,0.75,0.5",
                                            "--flip --scales 1,0.75,0.5"]
    assert rows[0]["stage1_ratio"] == 1.0 and all(r["stage1_ms"] > 0 for r in rows)
    assert rows[0]["people_per_frame"] >= 1  # two people walk in this clip
    assert "--flip --scales 1,0.75,0.5" in capsys.readouterr().out
