"""BlazePose (MediaPipe Pose) teacher: 3D and face-point labels for the training images.

The teacher runs in "oracle detector" mode: one square crop per ground-truth person (LSPET: the
joint box; COCO: the annotated box), so every teacher result belongs to a known GT person. It
needs `mediapipe==0.10.14` (the last release that bundles the BlazePose models for
`mediapipe.solutions.pose`), which conflicts with the main environment; run it from its own venv:

    python -m venv /work/teacher_venv
    /work/teacher_venv/bin/pip install mediapipe==0.10.14 opencv-python-headless
    PYTHONPATH=. nice -n 10 /work/teacher_venv/bin/python -m xnect_app.train.teacher \\
        --data-root ../shared/data --datasets lspet coco_train_extra --out-dir data_cache
    # evaluation only (3D agreement in `xnect-eval coco --teacher3d`; training never reads it):
    PYTHONPATH=. /work/teacher_venv/bin/python -m xnect_app.train.teacher --for-eval --datasets coco_dev

The cache keeps the raw landmarks (33 image landmarks in pixels with visibility, 33 world
landmarks in metres); the mapping to our joints below runs when the cache is loaded.

Mapping BlazePose-33 -> ours
- 2D: body joints and the five face points map one to one; neck = shoulder midpoint;
  head_top is not derived (BlazePose has no such landmark), it stays unlabelled.
- 3D (21 joints): pelvis = hip midpoint; neck = shoulder midpoint; spine = pelvis + 0.5 *
  (neck - pelvis) (the middle of the trunk, as MPI-INF-3DHP's spine joint is mid-back);
  head = ear midpoint; head_top = head + 0.75 * (head - neck) (extrapolated along neck -> head:
  adult ear-to-crown height is about 12 cm against about 16 cm from the shoulder line to the
  ears; BlazePose's own shoulder-to-ear distance has a median of 163 mm on coco_train_extra, so
  this puts head_top about 12 cm above the ears); hand = mean of the
  index and pinky knuckles; foot = foot_index (toe tip).
- 3D with mirror-image chirality (about 5% on LSPET: depth order flipped) is dropped.
- Axes: MediaPipe world landmarks are metric, hip-centred, x to the image right, y down and z
  away from the camera (smaller z = closer, as for the image landmarks). That is already our
  camera convention, so the conversion is metres -> mm and re-centring on our pelvis.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import skeleton

LOG = logging.getLogger(__name__)

BLAZEPOSE_33 = (
    "nose", "left_eye_inner", "left_eye", "left_eye_outer", "right_eye_inner", "right_eye",
    "right_eye_outer", "left_ear", "right_ear", "mouth_left", "mouth_right",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_pinky", "right_pinky", "left_index", "right_index", "left_thumb", "right_thumb",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
    "left_heel", "right_heel", "left_foot_index", "right_foot_index",
)
_BP = {n: i for i, n in enumerate(BLAZEPOSE_33)}

# our 2D joint -> BlazePose landmark (neck and head_top handled separately)
_DIRECT_2D = {
    "r_shoulder": "right_shoulder", "r_elbow": "right_elbow", "r_wrist": "right_wrist",
    "l_shoulder": "left_shoulder", "l_elbow": "left_elbow", "l_wrist": "left_wrist",
    "r_hip": "right_hip", "r_knee": "right_knee", "r_ankle": "right_ankle",
    "l_hip": "left_hip", "l_knee": "left_knee", "l_ankle": "left_ankle",
    "nose": "nose", "r_eye": "right_eye", "l_eye": "left_eye", "r_ear": "right_ear", "l_ear": "left_ear",
}
BODY_12 = tuple(_BP[n] for n in (
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle"))
SPINE_FRACTION = 0.5      # spine = pelvis + f * (neck - pelvis)
HEAD_TOP_EXTRAPOLATION = 0.75  # head_top = head + f * (head - neck)
VISIBLE_THRESHOLD = 0.5   # teacher 2D points below this visibility are left unlabelled
# joints the teacher can label in 2D (all but head_top)
TEACHER_KNOWN_2D = np.array([n != "head_top" for n in skeleton.JOINTS_2D])
# GT joints compared with the teacher (neck and head_top are defined differently)
_AGREEMENT_JOINTS = tuple(skeleton.JOINTS_2D.index(n) for n in _DIRECT_2D)
MASK_SIZE = 32  # stored person masks are MASK_SIZE^2 over the crop square


def _mid(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return 0.5 * (a + b)


def blazepose_to_ours_2d(lm: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(33, 3) [x, y, visibility] in pixels -> (19, 3) [x, y, vis state] and (19,) weights.

    vis state 2 where the teacher's visibility >= VISIBLE_THRESHOLD, else 0 (unlabelled);
    weight = the teacher's visibility. Neck = shoulder midpoint, visibility = min of the two.
    """
    lm = np.asarray(lm, np.float32)
    xy = np.zeros((skeleton.NUM_JOINTS_2D, 2), np.float32)
    conf = np.zeros(skeleton.NUM_JOINTS_2D, np.float32)
    for ours, bp in _DIRECT_2D.items():
        j = skeleton.JOINTS_2D.index(ours)
        xy[j], conf[j] = lm[_BP[bp], :2], lm[_BP[bp], 2]
    ls, rs = lm[_BP["left_shoulder"]], lm[_BP["right_shoulder"]]
    xy[skeleton.NECK], conf[skeleton.NECK] = _mid(ls[:2], rs[:2]), min(ls[2], rs[2])
    state = np.where(conf >= VISIBLE_THRESHOLD, 2.0, 0.0).astype(np.float32)
    state[~TEACHER_KNOWN_2D] = 0.0
    kp = np.concatenate([np.where(state[:, None] > 0, xy, 0.0), state[:, None]], 1).astype(np.float32)
    return kp, np.where(state > 0, conf, 0.0).astype(np.float32)


