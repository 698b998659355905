"""COCO AP / PCK and the MuPoTS 3D protocol helpers."""
import json
from pathlib import Path

import numpy as np
import pytest

from xnect_app.train.evaluate import (ImageMatches, bootstrap_ap, coco_ap, evaluate_coco, load_coco_json,
                                     mupots_errors, pck, pck3d_summary, resample_images)
from xnect_app.types import FrameResult

from shared_data import DATA, needs_data

COCO_DEV = DATA / "coco_dev"
pytestmark = needs_data("coco_dev")


def _gt_as_results(data, shift=0.0):
    res = []
    for a in data["annotations"]:
        if a.get("num_keypoints", 0) == 0:
            continue
        k = np.array(a["keypoints"], float).reshape(17, 3)
        k[:, :2] += shift
        k[:, 2] = (k[:, 2] > 0).astype(float)
        res.append({"image_id": a["image_id"], "category_id": 1, "keypoints": k.ravel().tolist(), "score": 1.0})
    return res


def test_ground_truth_as_predictions_scores_perfectly_and_a_shift_scores_lower():
    data, _ = load_coco_json(COCO_DEV)
    perfect = coco_ap(data, _gt_as_results(data))
    assert perfect["ap"] > 0.99
    body = coco_ap(data, _gt_as_results(data), joints=tuple(range(5, 17)))
    assert body["ap"] > 0.99
    shifted = coco_ap(data, _gt_as_results(data, shift=6.0))
    assert shifted["ap"] < 0.9
    # OKS scales with the person's area: the same 6 px costs medium people more than large ones
    assert perfect["ap_medium"] > 0.99 and perfect["ap_large"] > 0.99
    assert shifted["ap_medium"] < shifted["ap_large"] - 0.1
    assert pck(data, _gt_as_results(data)) == pytest.approx(1.0)
    assert pck(data, []) == 0.0


def test_resampled_images_keep_their_people_and_detections():
    data, _ = load_coco_json(COCO_DEV)
    res = _gt_as_results(data, shift=3.0)
    for i, r in enumerate(res):  # distinct scores: COCOeval breaks ties by the results' order
        r["score"] = 1.0 - 0.001 * i
    ids = [im["id"] for im in data["images"]]
    same_gt, same_res = resample_images(data, res, ids)
    assert coco_ap(same_gt, same_res)["ap"] == pytest.approx(coco_ap(data, res)["ap"])
    twice_gt, twice_res = resample_images(data, res, [ids[0], ids[0], ids[1]])
    n0 = sum(a["image_id"] == ids[0] for a in data["annotations"])
    n1 = sum(a["image_id"] == ids[1] for a in data["annotations"])
    assert len(twice_gt["images"]) == 3 and len(twice_gt["annotations"]) == 2 * n0 + n1
    assert len({a["id"] for a in twice_gt["annotations"]}) == len(twice_gt["annotations"])
    assert {r["image_id"] for r in twice_res} <= {1, 2, 3}


def test_a_draws_ap_from_kept_matches_equals_cocoeval_on_the_resampled_set():
    data, _ = load_coco_json(COCO_DEV)
    rng = np.random.default_rng(1)
    data = {**data, "images": data["images"] + [{"id": 999_999, "file_name": "nobody.jpg", "width": 640,
                                                  "height": 480}]}
    res = []
    for r in _gt_as_results(data):
        k = np.array(r["keypoints"]).reshape(17, 3)
        k[:, :2] += rng.normal(0, 8, (17, 2))
        res.append({**r, "keypoints": k.ravel().tolist(), "score": float(rng.choice([0.5, 1.0]))})  # ties
        if rng.uniform() < 0.3:  # a second, misplaced detection of the same person
            res.append({**res[-1], "keypoints": (k + [40, 40, 0]).ravel().tolist()})
    res.append({**res[0], "image_id": 999_999})  # a detection where nobody is
    ids = [im["id"] for im in data["images"]]
    for joints in (None, tuple(range(5, 17))):
        kept = ImageMatches(data, res, joints)
        assert kept.ap() == coco_ap(data, res, joints)["ap"]
        for draw in ([ids[i] for i in rng.integers(0, len(ids), len(ids))] for _ in range(8)):
            assert kept.ap(draw) == pytest.approx(coco_ap(*resample_images(data, res, draw), joints)["ap"], abs=1e-12)
        assert kept.ap([999_999, 999_999]) == 0.0  # no people drawn
    assert ImageMatches(data, [], None).ap(ids[:5]) == 0.0


