"""Training data: label mapping, augmentation geometry, compositing, teacher mapping, data split."""
from __future__ import annotations

import json
from pathlib import Path

import cv2
import numpy as np
import pytest

from xnect_app import skeleton
from xnect_app.train import augment, composite, data, teacher

from shared_data import DATA, needs_data

J = skeleton.JOINTS_2D.index
J3 = skeleton.JOINTS_3D.index
needs_lspet = needs_data("lspet")


def _person(cx: float = 100.0, top: float = 40.0, h: float = 120.0) -> np.ndarray:
    """A standing person (19, 3), all joints visible."""
    u = h / 8
    xy = {
        "head_top": (0, 0), "neck": (0, 1.5), "r_shoulder": (-1, 1.7), "r_elbow": (-1.4, 3), "r_wrist": (-1.6, 4.2),
        "l_shoulder": (1, 1.7), "l_elbow": (1.4, 3), "l_wrist": (1.6, 4.2), "r_hip": (-0.6, 4.2), "r_knee": (-0.7, 6),
        "r_ankle": (-0.7, 8), "l_hip": (0.6, 4.2), "l_knee": (0.7, 6), "l_ankle": (0.7, 8), "nose": (0, 0.7),
        "r_eye": (-0.2, 0.5), "l_eye": (0.2, 0.5), "r_ear": (-0.4, 0.6), "l_ear": (0.4, 0.6),
    }
    kp = np.zeros((19, 3), np.float32)
    for n, (x, y) in xy.items():
        kp[J(n)] = (cx + x * u, top + y * u, 2)
    return kp


def _sample_with_dots(kp: np.ndarray, size=(200, 200)) -> data.Sample:
    img = np.zeros((size[1], size[0], 3), np.uint8)
    for j in range(19):
        img[int(round(kp[j, 1])), int(round(kp[j, 0]))] = (0, 0, 255) if j == J("r_wrist") else (0, 255, 0)
    k3 = np.random.default_rng(0).normal(0, 300, (1, 21, 3)).astype(np.float32)
    k3[0, skeleton.ROOT_3D] = 0
    return data.Sample(image=img, kp2d=kp[None].copy(), kp3d_mm=k3, labelled_2d=np.ones(19, bool),
                       ignore_mask=np.zeros(img.shape[:2], np.uint8), source="test")


# ---------------------------------------------------------------------------------- label mapping

def test_lspet_mapping_puts_lsp_joints_on_our_joints():
    lsp = np.zeros((14, 3))
    lsp[:, 2] = 1
    lsp[:, 0] = np.arange(14) * 10 + 5  # LSP joint k at x = 10k + 5
    lsp[:, 1] = 50
    lsp[0] = (0, -26.1, 0)               # right ankle not annotated (off image)
    kp = data.lspet_to_ours(lsp, 200, 100)
    assert kp[J("r_ankle"), 2] == 0
    assert kp[J("head_top")].tolist() == [135, 50, 2]   # LSP 13 = head top
    assert kp[J("neck")].tolist() == [125, 50, 2]       # LSP 12 = neck
    assert kp[J("r_wrist")].tolist() == [65, 50, 2]     # LSP 6 = right wrist
    assert kp[J("l_hip")].tolist() == [35, 50, 2]       # LSP 3 = left hip
    assert (kp[14:, 2] == 0).all()                      # no face points in LSPET


@needs_lspet
def test_lspet_reader_first_image():
    recs = data.read_lspet(DATA / "lspet")
    rec = recs[0]
    assert rec.source == "lspet" and rec.kp2d.shape == (1, 19, 3)
    assert np.allclose(rec.kp2d[0, J("head_top"), :2], (116.57, 53.42))
    assert np.allclose(rec.kp2d[0, J("r_wrist"), :2], (131.31, 13.8))
    assert rec.labelled_2d[:14].all() and not rec.labelled_2d[14:].any()
    # LSPET labels one person: far from it is "unknown" (ignored), the person itself is not
    rec = next(r for r in recs if r.ignore_outside[0] > 5 and r.ignore_outside[1] > 5)
    s = data.load_sample(rec)
    x, y = np.round(rec.kp2d[0, J("neck"), :2]).astype(int)
    assert s.ignore_mask[y, x] == 0 and s.ignore_mask[0, 0] == 1