def blazepose_to_ours_3d(world: np.ndarray) -> np.ndarray:
    """(33, 3) MediaPipe world landmarks (m, x right, y down, z away) -> (21, 3) mm root-relative."""
    w = np.asarray(world, np.float64) * 1000.0
    g = lambda n: w[_BP[n]]  # noqa: E731
    out = np.zeros((skeleton.NUM_JOINTS_3D, 3))
    J = skeleton.JOINTS_3D.index
    for side, s in (("r", "right"), ("l", "left")):
        for part in ("shoulder", "elbow", "wrist", "hip", "knee", "ankle"):
            out[J(f"{side}_{part}")] = g(f"{s}_{part}")
        out[J(f"{side}_hand")] = _mid(g(f"{s}_index"), g(f"{s}_pinky"))
        out[J(f"{side}_foot")] = g(f"{s}_foot_index")
    pelvis = _mid(g("left_hip"), g("right_hip"))
    neck = _mid(g("left_shoulder"), g("right_shoulder"))
    head = _mid(g("left_ear"), g("right_ear"))
    out[J("pelvis")] = pelvis
    out[J("neck")] = neck
    out[J("spine")] = pelvis + SPINE_FRACTION * (neck - pelvis)
    out[J("head")] = head
    out[J("head_top")] = head + HEAD_TOP_EXTRAPOLATION * (head - neck)
    return (out - pelvis).astype(np.float32)


def proper_chirality(world: np.ndarray) -> bool:
    """False for a mirror-image body (a teacher failure of depth order): for a real body the
    right->left shoulder vector x the pelvis->neck vector points where the face looks."""
    w = np.asarray(world, np.float64)
    ls, rs = w[_BP["left_shoulder"]], w[_BP["right_shoulder"]]
    neck, pelvis = _mid(ls, rs), _mid(w[_BP["left_hip"]], w[_BP["right_hip"]])
    return float(np.dot(np.cross(ls - rs, neck - pelvis), w[_BP["nose"]] - neck)) > 0


