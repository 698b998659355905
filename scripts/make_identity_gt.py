"""Draft an identity ground truth for a stretch of a video: person boxes and ids per frame.

The MoveNet teacher (at a large input, so small people are found) gives the boxes; boxes are
linked frame to frame by the distance of their centres (within half a box height per frame
since last seen, at most `--gap` missed frames) and their torso colours (Hungarian). The draft
is then checked by hand on the contact sheets `--sheets DIR` writes (every box with its id), and
fixed in the JSON (merge ids, drop false boxes); `tests/data/vtest_ids.json` was made so:

    python scripts/make_identity_gt.py demo_videos/vtest.avi --start 100 --frames 100 \\
        --out tests/data/vtest_ids.json --sheets /tmp/gt   (then the hand fixes, see its "fixes")
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from xnect_app.pose.tracking import appearance_similarity, torso_histogram
from xnect_app.teachers.movenet import MoveNetTeacher
from xnect_app.train.teacher2d import teacher_to_ours


def detect(teacher, img, tiles, scale):
    """Teacher people of the whole frame, or of each tile (x0, y0, x1, y1) enlarged `scale`
    times: MultiPose finds at most six people an image, and small people better enlarged."""
    if not tiles:
        return teacher(img)
    out = []
    for x0, y0, x1, y1 in tiles:
        crop = cv2.resize(img[y0:y1, x0:x1], None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
        for p in teacher(crop):
            p.keypoints[:, :2] = p.keypoints[:, :2] / scale + (x0, y0)
            out.append(p)
    return out


def nms(boxes: list[np.ndarray], overlap: float = 0.6) -> list[int]:
    """Indices of the boxes kept when people are found twice (tiles overlap): of two boxes
    sharing `overlap` of the smaller one's area, the higher-scoring one (box[4])."""
    order = sorted(range(len(boxes)), key=lambda k: -boxes[k][4])
    kept: list[int] = []
    for k in order:
        b = boxes[k]
        area = (b[2] - b[0]) * (b[3] - b[1])
        if all(max(min(b[2], boxes[j][2]) - max(b[0], boxes[j][0]), 0) *
               max(min(b[3], boxes[j][3]) - max(b[1], boxes[j][1]), 0) < overlap * min(
                   area, (boxes[j][2] - boxes[j][0]) * (boxes[j][3] - boxes[j][1])) for j in kept):
            kept.append(k)
    return kept


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video")
    ap.add_argument("--start", type=int, default=100)
    ap.add_argument("--frames", type=int, default=100)
    ap.add_argument("--size", type=int, default=768, help="MultiPose input size (default 768)")
    ap.add_argument("--min-score", type=float, default=0.15)
    ap.add_argument("--gap", type=int, default=10)
    ap.add_argument("--tiles", default="0,0,416,336;352,0,768,336",
                    help="x0,y0,x1,y1;... regions run one at a time ('' = the whole frame; default: "
                         "vtest.avi's walkways in two overlapping halves)")
    ap.add_argument("--tile-scale", type=float, default=2.0, help="tiles are enlarged this much (default 2)")
    ap.add_argument("--min-height", type=float, default=15.0, help="smallest box height, px")
    ap.add_argument("--out", required=True)
    ap.add_argument("--sheets", help="folder for contact sheets (frames with boxes and ids)")
    ap.add_argument("--sheet-rows", type=int, nargs=2, default=(0, 330), metavar=("Y0", "Y1"),
                    help="image rows shown on the sheets (default 0 330: where vtest.avi's people walk)")
    a = ap.parse_args()
    a.tiles = [tuple(int(v) for v in t.split(",")) for t in a.tiles.split(";") if t]
    teacher = MoveNetTeacher(size=a.size, min_score=0.05)
    cap = cv2.VideoCapture(a.video)
    cap.set(cv2.CAP_PROP_POS_FRAMES, a.start)
    frames, tracks, next_id = [], {}, 1   # tracks: id -> (last box, last frame)
    images = []
    for f in range(a.start, a.start + a.frames):
        ok, img = cap.read()
        if not ok:
            break
        boxes, hists = [], []
        for p in detect(teacher, img, a.tiles, a.tile_scale):
            if p.score < a.min_score:
                continue
            seen = p.keypoints[:, 2] > 0.2
            if seen.sum() < 4:
                continue
            xy = p.keypoints[seen, :2]
            if np.ptp(xy[:, 1]) < a.min_height:
                continue
            boxes.append(np.array([*xy.min(0), *xy.max(0), p.score]))
            hists.append(torso_histogram(img, teacher_to_ours(p.keypoints)[0]))
        keep = nms(boxes)
        boxes, hists = [boxes[k][:4] for k in keep], [hists[k] for k in keep]
        ids = [0] * len(boxes)
        live = [(tid, b, f - last, h) for tid, (b, last, h) in tracks.items() if f - last <= a.gap]
        if live and boxes:
            def dist(tb, b, gap):
                c0, c1 = 0.5 * (tb[:2] + tb[2:]), 0.5 * (b[:2] + b[2:])
                h = max(tb[3] - tb[1], b[3] - b[1], 1.0)
                return np.linalg.norm(c0 - c1) / (0.5 * h * gap)
            near = np.array([[dist(tb, b, gap) for b in boxes] for _, tb, gap, _ in live])
            colour = np.array([[1 - appearance_similarity(th, h) for h in hists] for _, _, _, th in live])
            cost = near + 2.0 * colour
            for r, c in zip(*linear_sum_assignment(cost)):
                if near[r, c] <= 1.0:
                    ids[c] = live[r][0]
        for k, b in enumerate(boxes):
            if not ids[k]:
                ids[k] = next_id
                next_id += 1
            old = tracks.get(ids[k])
            h = hists[k] if old is None or old[2] is None or hists[k] is None else 0.8 * old[2] + 0.2 * hists[k]
            tracks[ids[k]] = (b, f, h)
        frames.append({"frame": f, "people": [{"id": i, "box": [round(float(v), 1) for v in b]}
                                              for i, b in zip(ids, boxes)]})
        images.append(img)
    doc = {"video": Path(a.video).name, "start": a.start, "frames": len(frames),
           "box": "x0, y0, x1, y1 of the visible joints, in pixels", "annotations": frames}
    Path(a.out).write_text(json.dumps(doc, indent=1))
    if a.sheets:
        Path(a.sheets).mkdir(parents=True, exist_ok=True)
        for k in range(0, len(images), 10):
            tiles = []
            for img, fr in zip(images[k:k + 10], frames[k:k + 10]):
                im = img.copy()
                for p in fr["people"]:
                    x0, y0, x1, y1 = (int(v) for v in p["box"])
                    col = tuple(int(c) for c in np.random.default_rng(p["id"]).integers(60, 255, 3))
                    cv2.rectangle(im, (x0, y0), (x1, y1), col, 2)
                    cv2.putText(im, str(p["id"]), (x0, max(12, y0 - 3)), cv2.FONT_HERSHEY_SIMPLEX, 0.6, col, 2)
                cv2.putText(im, f"frame {fr['frame']}", (5, 20), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (255, 255, 255), 2)
                y0, y1 = a.sheet_rows
                tiles.append(im[y0:y1])
            while len(tiles) % 2:
                tiles.append(np.zeros_like(tiles[0]))
            sheet = np.vstack([np.hstack(tiles[i:i + 2]) for i in range(0, len(tiles), 2)])
            cv2.imwrite(str(Path(a.sheets) / f"sheet_{frames[k]['frame']:04d}.png"), sheet)
    print(f"{a.out}: {len(frames)} frames, {next_id - 1} ids")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
