"""How often a weights file puts a skeleton on the static objects of demo_videos/vtest.avi.

vtest.avi is a static camera; four objects in it look like people to weak weights: a tripod, a
signpost, a sign with bollards and a small blue sign. Every 10th frame is run (80 frames) and a
detection whose mean joint lies within 35 px of an object counts as a hit on it. A check of
precision on a street scene, beside coco_dev's AP, for comparing training runs:

    python scripts/vtest_objects.py                        # the bundled weights
    python scripts/vtest_objects.py --weights runs/x.pt    # another weights file
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from xnect_app.bench.frames import read_frames  # noqa: E402
from xnect_app.estimator import ModelConfig, PoseEstimator, TrackConfig  # noqa: E402
from xnect_app.options import UserError  # noqa: E402

# object -> image position (x, y) in vtest.avi's 768x576 frames
OBJECTS = {"tripod": (505, 356), "signpost": (430, 207), "sign+bollards": (712, 219), "blue sign": (40, 123)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", help="weights file (default: the bundled model)")
    ap.add_argument("--video", default=str(REPO / "demo_videos" / "vtest.avi"))
    ap.add_argument("--every", type=int, default=10, help="run every this many frames")
    a = ap.parse_args()
    try:
        frames = read_frames(Path(a.video), sys.maxsize, stride=a.every)
    except UserError as e:
        sys.exit(f"vtest_objects: {e} (bash demo_videos/fetch_vtest.sh fetches vtest.avi)")
    est = PoseEstimator(ModelConfig(weights=a.weights), track=TrackConfig(tracking=False, fit_skeleton=False))
    hits: dict[str, list[float]] = {k: [] for k in OBJECTS}
    people: list[int] = []
    elsewhere: list[int] = []
    for frame in frames:
        found = est(frame).people
        people.append(len(found))
        centres = [(np.nanmean(p.kp2d[:, 0]), np.nanmean(p.kp2d[:, 1]), p.score) for p in found]
        near = np.zeros(len(centres), bool)
        for name, (x, y) in OBJECTS.items():
            close = np.array([np.hypot(cx - x, cy - y) < 35 for cx, cy, _ in centres], bool)
            near |= close
            hits[name].append(max((c[2] for c, hit in zip(centres, close) if hit), default=0.0))
        elsewhere.append(int((~near).sum()))
    print(f"{est.model_name}: {len(people)} frames, {np.mean(people):.2f} detections per frame, "
          f"{np.mean(elsewhere):.2f} away from the objects (mostly pedestrians)")
    for name, v in hits.items():
        v = np.array(v)
        on = v > 0
        print(f"  {name:14s} detected in {on.mean():4.0%} of frames, mean score then {v[on].mean() if on.any() else 0:.2f}")


if __name__ == "__main__":
    main()