def test_bootstrap_interval_and_paired_difference():
    data, _ = load_coco_json(COCO_DEV)
    exact, shifted = _gt_as_results(data), _gt_as_results(data, shift=6.0)
    self_vs_self = bootstrap_ap(data, shifted, 30, baseline=shifted)
    assert self_vs_self["diff"] == self_vs_self["diff_low"] == self_vs_self["diff_high"] == 0.0
    assert self_vs_self["higher_share"] == 0.0
    assert self_vs_self["ap_low"] < coco_ap(data, shifted, tuple(range(5, 17)))["ap"] < self_vs_self["ap_high"]
    better = bootstrap_ap(data, exact, 30, baseline=shifted)
    assert better["diff_low"] > 0 and better["higher_share"] == 1.0
    assert better["ap_low"] > 0.95  # near perfect on every draw (people labelled on the face alone)


def test_evaluate_coco_runs_an_estimator_over_every_image():
    data, root = load_coco_json(COCO_DEV)
    seen = []

    def nobody(img):
        seen.append(img.shape)
        return FrameResult(0, 0.0, (img.shape[1], img.shape[0]), people=[])

    res = evaluate_coco(nobody, COCO_DEV)
    assert len(seen) == len(data["images"]) == res["images"]
    assert res["ap"] == 0.0 and res["detections"] == 0


def test_mupots_errors_rescale_bones_to_the_ground_truth():
    rng = np.random.default_rng(0)
    gt = rng.normal(0, 300, (17, 3))
    pred = (gt - gt[14]) * 1.3  # right directions, wrong scale
    assert np.allclose(mupots_errors(pred, gt), 0.0, atol=1e-6)
    s = pck3d_summary(np.array([10.0, 140.0, 200.0, np.nan]))
    assert s["pck3d_150"] == 50.0 and s["mpjpe"] == pytest.approx(350 / 3)


TEACHER_DEV = Path(__file__).resolve().parents[1] / "data_cache" / "eval_teacher_coco_dev.npz"


def _people_from_truth(data, teacher, rotate_deg=0.0, scale=1.0):
    """An 'estimator' that returns every annotated person with the ground-truth 2D and the
    teacher's 3D (optionally rotated about the vertical axis and scaled)."""
    from xnect_app.train.data import coco_to_ours
    from xnect_app.types import Person
    a = np.radians(rotate_deg)
    rot = np.array([[np.cos(a), 0, np.sin(a)], [0, 1, 0], [-np.sin(a), 0, np.cos(a)]])
    names = {im["id"]: Path(im["file_name"]).name for im in data["images"]}
    by_file = {}
    for ann in data["annotations"]:
        if ann.get("num_keypoints", 0) == 0 or ann.get("iscrowd", 0):
            continue
        lab = teacher.get(f"{names[ann['image_id']]}#{ann['id']}")
        kp3d = lab.kp3d_mm if lab is not None and np.isfinite(lab.kp3d_mm).all() else np.zeros((21, 3))
        kp2d = coco_to_ours(ann["keypoints"])
        kp2d[:, 2] = (kp2d[:, 2] > 0).astype(np.float32)
        by_file.setdefault(names[ann["image_id"]], []).append(
            Person(track_id=-1, score=1.0, kp2d=kp2d, kp3d_rel_mm=scale * kp3d @ rot.T, kp3d_cam_mm=kp3d))
    return by_file


