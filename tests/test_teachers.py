"""The MoveNet teacher on torch: parity with TensorFlow.js, accuracy, labels merged into training
records, and the training stream's augmentation draws."""
from __future__ import annotations

import json
import os
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch

from xnect_app import skeleton
from xnect_app.train import data, teacher2d
from xnect_app.train.movenet_labels import MoveNetLabels
from xnect_app.train.trainer import TrainConfig, collate_targets, training_loader

HERE = Path(__file__).resolve().parent
from shared_data import DATA, needs_data  # noqa: E402

FIXTURE = HERE / "data" / "movenet_tfjs_reference.npz"
J = skeleton.JOINTS_2D.index


def _models():
    from xnect_app.teachers.movenet import models_dir
    try:
        return models_dir()
    except FileNotFoundError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"teacher models not fetched ({e})")


@pytest.fixture(scope="module")
def models():
    return _models()


def _png(arr: np.ndarray) -> np.ndarray:
    return cv2.imdecode(arr, cv2.IMREAD_UNCHANGED)


def test_runner_matches_tfjs(models):
    from xnect_app.teachers.movenet import (MULTIPOSE_CENTER, MULTIPOSE_KEYPOINTS, THUNDER_KEYPOINTS,
                                            MoveNetMultiPose, MoveNetThunder)
    ref = np.load(FIXTURE)
    kept = [0, 5, 9, 15]
    mp = MoveNetMultiPose(models)
    x = torch.from_numpy(_png(ref["multipose_input_png"]).astype(np.int64))[None]
    out, centre, heat = mp.graph.run({"input": x}, ["Identity", MULTIPOSE_CENTER, MULTIPOSE_KEYPOINTS])
    diff = np.abs(out.numpy() - ref["multipose_output"]).max()
    assert diff < 1e-4, f"MultiPose output differs from tfjs by {diff}"
    assert np.abs(centre.numpy() - ref["multipose_centre"]).max() < 2e-3
    assert np.abs(heat.numpy()[..., kept] - ref["multipose_keypoints"]).max() < 2e-3
    assert (ref["multipose_output"][0, :, 55] > 0.2).sum() >= 2  # the fixture image shows people
    th = MoveNetThunder(models)
    x = torch.from_numpy(_png(ref["thunder_input_png"]).astype(np.int64))[None]
    out, heat = th.graph.run({"input:0": x}, ["Identity", THUNDER_KEYPOINTS])
    diff = np.abs(out.numpy() - ref["thunder_output"]).max()
    assert diff < 1e-4, f"Thunder output differs from tfjs by {diff}"
    assert np.abs(heat.numpy()[..., kept] - ref["thunder_keypoints"]).max() < 2e-3


def test_unsupported_graph_is_refused(tmp_path):
    from xnect_app.teachers.tfjs_graph import GraphError, TfjsGraph
    model = {"format": "graph-model", "modelTopology": {"node": [
        {"name": "x", "op": "Placeholder"}, {"name": "y", "op": "Einsum", "input": ["x"]}]},
        "weightsManifest": []}
    (tmp_path / "m.json").write_text(json.dumps(model))
    with pytest.raises(GraphError, match="unsupported op 'Einsum'"):
        TfjsGraph(tmp_path / "m.json")


@pytest.mark.slow
@needs_data("coco_dev")
def test_multipose_coco_dev_ap_matches_the_tfjs_figure(models):
    from xnect_app.teachers.movenet import MoveNetPeer, MoveNetTeacher
    from xnect_app.train.evaluate import coco_ap, load_coco_json, predict_coco
    torch.set_num_threads(2)
    gt, img_dir = load_coco_json(DATA / "coco_dev")
    ap = coco_ap(gt, predict_coco(MoveNetPeer(MoveNetTeacher(models, size=384, refine=False)), gt, img_dir))["ap"]
    assert abs(ap - 0.402) <= 0.01, ap  # tfjs 4.22.0 (wasm) on the same images: 0.402