def _coco_json(tmp_path: Path) -> Path:
    (tmp_path / "images").mkdir()
    cv2.imwrite(str(tmp_path / "images" / "a.jpg"), np.zeros((100, 120, 3), np.uint8))
    kps = np.zeros((17, 3))
    kps[0] = (60, 10, 2)   # nose
    kps[5] = (70, 30, 2)   # left shoulder
    kps[6] = (50, 32, 1)   # right shoulder, occluded
    kps[9] = (80, 60, 2)   # left wrist
    ann = {"images": [{"id": 1, "file_name": "images/a.jpg", "width": 120, "height": 100}],
           "annotations": [
               {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [40, 5, 50, 90],
                "keypoints": kps.ravel().tolist(), "num_keypoints": 4},
               {"id": 8, "image_id": 1, "category_id": 1, "iscrowd": 0, "bbox": [0, 0, 20, 30],
                "keypoints": [0] * 51, "num_keypoints": 0}],
           "categories": [{"id": 1, "name": "person"}]}
    p = tmp_path / "person_keypoints.json"
    p.write_text(json.dumps(ann))
    return p


def test_coco_mapping_neck_face_and_ignore(tmp_path):
    recs = data.read_coco(_coco_json(tmp_path))
    assert len(recs) == 1 and recs[0].keys == ["a.jpg#7"]
    kp = recs[0].kp2d[0]
    assert kp[J("nose")].tolist() == [60, 10, 2]
    assert kp[J("l_shoulder")].tolist() == [70, 30, 2]
    assert kp[J("r_shoulder")].tolist() == [50, 32, 1]
    assert kp[J("l_wrist")].tolist() == [80, 60, 2] and kp[J("r_wrist"), 2] == 0
    assert kp[J("neck")].tolist() == [60, 31, 1]       # shoulder midpoint, vis = min
    assert not recs[0].labelled_2d[J("head_top")] and recs[0].labelled_2d[J("nose")]
    s = data.load_sample(recs[0])
    assert s.ignore_mask[15, 10] == 1 and s.ignore_mask[60, 100] == 0  # the person without keypoints


# --------------------------------------------------------------------------------- augmentation

def test_flip_swaps_left_right_and_mirrors_coordinates():
    s = _sample_with_dots(_person())
    f = augment.flip_sample(s)
    w = s.image.shape[1]
    rw = s.kp2d[0, J("r_wrist")]
    lw = f.kp2d[0, J("l_wrist")]                  # the right wrist is now the left wrist
    assert lw[0] == pytest.approx(w - 1 - rw[0]) and lw[1] == rw[1]
    assert tuple(f.image[int(lw[1]), int(lw[0])]) == (0, 0, 255)
    assert np.allclose(f.kp3d_mm[0, J3("l_hand")], s.kp3d_mm[0, J3("r_hand")] * (-1, 1, 1))
    # flipping twice gives the original labels back
    ff = augment.flip_sample(f)
    assert np.allclose(ff.kp2d, s.kp2d) and np.allclose(ff.kp3d_mm, s.kp3d_mm)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_affine_moves_labels_with_the_image(seed):
    rng = np.random.default_rng(seed)
    s = _sample_with_dots(_person())
    M = augment.affine_matrix((rng.uniform(80, 120), rng.uniform(60, 100)), rng.uniform(0.8, 1.6),
                              rng.uniform(-30, 30), (256, 256))
    out = augment.warp_sample(s, M, (256, 256))
    red = out.image[..., 2].astype(float) - out.image[..., 1]
    y, x = np.unravel_index(np.argmax(red), red.shape)
    assert np.hypot(x - out.kp2d[0, J("r_wrist"), 0], y - out.kp2d[0, J("r_wrist"), 1]) <= 1.0