def agreement(gt_kp: np.ndarray, teacher_kp: np.ndarray, box_h: float) -> tuple[float, np.ndarray]:
    """PCK@0.2 of the torso between GT and teacher 2D over the joints both define.

    Torso = GT shoulder-midpoint to hip-midpoint distance (0.35 * box height if not labelled).
    Returns (pck, per-joint error / torso with NaN where not compared).
    """
    J = skeleton.JOINTS_2D.index
    pts = [J("r_shoulder"), J("l_shoulder"), J("r_hip"), J("l_hip")]
    if (gt_kp[pts, 2] > 0).all():
        torso = float(np.linalg.norm(_mid(gt_kp[pts[0], :2], gt_kp[pts[1], :2])
                                     - _mid(gt_kp[pts[2], :2], gt_kp[pts[3], :2])))
    else:
        torso = 0.35 * box_h
    torso = max(torso, 4.0)
    err = np.full(skeleton.NUM_JOINTS_2D, np.nan, np.float32)
    idx = [j for j in _AGREEMENT_JOINTS if gt_kp[j, 2] > 0]
    if not idx:
        return float("nan"), err
    err[idx] = np.linalg.norm(gt_kp[idx, :2] - teacher_kp[idx, :2], axis=1) / torso
    return float(np.mean(err[idx] < 0.2)), err


# ------------------------------------------------------------------------------- loading the cache

@dataclass
class TeacherLabel:
    kp2d: np.ndarray      # (19, 3) [x, y, vis state]
    weight: np.ndarray    # (19,) teacher visibility where labelled
    known_2d: np.ndarray  # (19,) bool, joint types the teacher labels
    kp3d_mm: np.ndarray   # (21, 3) root-relative mm, camera axes (NaN: mirror-image 3D, dropped)
    conf: float           # mean visibility of the 12 body landmarks
    pck: float            # agreement with GT 2D (PCK@0.2 torso)
    agree05: float        # share of compared joints within 0.5 torso of GT (NaN: none compared)
    mask: tuple | None    # (x0, y0, side, (48, 48) uint8) person mask in an image square