# --------------------------------------------------------------------------- labels into records

def _standing(cx: float, top: float = 20.0, h: float = 120.0, conf: float = 0.8) -> np.ndarray:
    """A standing person as teacher COCO-17 keypoints (17, 3)."""
    u = h / 8
    xy = {"nose": (0, 0.7), "left_eye": (0.2, 0.5), "right_eye": (-0.2, 0.5), "left_ear": (0.4, 0.6),
          "right_ear": (-0.4, 0.6), "left_shoulder": (1, 1.7), "right_shoulder": (-1, 1.7),
          "left_elbow": (1.4, 3), "right_elbow": (-1.4, 3), "left_wrist": (1.6, 4.2), "right_wrist": (-1.6, 4.2),
          "left_hip": (0.6, 4.2), "right_hip": (-0.6, 4.2), "left_knee": (0.7, 6), "right_knee": (-0.7, 6),
          "left_ankle": (0.7, 8), "right_ankle": (-0.7, 8)}
    return np.array([(cx + xy[n][0] * u, top + xy[n][1] * u, conf) for n in skeleton.COCO17], np.float32)


def _labels(key: str, people: list[tuple[np.ndarray, float]], size=(400, 200)) -> MoveNetLabels:
    from xnect_app.teachers.movenet import TeacherPerson
    tp = []
    for kp, score in people:
        box = np.array([kp[:, 0].min(), kp[:, 1].min(), kp[:, 0].max(), kp[:, 1].max()], np.float32)
        tp.append(TeacherPerson(kp, box, score))
    return MoveNetLabels.empty({}).extended([(key, size, tp)])


def _lspet_record(gt17: np.ndarray) -> data.ImageRecord:
    kp = np.zeros((1, 19, 3), np.float32)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        kp[0, ours] = (gt17[c, 0], gt17[c, 1], 2.0)
    kp[0, 14:] = 0  # LSPET labels no face points
    kp[0, J("neck")] = (*kp[0, [J("r_shoulder"), J("l_shoulder")], :2].mean(0), 2.0)
    kp[0, J("head_top")] = (gt17[0, 0], gt17[0, 1] - 15, 2.0)
    labelled = np.zeros(19, bool)
    labelled[:14] = True
    rec = data.ImageRecord(path="/x/im00001.jpg", width=400, height=200, kp2d=kp, labelled_2d=labelled,
                           source="lspet", keys=["im00001.jpg"])
    x, y, w, h = rec.boxes[0]
    rec.ignore_outside = (x - 10, y - 10, x + w + 10, y + h + 10)
    return rec


def test_movenet_people_merge_with_lspet_ground_truth():
    gt = _standing(100)
    teacher_gt = gt.copy()
    teacher_gt[:, :2] += 3.0                   # the teacher's version of the labelled person
    teacher_gt[skeleton.COCO17.index("left_wrist"), 2] = 0.1   # an uncertain joint
    bystander = _standing(250)
    doubtful = _standing(340, conf=0.4)
    rec = _lspet_record(gt)
    labels = _labels("im00001.jpg", [(teacher_gt, 0.5), (bystander, 0.4), (doubtful, 0.04)])
    stats = teacher2d.attach_movenet([rec], labels, add_people=True)
    assert stats == {"images": 1, "matched": 1, "added": 1, "ignored": 1, "filled_joints": 5, "crowded": 0}
    # ground truth wins where it labels; the face comes from the teacher
    assert np.allclose(rec.kp2d[0, :14, :2], _lspet_record(gt).kp2d[0, :14, :2])
    assert (rec.kp2d[0, 14:, 2] == 2).all() and np.allclose(rec.kp2d[0, J("nose"), :2], teacher_gt[0, :2])
    # the bystander is a labelled person: confident joints taught, its head top an uncertain guess
    assert len(rec.keys) == 2 and rec.keys[1] == "im00001.jpg#movenet1"
    assert (rec.weight_2d[1, :14][np.arange(14) != J("head_top")] == 1).all()
    assert rec.kp2d[1, J("head_top"), 2] == 1 and rec.weight_2d[1, J("head_top")] < 0.5
    # the doubtful one is ignored, and nothing outside the labelled person is anymore
    assert rec.ignore_outside is None and len(rec.ignore_polys) == 1
    mask = data.ignore_mask_of(rec, (200, 400))
    assert mask[60, 340] == 1 and mask[60, 250] == 0 and mask[60, 100] == 0
    assert rec.labelled_2d.all()  # every person now has every joint type (face points included)


