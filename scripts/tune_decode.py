"""Sweep the 2D decoding settings (peak threshold, PAF grouping) on a COCO dev set.

Stage I runs once per image; each setting then only re-decodes, so a sweep costs seconds. Use the
dev set (../shared/data/coco_dev), never the holdout. Prints body AP / AP / detections per setting.

    python scripts/tune_decode.py --weights models/xnect_selecsls60.pt
    python scripts/tune_decode.py --checkpoint runs/xnect60/last.pt
"""
from __future__ import annotations

import argparse
import dataclasses
import itertools
import sys

import cv2
import numpy as np
import torch

from xnect_app import skeleton
from xnect_app.estimator import PoseEstimator, letterbox
from xnect_app.nn.stage1 import STRIDE
from xnect_app.pose.decode import decode
from xnect_app.pose.paf import GroupingConfig
from xnect_app.train.evaluate import coco_ap, image_path, load_coco_json, person_to_coco17


def stage1_outputs(est: PoseEstimator, data: dict, img_dir) -> list[tuple[int, np.ndarray, np.ndarray, object]]:
    out = []
    with torch.inference_mode():
        for im in data["images"]:
            img = cv2.imread(str(image_path(img_dir, im["file_name"])))
            x, lb = letterbox(img, est.input_size)
            o = est.stage1(torch.from_numpy(x[None]).permute(0, 3, 1, 2).float())
            out.append((im["id"], o.heatmaps[0].numpy(), o.pafs[0].numpy(), lb))
    return out


def results_for(cache, threshold: float, grouping: GroupingConfig) -> list[dict]:
    results = []
    for image_id, hm, paf, lb in cache:
        found = decode(hm, paf, None, stride=STRIDE, peak_threshold=threshold, grouping=grouping)
        for kp, score in zip(found.kp2d, found.scores):
            kp = kp.astype(np.float64).copy()
            kp[..., :2] = lb.to_frame(kp[..., :2])
            results.append({"image_id": image_id, "category_id": 1, "keypoints": person_to_coco17(kp),
                            "score": float(score)})
    return results


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights")
    ap.add_argument("--checkpoint")
    ap.add_argument("--coco", default="../shared/data/coco_dev")
    a = ap.parse_args()
    if "holdout" in a.coco:
        sys.exit("tune_decode: never tune on the holdout")
    est = (PoseEstimator.from_checkpoint(a.checkpoint, tracking=False, torch_thread=False) if a.checkpoint
           else PoseEstimator(a.weights, tracking=False, torch_thread=False))
    data, img_dir = load_coco_json(a.coco)
    cache = stage1_outputs(est, data, img_dir)
    base = GroupingConfig()
    grid = {"threshold": (0.05, 0.1, 0.15), "min_fraction": (0.6, 0.8), "min_joints": (3, 5),
            "min_score": (0.1, 0.2), "dot_threshold": (0.05, 0.1)}
    rows = []
    for values in itertools.product(*grid.values()):
        s = dict(zip(grid, values))
        g = dataclasses.replace(base, **{k: v for k, v in s.items() if k != "threshold"})
        res = results_for(cache, s["threshold"], g)
        body = coco_ap(data, res, skeleton.COCO17_BODY) if res else {"ap": 0.0}
        rows.append((body["ap"], s, len(res)))
    rows.sort(key=lambda r: -r[0])
    default = next(r for r in rows if r[1] == {"threshold": 0.1, "min_fraction": base.min_fraction,
                                               "min_joints": base.min_joints, "min_score": base.min_score,
                                               "dot_threshold": base.dot_threshold})
    print(f"default: body AP {default[0]:.4f} ({default[2]} detections)")
    for body_ap, s, n in rows[:10]:
        print(f"body AP {body_ap:.4f}  detections {n:4d}  {s}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