@pytest.mark.skipif(not TEACHER_DEV.is_file(), reason="needs data_cache/eval_teacher_coco_dev.npz")
def test_teacher_3d_agreement_matches_people_and_separates_pose_from_rotation_and_scale():
    from xnect_app.train.evaluate import procrustes_aligned
    from xnect_app.train.teacher import TeacherLabels
    data, _ = load_coco_json(COCO_DEV)
    teacher = TeacherLabels.load(TEACHER_DEV)

    def estimator_from(by_file):
        order = iter(im["file_name"] for im in data["images"])
        return lambda img: FrameResult(0, 0.0, (img.shape[1], img.shape[0]),
                                       people=by_file.get(Path(next(order)).name, []))

    exact = evaluate_coco(estimator_from(_people_from_truth(data, teacher)), COCO_DEV, TEACHER_DEV)["teacher3d"]
    assert exact["persons"] == exact["labelled_persons"] > 20       # every labelled person found
    assert exact["mpjpe_mm"] < 1e-3 and exact["pa_mpjpe_mm"] < 1e-3
    assert exact["mean_pose_mpjpe_mm"] > 50                          # a constant pose is far off
    turned = evaluate_coco(estimator_from(_people_from_truth(data, teacher, 40, 1.2)), COCO_DEV,
                           TEACHER_DEV)["teacher3d"]
    assert turned["mpjpe_mm"] > 100 and turned["pa_mpjpe_mm"] < 1e-3  # Procrustes undoes it
    x = np.random.default_rng(0).normal(size=(14, 3))
    q, _ = np.linalg.qr(np.random.default_rng(1).normal(size=(3, 3)))
    q *= np.sign(np.linalg.det(q))                                    # a proper rotation
    assert np.allclose(procrustes_aligned(2 * x @ q + 5, x), x, atol=1e-9)


@pytest.mark.parametrize("main_name, argv, code", [  # 1: a missing input or weights file, 2: a usage error
    ("eval", ["coco", str(COCO_DEV), "--teacher3d", "/no/such.npz"], 1),
    ("eval", ["coco", "/no/such/folder"], 1),
    ("eval", ["coco", str(COCO_DEV), "--weights", "/no/such.pt"], 1),
    ("eval", ["coco", str(COCO_DEV), "--input-size", "100x3"], 2),
    ("eval", ["coco", str(COCO_DEV), "--against", "/no/such.pt"], 1),
    ("eval", ["coco", str(COCO_DEV), "--against", "models/xnect_selecsls60.pt", "--bootstrap", "0"], 2),
    ("eval", ["coco", str(COCO_DEV), "--bootstrap", "-5"], 2),
    ("eval", ["coco", str(COCO_DEV), "--against-plain"], 2),  # nothing to compare: no --flip or --scales
    ("train", ["stage1", "--data-root", "/no/such/folder"], 1),
    ("train", ["export", "--stage1", "/no/such.pt"], 1),
])
def test_train_and_eval_reject_bad_input_in_one_line(main_name, argv, code, capsys):
    import importlib

    main = importlib.import_module(f"xnect_app.cli.{main_name}").main
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == code
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error:" in err[-1] and "Traceback" not in "\n".join(err)


def test_against_plain_compares_the_flip_test_with_the_same_weights_without_it(tmp_path, capsys):
    from xnect_app.cli.eval import main

    data, _ = load_coco_json(COCO_DEV)
    keep = {im["id"] for im in data["images"][:4]}
    subset = {**data, "images": [im for im in data["images"] if im["id"] in keep],
              "annotations": [a for a in data["annotations"] if a["image_id"] in keep]}
    (tmp_path / "person_keypoints.json").write_text(json.dumps(subset))
    (tmp_path / "images").symlink_to(COCO_DEV / "images")

    def run(*options):
        main(["coco", str(tmp_path), "--json", *options])
        return json.loads(capsys.readouterr().out)

    plain, flip = run(), run("--flip")
    assert flip["ap_body"] != plain["ap_body"]
    compared = run("--flip", "--against-plain", "--bootstrap", "20")
    assert compared["flip_test"] and compared["ap_body"] == flip["ap_body"]
    assert compared["against"] == {"model": flip["model"], "ap_body": plain["ap_body"],
                                   "test_time_augmentation": False}
    assert compared["bootstrap"]["diff"] == pytest.approx(flip["ap_body"] - plain["ap_body"])
    assert compared["bootstrap"]["resamples"] == 20