def test_rotation_rotates_3d_like_a_camera_roll():
    # a 3D pose projected with a pinhole at the rotation centre: rotating the image rotates
    # the projection exactly as rotating the 3D pose about z
    rng = np.random.default_rng(0)
    X = rng.normal(0, 400, (21, 3)) + (0, 0, 4000)
    f, c = 500.0, np.array([128.0, 128.0])
    proj = lambda P: P[:, :2] / P[:, 2:] * f + c  # noqa: E731
    M = augment.affine_matrix((128, 128), 1.0, 25.0, (256, 256))
    kp = np.concatenate([proj(X), np.full((21, 1), 2.0)], 1)
    moved = augment.transform_points(kp, M)[:, :2]
    assert np.allclose(proj(augment.rotate_3d(X, M)), moved, atol=1e-6)


@needs_lspet
def test_augment_keeps_small_and_large_people():
    ds = data.build_training_dataset(DATA, size=(256, 256), composite_prob=0.5, teacher_cache=None)
    heights = []
    for i in range(0, 60):
        s = ds[i * 131]
        assert s.image.shape == (256, 256, 3) and s.image.dtype == np.uint8
        assert s.kp2d.dtype == np.float32 and s.kp2d.shape[1:] == (19, 3)
        assert s.kp3d_mm.shape == (s.num_people, 21, 3) and s.ignore_mask.shape == (256, 256)
        assert s.labelled_2d.dtype == bool and s.labelled_2d.shape == (19,)
        heights += [augment.person_height(k) for k in s.kp2d if (k[:, 2] > 0).sum() >= 8]
    heights = np.array(heights)
    assert (heights < 80).mean() > 0.15 and (heights > 150).mean() > 0.1


# ----------------------------------------------------------------------------------- composites

def _record_with_person(tmp_path: Path, name: str, color) -> data.ImageRecord:
    kp = _person(cx=100, top=30, h=120)
    img = np.full((180, 200, 3), 40, np.uint8)
    cv2.fillConvexPoly(img, cv2.convexHull(np.round(kp[:, :2]).astype(np.int32)), color)
    for j in range(19):
        cv2.circle(img, (int(kp[j, 0]), int(kp[j, 1])), 1, (0, 0, 255) if j == J("l_ankle") else color, -1)
    path = tmp_path / name
    cv2.imwrite(str(path), img)
    return data.ImageRecord(path=str(path), width=200, height=180, kp2d=kp[None], labelled_2d=np.ones(19, bool),
                            source="test", keys=[name])


def test_composite_keeps_labels_on_pasted_people(tmp_path):
    rec = _record_with_person(tmp_path, "p.png", (0, 200, 0))
    cut = composite.cut_person(rec, 0)
    canvas = data.Sample(image=np.zeros((300, 400, 3), np.uint8), kp2d=np.zeros((0, 19, 3), np.float32),
                         kp3d_mm=np.zeros((0, 21, 3), np.float32), labelled_2d=np.ones(19, bool),
                         ignore_mask=np.zeros((300, 400), np.uint8), source="bg")
    out = composite.paste(canvas, cut, 1.0, (120.0, 250.0), False, cut.labelled)
    la = out.kp2d[0, J("l_ankle")]
    assert tuple(out.image[int(round(la[1])), int(round(la[0]))]) == (0, 0, 255)
    # paste a second person (nearer) over the first: covered joints become occluded (vis 1)
    out = composite.paste(out, cut, 1.0, (130.0, 250.0), True, cut.labelled)
    assert out.num_people == 2
    assert (out.kp2d[0, :, 2] == 1).sum() >= 5 and (out.kp2d[1, :, 2] == 2).all()
    la2 = out.kp2d[1, J("l_ankle")]  # flipped: the red dot belonged to the source's left ankle
    ra2 = out.kp2d[1, J("r_ankle")]
    assert tuple(out.image[int(round(ra2[1])), int(round(ra2[0]))]) == (0, 0, 255)
    assert np.allclose(la2[1], ra2[1])


