"""Tracking benchmark: identities on real video, from one set of detections.

The estimator (the bundled weights unless --weights) detects people in every frame once,
untracked; the detections are cached (--cache) and the tracker then runs on them with the
frames for its colour cues, so tracker settings compare on exactly the same people. Reports
ids, median track length, the share of confident detections (score >= 0.4) in tracks of 20
frames or more, people without an id, the tracker's time per frame, and with --gt (boxes and
ids of a labelled stretch, e.g. tests/data/vtest_ids.json) IDF1 and ID switches over the
labelled people (predictions elsewhere are left out: that file does not hold every person).

examples:
  xnect-bench tracking demo_videos/vtest.avi --gt tests/data/vtest_ids.json
  xnect-bench tracking ../shared/data/videos/two_people_courtyard.mp4 --json
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from ..pose.idmetrics import identity_scores, track_stats
from ..pose.tracking import Tracker, TrackerConfig

_FIELDS = ("kp2d", "kp3d_rel_mm", "kp3d_cam_mm")


def detect_video(video: str, weights: str | None, cache: Path | None, precision: str = "auto") -> dict[str, Any]:
    """Untracked people of every frame: {"fps", "frames": [[{kp2d, kp3d_rel_mm, kp3d_cam_mm, score}]]}."""
    from ..weights import default_weights_path
    w = Path(weights) if weights else default_weights_path()
    stamp = f"{w.resolve()}:{w.stat().st_size}:{w.stat().st_mtime_ns}" if w.is_file() else str(weights)
    key = hashlib.sha1(f"{Path(video).resolve()}|{stamp}|{precision}".encode()).hexdigest()[:12]
    path = cache / f"detections_{Path(video).stem}_{key}.npz" if cache else None
    if path is not None and path.is_file():
        with np.load(path) as z:  # each z[name] decompresses anew: read every array once
            z = {name: z[name] for name in z.files}
        counts, fps = z["counts"], float(z["fps"])
        starts = np.concatenate([[0], np.cumsum(counts)])
        frames = [[{f: z[f][starts[i] + k] for f in _FIELDS} | {"score": float(z["score"][starts[i] + k])}
                   for k in range(counts[i])] for i in range(len(counts))]
        return {"fps": fps, "frames": frames}
    from ..estimator import ModelConfig, PoseEstimator, TrackConfig
    est = PoseEstimator(ModelConfig(weights=weights, precision=precision), track=TrackConfig(tracking=False))
    cap = cv2.VideoCapture(video)
    if not cap.isOpened():
        raise FileNotFoundError(f"cannot open video {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    frames = []
    while True:
        ok, img = cap.read()
        if not ok:
            break
        res = est(img)
        frames.append([{"kp2d": p.kp2d, "kp3d_rel_mm": p.kp3d_rel_mm, "kp3d_cam_mm": p.kp3d_cam_mm,
                        "score": float(p.score)} for p in res.people])
    cap.release()
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        flat = [p for fr in frames for p in fr]
        arrays = {f: np.stack([p[f] for p in flat]) if flat else np.zeros((0,)) for f in _FIELDS}
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, counts=np.array([len(fr) for fr in frames]), fps=fps,
                            score=np.array([p["score"] for p in flat]), **arrays)
        tmp.replace(path)
    return {"fps": fps, "frames": frames}


def person_box(kp2d: np.ndarray) -> np.ndarray:
    seen = kp2d[:, 2] > 0
    xy = kp2d[seen, :2] if seen.any() else np.zeros((1, 2))
    return np.array([*xy.min(0), *xy.max(0)])


def run_tracker(video: str, detections: dict[str, Any], config: TrackerConfig, use_frames: bool = True
                ) -> tuple[list[list[tuple[int, float, np.ndarray]]], float]:
    """Each frame's (track id, score, box), and the tracker's median milliseconds per frame."""
    tracker = Tracker(config=config, freq=detections["fps"])
    cap = cv2.VideoCapture(video) if use_frames else None
    out, times = [], []
    for i, dets in enumerate(detections["frames"]):
        img = None
        if cap is not None:
            ok, img = cap.read()
            img = img if ok else None
        t0 = time.thread_time()
        people = tracker.update(dets, timestamp=i / detections["fps"], image=img)
        times.append(time.thread_time() - t0)
        out.append([(p.track_id, p.score, person_box(p.kp2d)) for p in people])
    return out, 1000.0 * float(np.median(times)) if times else 0.0


def load_gt(path: str | Path) -> tuple[int, list[list[tuple[int, np.ndarray]]]]:
    doc = json.loads(Path(path).read_text())
    frames = [[(int(p["id"]), np.array(p["box"], float)) for p in fr["people"]] for fr in doc["annotations"]]
    return int(doc["start"]), frames


def evaluate(video: str, detections: dict[str, Any], config: TrackerConfig, gt: str | None = None,
             use_frames: bool = True) -> dict[str, Any]:
    tracked, ms = run_tracker(video, detections, config, use_frames)
    res: dict[str, Any] = {"video": Path(video).name, **track_stats([[(t, s) for t, s, _ in fr] for fr in tracked]),
                           "tracker_ms_per_frame": ms}
    if gt:
        start, gt_frames = load_gt(gt)
        pred = [[(t, b) for t, _, b in fr] for fr in tracked[start:start + len(gt_frames)]]
        res["identity"] = {"gt": Path(gt).name, "frames": f"{start}-{start + len(gt_frames) - 1}",
                           **identity_scores(gt_frames, pred, partial=True).to_dict()}
    return res


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = parser or argparse.ArgumentParser(prog="xnect-bench tracking", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("video")
    ap.add_argument("--weights", help="weights file (default: the bundled model)")
    ap.add_argument("--gt", help="identity ground truth of a stretch of the video (JSON)")
    ap.add_argument("--cache", default="runs/bench_tracking", help="folder for cached detections ('' = none)")
    ap.add_argument("--json", action="store_true", help="print the numbers as one JSON document")
    return ap


def _line(name: str, res: dict[str, Any]) -> str:
    text = (f"{name:>16}: {res['track_ids']} track ids, median track {res['median_track_length']:.0f} frames, "
            f"{res['confident_in_long_tracks']:.0%} of confident people in tracks of 20+ frames, "
            f"{res['without_id']:.0%} without an id, {res['tracker_ms_per_frame']:.2f} ms a frame")
    if "identity" in res:
        i = res["identity"]
        text += (f"; frames {i['frames']}: IDF1 {i['idf1']:.3f}, {i['id_switches']} ID switches, "
                 f"{i['predicted_ids']} ids for {i['gt_ids']} people")
    return text


def run(a: argparse.Namespace) -> int:
    prog = "xnect-bench tracking"
    if not Path(a.video).is_file():
        print(f"{prog}: error: no video {a.video!r}", file=sys.stderr)
        return 1
    if a.gt and not Path(a.gt).is_file():
        print(f"{prog}: error: no ground truth {a.gt!r}", file=sys.stderr)
        return 1
    dets = detect_video(a.video, a.weights, Path(a.cache) if a.cache else None)
    # side by side on the same detections: the default tracker, and without its colour cues
    results = {"default": evaluate(a.video, dets, TrackerConfig(), a.gt),
               "without colour": evaluate(a.video, dets, TrackerConfig(), a.gt, use_frames=False)}
    if a.json:
        print(json.dumps(results, indent=2, default=float))
        return 0
    first = results["default"]
    print(f"{first['video']}: {first['frames']} frames, {first['people_per_frame']:.1f} people per frame")
    for name, res in results.items():
        print(_line(name, res))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