def test_crowds_beyond_multipose_six_people_keep_lspet_ignore_region():
    gt = _standing(40, h=60)
    rec = _lspet_record(gt)
    outside = rec.ignore_outside
    people = [(gt, 0.5)] + [(_standing(90 + 50 * k, h=60), 0.4) for k in range(5)]
    stats = teacher2d.attach_movenet([rec], _labels("im00001.jpg", people), add_people=True)
    assert stats["crowded"] == 1 and stats["added"] == 0 and stats["matched"] == 1
    assert rec.ignore_outside == outside and len(rec.keys) == 1


def test_coco_people_are_never_added_only_ignored():
    gt = _standing(100)
    kp = np.zeros((1, 19, 3), np.float32)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        kp[0, ours] = (gt[c, 0], gt[c, 1], 2.0)
    kp[0, J("l_ankle")] = 0  # unlabelled in the ground truth: filled only when the teacher is sure
    labelled = np.ones(19, bool)
    labelled[J("head_top")] = False
    rec = data.ImageRecord(path="/x/a.jpg", width=400, height=200, kp2d=kp, labelled_2d=labelled,
                           source="coco_train_extra", keys=["a.jpg#1"])
    t = gt.copy()
    t[skeleton.COCO17.index("left_ankle"), 2] = 0.4  # below FILL_JOINT: uncertain
    stats = teacher2d.attach_movenet([rec], _labels("a.jpg", [(t, 0.5), (_standing(250), 0.5)]), add_people=False)
    assert stats["added"] == 0 and stats["ignored"] == 1 and len(rec.keys) == 1
    assert rec.kp2d[0, J("l_ankle"), 2] == 1 and rec.weight_2d[0, J("l_ankle")] < 0.5


def test_uncertain_joints_are_masked_not_taught():
    kp = np.zeros((1, 19, 3), np.float32)
    gt = _standing(64, top=10, h=100)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        kp[0, ours] = (gt[c, 0], gt[c, 1], 2.0)
    weight = (kp[..., 2] > 0).astype(np.float32)
    weight[0, J("l_wrist")] = teacher2d.UNCERTAIN_WEIGHT
    s = data.Sample(image=np.zeros((128, 128, 3), np.uint8), kp2d=kp, kp3d_mm=np.full((1, 21, 3), np.nan, np.float32),
                    labelled_2d=np.ones(19, bool), ignore_mask=np.zeros((128, 128), np.uint8), source="t",
                    weight_2d=weight)
    _, t = collate_targets([s])
    lw = J("l_wrist")
    cell = (int(round((kp[0, lw, 1] + 0.5) / 8 - 0.5)), int(round((kp[0, lw, 0] + 0.5) / 8 - 0.5)))
    assert t["heatmaps"][0, lw].max() == 0                  # not drawn
    assert t["hm_mask"][0, lw][cell] == 0                  # not taught as background either
    assert t["hm_mask"][0, lw].mean() > 0.9                 # the rest of the channel still is
    assert t["hm_mask"][0, J("r_wrist")].min() == 1 and t["heatmaps"][0, J("r_wrist")].max() > 0.9
    forearm = 2 * skeleton.LIMBS_2D.index((6, 7))
    assert t["paf_mask"][0, forearm][cell] == 0 and t["pafs"][0, forearm].any() == False  # noqa: E712