def test_composite_scatters_people_by_depth(tmp_path):
    rec = _record_with_person(tmp_path, "p.png", (0, 200, 0))
    cuts = [composite.cut_person(rec, 0) for _ in range(4)]
    canvas = data.background_sample(str(rec.path))
    canvas.image = np.zeros((320, 480, 3), np.uint8)
    canvas.ignore_mask = np.zeros((320, 480), np.uint8)
    out = composite.composite(canvas, cuts, np.random.default_rng(3), near_height=200)
    h = [augment.person_height(k) for k in out.kp2d]
    assert out.num_people == 4 and h[-1] == pytest.approx(max(h))  # drawn far -> near
    assert max(h) / min(h) > 1.2


# ---------------------------------------------------------------------------------------- teacher

def _landmarks() -> tuple[np.ndarray, np.ndarray]:
    lm = np.zeros((33, 3), np.float32)
    lm[:, 0] = np.arange(33) * 3.0
    lm[:, 1] = 100 + np.arange(33)
    lm[:, 2] = 0.9
    world = np.random.default_rng(1).normal(0, 0.3, (33, 3)).astype(np.float32)
    return lm, world


def test_teacher_2d_mapping():
    lm, _ = _landmarks()
    lm[8, 2] = 0.2  # right ear barely visible
    kp, w = teacher.blazepose_to_ours_2d(lm)
    assert kp[J("l_shoulder")].tolist() == [33.0, 111.0, 2.0]   # BlazePose 11
    assert kp[J("r_wrist")].tolist() == [48.0, 116.0, 2.0]      # BlazePose 16
    assert kp[J("l_eye")].tolist() == [6.0, 102.0, 2.0]         # BlazePose 2
    assert kp[J("neck"), :2].tolist() == [34.5, 111.5]          # shoulder midpoint
    assert kp[J("head_top"), 2] == 0 and kp[J("r_ear"), 2] == 0  # not derived / not visible
    assert w[J("l_ankle")] == pytest.approx(0.9) and w[J("r_ear")] == 0


def test_teacher_3d_mapping():
    _, world = _landmarks()
    k3 = teacher.blazepose_to_ours_3d(world)
    mm = world * 1000
    pelvis = (mm[23] + mm[24]) / 2
    neck = (mm[11] + mm[12]) / 2 - pelvis
    head = (mm[7] + mm[8]) / 2 - pelvis
    assert np.allclose(k3[skeleton.ROOT_3D], 0)
    assert np.allclose(k3[J3("l_knee")], mm[25] - pelvis, atol=1e-3)
    assert np.allclose(k3[J3("r_hand")], (mm[20] + mm[18]) / 2 - pelvis, atol=1e-3)
    assert np.allclose(k3[J3("l_foot")], mm[31] - pelvis, atol=1e-3)
    assert np.allclose(k3[J3("spine")], 0.5 * neck, atol=1e-3)
    assert np.allclose(k3[J3("head_top")], head + teacher.HEAD_TOP_EXTRAPOLATION * (head - neck), atol=1e-3)
    assert teacher.HEAD_TOP_EXTRAPOLATION > 0  # head_top lies beyond the head, away from the neck


def test_teacher_drops_mirror_image_3d():
    # a body facing the camera (-z): left shoulder at +x, head up (-y), nose towards the camera
    world = np.zeros((33, 3), np.float32)
    world[11], world[12] = (0.2, -0.5, 0), (-0.2, -0.5, 0)   # left / right shoulder
    world[23], world[24] = (0.1, 0, 0), (-0.1, 0, 0)         # left / right hip
    world[0] = (0, -0.7, -0.1)                               # nose
    assert teacher.proper_chirality(world)
    assert not teacher.proper_chirality(world * (1, 1, -1))  # same 2D, depth order mirrored


