"""COCO AP / PCK and the MuPoTS 3D protocol helpers."""
from pathlib import Path

import numpy as np
import pytest

from xnect_app.train.evaluate import coco_ap, evaluate_coco, load_coco_json, mupots_errors, pck, pck3d_summary
from xnect_app.types import FrameResult

COCO_DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "coco_dev"
pytestmark = pytest.mark.skipif(not COCO_DEV.is_dir(), reason="needs ../shared/data/coco_dev")


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
    assert pck(data, _gt_as_results(data)) == pytest.approx(1.0)
    assert pck(data, []) == 0.0


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


@pytest.mark.parametrize("main_name, argv", [
    ("eval", ["coco", "/no/such/folder"]),
    ("eval", ["coco", str(COCO_DEV), "--weights", "/no/such.pt"]),
    ("eval", ["coco", str(COCO_DEV), "--input-size", "100x3"]),
    ("train", ["stage1", "--data-root", "/no/such/folder"]),
    ("train", ["export", "--stage1", "/no/such.pt"]),
])
def test_train_and_eval_reject_bad_input_in_one_line(main_name, argv, capsys):
    import importlib

    main = importlib.import_module(f"xnect_app.cli.{main_name}").main
    with pytest.raises(SystemExit) as ex:
        main(argv)
    assert ex.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and "error:" in err[-1] and "Traceback" not in "\n".join(err)