class TeacherLabels:
    """Teacher labels of one dataset, looked up by person key."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self._a = arrays
        self._index = {str(k): i for i, k in enumerate(arrays["keys"]) if arrays["ok"][i]}

    @classmethod
    def load(cls, path: str | os.PathLike) -> "TeacherLabels":
        with np.load(path, allow_pickle=False) as z:
            return cls({k: z[k] for k in z.files})

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> TeacherLabel | None:
        i = self._index.get(key)
        if i is None:
            return None
        a = self._a
        lm = a["lm2d"][i].astype(np.float32)
        kp, weight = blazepose_to_ours_2d(lm)
        err = a["err"][i].astype(np.float32)
        agree05 = float(np.mean(err[np.isfinite(err)] < 0.5)) if np.isfinite(err).any() else float("nan")
        mask = None
        if "seg" in a:
            x0, y0, side = (float(v) for v in a["seg_box"][i])
            mask = (x0, y0, side, a["seg"][i])
        world = a["world"][i].astype(np.float32)
        proper = proper_chirality(world)
        return TeacherLabel(kp2d=kp, weight=weight, known_2d=TEACHER_KNOWN_2D.copy(),
                            kp3d_mm=blazepose_to_ours_3d(world) if proper else
                            np.full((skeleton.NUM_JOINTS_3D, 3), np.nan, np.float32),
                            conf=float(np.mean(lm[list(BODY_12), 2])) if proper else 0.0, pck=float(a["pck"][i]),
                            agree05=agree05, mask=mask)


# ----------------------------------------------------------------------------- running the teacher

CROP = 256


def person_square(box: np.ndarray, expand: float) -> tuple[float, float, float]:
    """Square (x0, y0, side) around an x, y, w, h box, side = expand * max(w, h)."""
    x, y, w, h = (float(v) for v in box)
    side = max(expand * max(w, h), 32.0)
    return x + w / 2 - side / 2, y + h / 2 - side / 2, side


class BlazePoseRunner:
    """mediapipe.solutions.pose on square crops; returns landmarks in image pixels."""

    def __init__(self, model_complexity: int = 1):
        import mediapipe as mp  # the teacher venv only
        self.mp_version = mp.__version__
        self.pose = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=model_complexity,
                                           enable_segmentation=True, min_detection_confidence=0.3)

    def __call__(self, image_bgr: np.ndarray, square: tuple[float, float, float]):
        import cv2
        x0, y0, side = square
        s = CROP / side
        M = np.array([[s, 0, -x0 * s], [0, s, -y0 * s]], np.float32)
        crop = cv2.warpAffine(image_bgr, M, (CROP, CROP), flags=cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=(0, 0, 0))
        res = self.pose.process(cv2.cvtColor(crop, cv2.COLOR_BGR2RGB))
        if res.pose_landmarks is None or res.pose_world_landmarks is None:
            return None
        lm = np.array([[p.x * CROP / s + x0, p.y * CROP / s + y0, p.visibility]
                       for p in res.pose_landmarks.landmark], np.float32)
        world = np.array([[p.x, p.y, p.z] for p in res.pose_world_landmarks.landmark], np.float32)
        seg = np.zeros((MASK_SIZE, MASK_SIZE), np.uint8)
        if res.segmentation_mask is not None:
            seg = np.clip(cv2.resize(res.segmentation_mask, (MASK_SIZE, MASK_SIZE),
                                     interpolation=cv2.INTER_AREA) * 255, 0, 255).astype(np.uint8)
        return lm, world, seg

    def close(self) -> None:
        self.pose.close()


def _save_npz_atomic(path: Path, **arrays) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, suffix=".tmp.npz")
    os.close(fd)
    try:
        np.savez_compressed(tmp, **arrays)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _label_chunk(runner: BlazePoseRunner, records, expand_gt_box: float, expand_joint_box: float) -> dict:
    from .data import load_image
    out: dict[str, list] = {k: [] for k in ("keys", "ok", "lm2d", "world", "pck", "err", "seg", "seg_box")}
    for rec in records:
        try:
            img = load_image(rec.path)
        except FileNotFoundError as e:
            LOG.warning("%s", e)
            continue
        for i, key in enumerate(rec.keys):
            exp = expand_joint_box if rec.source == "lspet" else expand_gt_box
            sq = person_square(rec.boxes[i], exp)
            r = runner(img, sq)
            out["keys"].append(key)
            out["seg_box"].append(np.array(sq, np.float32))
            if r is None:
                out["ok"].append(False)
                out["lm2d"].append(np.zeros((33, 3), np.float32))
                out["world"].append(np.zeros((33, 3), np.float16))
                out["pck"].append(np.float32(0))
                out["err"].append(np.full(19, np.nan, np.float16))
                out["seg"].append(np.zeros((MASK_SIZE, MASK_SIZE), np.uint8))
                continue
            lm, world, seg = r
            kp, _ = blazepose_to_ours_2d(lm)
            # compare all positions, not only the ones the teacher calls visible
            kp_all = kp.copy()
            for ours, bp in _DIRECT_2D.items():
                kp_all[skeleton.JOINTS_2D.index(ours), :2] = lm[_BP[bp], :2]
            pck, err = agreement(rec.kp2d[i], kp_all, float(rec.boxes[i][3]))
            out["ok"].append(True)
            out["lm2d"].append(lm)
            out["world"].append(world.astype(np.float16))
            out["pck"].append(np.float32(pck))
            out["err"].append(err.astype(np.float16))
            out["seg"].append(seg)
    return out


def compact(arrays: dict[str, np.ndarray], min_agree_mask: float = 0.5) -> dict[str, np.ndarray]:
    """Shrink a cache for the repository: float16 landmarks, MASK_SIZE masks, and no masks for
    people whose teacher pose disagrees with GT (they are never used)."""
    import cv2
    out = dict(arrays)
    out["lm2d"] = arrays["lm2d"].astype(np.float16)
    seg = arrays["seg"]
    if seg.shape[1] != MASK_SIZE:
        seg = np.stack([cv2.resize(m, (MASK_SIZE, MASK_SIZE), interpolation=cv2.INTER_AREA) for m in seg]) \
            if len(seg) else np.zeros((0, MASK_SIZE, MASK_SIZE), np.uint8)
    err = arrays["err"].astype(np.float32)
    fin = np.isfinite(err)
    agree = np.where(fin.any(1), np.sum((err < 0.5) & fin, 1) / np.maximum(fin.sum(1), 1), 0.0)
    seg = seg.copy()
    seg[~(arrays["ok"] & (agree >= min_agree_mask))] = 0
    out["seg"] = seg
    return out


def label_dataset(records, name: str, out_dir: Path, chunk: int = 500, expand_gt_box: float = 1.25,
                  expand_joint_box: float = 1.4, model_complexity: int = 1, prefix: str = "teacher") -> dict:
    """Label every GT person of `records` into out_dir/{prefix}_{name}.npz (+ .json); resumable
    (chunks under out_dir/.parts/{prefix}_{name})."""
    parts = out_dir / ".parts" / f"{prefix}_{name}"
    parts.mkdir(parents=True, exist_ok=True)
    runner = BlazePoseRunner(model_complexity)
    t0 = time.time()
    n_chunks = (len(records) + chunk - 1) // chunk
    try:
        for c in range(n_chunks):
            part = parts / f"part_{c:05d}.npz"
            if part.exists():
                continue
            res = _label_chunk(runner, records[c * chunk:(c + 1) * chunk], expand_gt_box, expand_joint_box)
            _save_npz_atomic(part, **{k: np.stack(v) if k != "keys" else np.array(v, dtype=str)
                                      for k, v in res.items()})
            LOG.info("%s: chunk %d/%d done (%.0f s)", name, c + 1, n_chunks, time.time() - t0)
    finally:
        runner.close()
    merged: dict[str, list] = {}
    for c in range(n_chunks):
        with np.load(parts / f"part_{c:05d}.npz") as z:
            for k in z.files:
                merged.setdefault(k, []).append(z[k])
    arrays = compact({k: np.concatenate(v) for k, v in merged.items()})
    _save_npz_atomic(out_dir / f"{prefix}_{name}.npz", **arrays)
    ok = arrays["ok"]
    pck = arrays["pck"][ok]
    stats = {
        "dataset": name, "persons": int(len(ok)), "teacher_found": int(ok.sum()),
        "pck02_torso_mean": float(np.nanmean(pck)) if len(pck) else None,
        "agree_ge_0.6": int(np.sum(pck >= 0.6)),
        "mediapipe_version": runner.mp_version, "model_complexity": model_complexity,
        "static_image_mode": True, "crop_px": CROP, "expand_gt_box": expand_gt_box,
        "expand_joint_box": expand_joint_box, "seconds": round(time.time() - t0, 1),
        "note": "raw landmarks; mapping to our joints (teacher.py) is applied when loading",
    }
    meta = out_dir / f"{prefix}_{name}.json"
    tmp = meta.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(stats, indent=1))
    os.replace(tmp, meta)
    for f in parts.glob("part_*.npz"):
        f.unlink()
    parts.rmdir()
    return stats


def main(argv: list[str] | None = None) -> int:
    from . import data
    ap = argparse.ArgumentParser(description="Label training people with the BlazePose teacher "
                                 "(needs mediapipe==0.10.14; see the module docstring).")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--datasets", nargs="+", default=list(data.TRAIN_SOURCES))
    ap.add_argument("--out-dir", default="data_cache")
    ap.add_argument("--chunk", type=int, default=500)
    ap.add_argument("--limit", type=int, default=None, help="only the first N images (smoke test)")
    ap.add_argument("--model-complexity", type=int, default=1, choices=(0, 1, 2))
    ap.add_argument("--for-eval", action="store_true",
                    help="label evaluation data (coco_dev) into eval_teacher_NAME.npz, which training "
                         "never reads, for `xnect-eval coco --teacher3d` (3D agreement with the teacher)")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    try:
        import mediapipe  # noqa: F401
    except ImportError:
        print("error: mediapipe is not installed (pip install mediapipe==0.10.14 in a separate venv)",
              file=sys.stderr)
        return 2
    for name in args.datasets:
        if name in data.EVAL_ONLY_SOURCES and not args.for_eval:
            print(f"error: {name} is evaluation data and is never labelled for training", file=sys.stderr)
            return 2
        root = Path(args.data_root) / name
        if not root.is_dir():
            print(f"error: no dataset folder {root}", file=sys.stderr)
            return 2
        recs = data.read_lspet(root, split="all") if name == "lspet" else data.read_coco(root, source=name)
        if args.limit:
            recs = recs[:args.limit]
        stats = label_dataset(recs, name, Path(args.out_dir), chunk=args.chunk,
                              model_complexity=args.model_complexity,
                              prefix="eval_teacher" if args.for_eval else "teacher")
        print(json.dumps(stats))
    return 0


if __name__ == "__main__":
    sys.exit(main())