def test_teacher_labels_merge_ground_truth_wins(tmp_path):
    kp = _person()
    lsp = np.zeros(19, bool)
    lsp[:14] = True
    recs = [data.ImageRecord(path="x.jpg", width=200, height=200, kp2d=kp[None].copy(), labelled_2d=lsp,
                             source="lspet", keys=[k]) for k in ("good.jpg", "bad.jpg")]
    recs[0].kp2d[0, 14:] = 0
    recs[1].kp2d[0, 14:] = 0
    # landmarks from the person itself (good) and far away (bad)
    inv = {v: k for k, v in teacher._DIRECT_2D.items()}
    lm = np.zeros((33, 3), np.float32)
    for i, n in enumerate(teacher.BLAZEPOSE_33):
        if n in inv:
            lm[i] = (*kp[J(inv[n]), :2] + 1.0, 0.95)
    world = np.random.default_rng(0).normal(0, 0.3, (33, 3)).astype(np.float32)
    if not teacher.proper_chirality(world):
        world[:, 2] *= -1
    arrays = {"keys": np.array(["good.jpg", "bad.jpg"]), "ok": np.array([True, True]),
              "lm2d": np.stack([lm, lm + (300, 0, 0)]), "world": np.stack([world, world]).astype(np.float16),
              "pck": np.array([1.0, 0.0], np.float32), "err": np.stack([
                  teacher.agreement(kp, teacher.blazepose_to_ours_2d(lm)[0], 120)[1],
                  teacher.agreement(kp, teacher.blazepose_to_ours_2d(lm + (300, 0, 0))[0], 120)[1]])}
    np.savez_compressed(tmp_path / "teacher_lspet.npz", **arrays)
    labels = teacher.TeacherLabels.load(tmp_path / "teacher_lspet.npz")
    stats = data.attach_teacher(recs, labels)
    assert stats["with_3d"] == 1
    good, bad = recs
    assert np.allclose(good.kp2d[0, :14], kp[:14])                      # GT body untouched
    assert np.allclose(good.kp2d[0, J("nose"), :2], kp[J("nose"), :2] + 1)  # face filled by teacher
    assert good.labelled_2d[J("nose")] and good.labelled_2d[J("head_top")]
    assert not bad.labelled_2d[J("nose")]
    assert np.isfinite(good.kp3d_mm).all() and good.conf_3d[0] > 0.9
    assert np.isnan(bad.kp3d_mm).all() and (bad.kp2d[0, 14:, 2] == 0).all()


# ---------------------------------------------------------------------------------- data split

@needs_lspet
def test_coco_dev_never_in_training():
    ds = data.build_training_dataset(DATA, teacher_cache=None)
    assert not any("coco_dev" in r.path or r.source == "coco_dev" for r in ds.real)
    assert {r.source for r in ds.real} == {"lspet", "coco_train_extra"}
    dev = data.read_coco(DATA / "coco_dev")
    with pytest.raises(ValueError, match="evaluation"):
        data.TrainingDataset(dev, [])


@needs_lspet
def test_negative_prob_makes_person_free_training_items(tmp_path):
    """`xnect-train stage1 --negative-prob P`: a share P of the items are backgrounds without people
    (against skeletons on objects); the trainer hands the setting to the dataset."""
    from xnect_app.train.trainer import TrainConfig, Trainer
    trainer = Trainer(TrainConfig(out_dir=str(tmp_path / "run"), backbone="selecsls42b", size=(128, 128),
                                  data_root=str(DATA), teacher_cache="", dev_set=None, workers=0,
                                  composite_prob=0.0, negative_prob=1.0, ema_decay=0))
    ds = trainer._loader().dataset
    assert ds.negative_prob == 1.0
    assert all(ds[i * 37].num_people == 0 for i in range(6))


def test_the_cli_refuses_more_negatives_and_composites_than_items(tmp_path):
    import subprocess
    import sys
    r = subprocess.run([sys.executable, "-m", "xnect_app.cli.train", "stage1", "--out", str(tmp_path / "r"),
                        "--data-root", str(tmp_path), "--composite-prob", "0.5", "--negative-prob", "0.6"],
                       capture_output=True, text=True, timeout=120)
    lines = r.stderr.strip().splitlines()
    assert r.returncode == 2 and len(lines) == 1 and "--negative-prob 0.6" in lines[0], r.stderr