# --------------------------------------------------------------------------- augmentation stream

def _tiny_dataset(tmp_path: Path) -> data.TrainingDataset:
    img = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    recs = []
    for i in range(2):
        p = tmp_path / f"im{i}.png"
        cv2.imwrite(str(p), img)
        kp = np.zeros((1, 19, 3), np.float32)
        gt = _standing(80, top=10, h=90)
        for c, ours in enumerate(skeleton.COCO17_FROM_2D):
            kp[0, ours] = (gt[c, 0], gt[c, 1], 2.0)
        recs.append(data.ImageRecord(path=str(p), width=160, height=120, kp2d=kp, labelled_2d=np.ones(19, bool),
                                     source="lspet", keys=[f"im{i}"]))
    return data.TrainingDataset(recs, [], size=(64, 64), composite_prob=0.0, negative_prob=0.0, as_dict=True)


@pytest.mark.parametrize("workers", [0, 2])
def test_every_draw_of_an_image_is_augmented_afresh(tmp_path, workers):
    """Two images, 2 epochs of 8 draws: with a fixed per-index stream (persistent workers, no
    epoch) the same image came back as the same crop; every draw must differ."""
    ds = _tiny_dataset(tmp_path)
    cfg = TrainConfig(batch_size=4, epoch_steps=2, workers=workers)
    loader = training_loader(ds, cfg, seed=0)
    crops = [img[i].numpy().tobytes() for _ in range(2) for img, _ in loader for i in range(len(img))]
    assert len(crops) == 16
    assert len(set(crops)) == 16, f"{16 - len(set(crops))} repeated crops"
    again = [img[i].numpy().tobytes() for img, _ in training_loader(ds, cfg, seed=0) for i in range(len(img))]
    assert again == crops[:8]  # the same seed replays the same run


# --------------------------------------------------------------------------- the user's own footage

@pytest.mark.slow
@needs_data("videos/two_people_courtyard.mp4")
def test_own_footage_is_labelled_then_fine_tuned_from_the_bundled_weights(models, tmp_path, capsys):
    import shutil

    from xnect_app.cli.train import main as train_main
    from xnect_app.train.trainer import Trainer
    footage = tmp_path / "gym"
    footage.mkdir()
    shutil.copy(DATA / "videos" / "two_people_courtyard.mp4", footage / "cam1.mp4")
    cache = tmp_path / "cache"
    args = ["label", str(footage), "--out", str(cache), "--every", "1.0", "--no-progress"]
    train_main(args)
    labels = MoveNetLabels.load(cache / "movenet_gym.npz")
    assert len(labels) == 4  # 40 frames at 12 fps, one a second
    assert all(len(labels.people(k)[0][labels.people(k)[2] >= teacher2d.LABEL_PERSON]) == 2 for k in labels.keys)
    assert (cache / "frames" / "gym" / "cam1.mp4" / "000012.jpg").is_file()
    capsys.readouterr()
    train_main(args)  # resumable: nothing left to label
    assert "gym: 4 images" in capsys.readouterr().out
    weights = HERE.parent / "models" / "xnect_selecsls60.pt"
    start = int(torch.load(weights, map_location="cpu", weights_only=True)["meta"]["stage1_step"])
    cfg = TrainConfig(out_dir=str(tmp_path / "run"), size=(256, 256), batch_size=2, epoch_steps=2,
                      max_steps=start + 2, data_root=str(DATA), dev_set=None, teacher_cache=str(cache),
                      workers=0, init_weights=str(weights), own_data=(str(footage),), ema_decay=0)
    trainer = Trainer(cfg)
    ds = trainer._loader().dataset
    own = [r for r in ds.real if r.source == "own:gym"]
    assert len(own) == 4 * cfg.own_repeat and all(len(r.keys) == 2 for r in own)
    trainer.run()
    ck = torch.load(tmp_path / "run" / "last.pt", map_location="cpu", weights_only=False)
    assert ck["step"] == start + 2
