"""Evaluation: COCO OKS AP (17 joints and the 12 body joints), PCK, and the MuPoTS-3D 3D protocol.

COCO AP uses pycocotools' reference COCOeval. "Body AP" keeps the 12 body joints (COCO indices
5..16) of both ground truth and predictions with their standard sigmas, so a model without face
points is not penalised for them.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, Callable

import cv2
import numpy as np

from .. import skeleton
from .data import read_lspet
from .teacher import TeacherLabels

_logger = logging.getLogger(__name__)

MUPOTS_PCK_THRESHOLD_MM = 150.0


def load_coco_json(path_or_dir: str | Path) -> tuple[dict[str, Any], Path]:
    """The person-keypoints json and its image folder, from a folder or the json itself."""
    p = Path(path_or_dir)
    if p.is_dir():
        cands = sorted(p.glob("*keypoints*.json")) or sorted(p.glob("*.json"))
        if not cands:
            raise FileNotFoundError(f"no COCO keypoints json in {p}")
        jp = cands[0]
    else:
        jp = p
    with open(jp) as f:
        data = json.load(f)
    return data, jp.parent


def predict_coco(estimator: Callable[[np.ndarray], Any], data: dict[str, Any], img_dir: Path,
                 people_out: dict[int, list] | None = None,
                 shares_out: list[float] | None = None) -> list[dict[str, Any]]:
    """Run the estimator on every image of a COCO json; COCO-format keypoint results (and, into
    `people_out`, the `Person`s of each image id; into `shares_out`, each DynConv frame's
    computed share)."""
    results = []
    for im in data["images"]:
        img = cv2.imread(str(image_path(img_dir, im["file_name"])))
        if img is None:
            raise FileNotFoundError(f"cannot read {image_path(img_dir, im['file_name'])}")
        fr = estimator(img)
        if people_out is not None:
            people_out[im["id"]] = list(fr.people)
        if shares_out is not None and getattr(fr, "computed_share", None) is not None:
            shares_out.append(float(fr.computed_share))
        for p in fr.people:
            results.append({"image_id": im["id"], "category_id": 1,
                            "keypoints": person_to_coco17(p.kp2d), "score": float(p.score)})
    return results


def image_path(img_dir: Path, file_name: str) -> Path:
    """COCO file names are relative to the json's folder, or bare names inside its images/."""
    p = img_dir / file_name
    return p if p.exists() else img_dir / "images" / Path(file_name).name


def person_to_coco17(kp2d: np.ndarray) -> list[float]:
    out = []
    for j in skeleton.COCO17_FROM_2D:
        x, y, c = kp2d[j]
        if not np.isfinite(x) or c <= 0:
            out += [0.0, 0.0, 0.0]
        else:
            out += [float(x), float(y), float(c)]
    return out


def _evaluated(gt: dict[str, Any], results: list[dict[str, Any]], joints: tuple[int, ...] | None):
    """pycocotools' COCOeval of the results, evaluated per image (not yet accumulated); `joints`
    keeps a subset of the 17 COCO keypoints. None without results."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sig = np.array(skeleton.COCO_SIGMAS)
    gt = json.loads(json.dumps(gt))
    results = json.loads(json.dumps(results))
    if joints is not None:
        idx = np.array(joints)
        for a in gt["annotations"]:
            k = np.array(a.get("keypoints", [0] * 51), float).reshape(17, 3)[idx]
            a["keypoints"] = k.ravel().tolist()
            a["num_keypoints"] = int((k[:, 2] > 0).sum())
        for r in results:
            r["keypoints"] = np.array(r["keypoints"], float).reshape(17, 3)[idx].ravel().tolist()
        sig = sig[idx]
        for c in gt.get("categories", []):
            c["keypoints"] = [c["keypoints"][i] for i in idx] if "keypoints" in c else []
    gt.setdefault("categories", [{"id": 1, "name": "person"}])
    if not results:
        return None
    with contextlib.redirect_stdout(io.StringIO()):
        cg = COCO()
        cg.dataset = gt
        cg.createIndex()
        cd = cg.loadRes(results)
        ev = COCOeval(cg, cd, "keypoints")
        ev.params.kpt_oks_sigmas = sig
        ev.evaluate()
    return ev


def coco_ap(gt: dict[str, Any], results: list[dict[str, Any]], joints: tuple[int, ...] | None = None) -> dict[str, float]:
    """OKS AP with pycocotools; `joints` keeps a subset of the 17 COCO keypoints."""
    ev = _evaluated(gt, results, joints)
    if ev is None:
        return {"ap": 0.0, "ap50": 0.0, "ap75": 0.0, "ap_medium": 0.0, "ap_large": 0.0, "ar": 0.0}
    with contextlib.redirect_stdout(io.StringIO()):
        ev.accumulate()
        ev.summarize()
    s = ev.stats
    # COCO's size ranges: medium 32^2..96^2 px of segment area, large above (small people have no
    # keypoint AP in COCO); -1 (no such people) becomes 0
    return {"ap": float(max(s[0], 0)), "ap50": float(max(s[1], 0)), "ap75": float(max(s[2], 0)),
            "ap_medium": float(max(s[3], 0)), "ap_large": float(max(s[4], 0)), "ar": float(max(s[5], 0))}


def resample_images(gt: dict[str, Any], results: list[dict[str, Any]], image_ids: list[int]
                    ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """The set and its results over `image_ids`, repeats allowed: each draw becomes an image of its own."""
    anns: dict[int, list] = {}
    for a in gt["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    dets: dict[int, list] = {}
    for r in results:
        dets.setdefault(r["image_id"], []).append(r)
    images = {im["id"]: im for im in gt["images"]}
    out_gt = {**gt, "images": [], "annotations": []}
    out_res = []
    for new_id, iid in enumerate(image_ids, 1):
        out_gt["images"].append({**images[iid], "id": new_id})
        for a in anns.get(iid, []):
            out_gt["annotations"].append({**a, "image_id": new_id, "id": len(out_gt["annotations"]) + 1})
        out_res += [{**r, "image_id": new_id} for r in dets.get(iid, [])]
    return out_gt, out_res


class ImageMatches:
    """COCOeval's per-image matching (every size, the top 20 detections per image), kept so that the
    AP of any draw of the images, repeats allowed, is a concatenation and a sort: `ap(image_ids)` equals
    `coco_ap(*resample_images(gt, results, image_ids), joints)["ap"]` without matching again. An image's
    matches do not depend on the other images, so a bootstrap draw costs milliseconds instead of a
    whole COCOeval (minutes per draw on a 5,000-image set)."""

    def __init__(self, gt: dict[str, Any], results: list[dict[str, Any]], joints: tuple[int, ...] | None = None):
        ids = [im["id"] for im in gt["images"]]
        self._row = {iid: i for i, iid in enumerate(ids)}
        n = len(ids)
        self._len = np.zeros(n, np.int64)
        self._n_gt = np.zeros(n, np.int64)
        ev = _evaluated(gt, results, joints)
        if ev is None:  # no detections: every draw scores 0, as coco_ap does
            self._rec_thrs = np.zeros(0)
            self._scores = np.zeros(0)
            self._tp = self._fp = np.zeros((0, 0), bool)
            self._start = np.zeros(n, np.int64)
            return
        p = ev.params
        self._rec_thrs = np.asarray(p.recThrs)
        max_det = p.maxDets[-1]
        per_image = {iid: e for iid, e in zip(p.imgIds, ev.evalImgs[:len(p.imgIds)])}  # area "all" comes first
        scores, tp, fp = [], [], []
        for i, iid in enumerate(ids):
            e = per_image.get(iid)
            if e is None:  # neither people nor detections
                continue
            matched, ignored = e["dtMatches"][:, :max_det] > 0, e["dtIgnore"][:, :max_det] > 0
            scores.append(np.asarray(e["dtScores"][:max_det], float))
            tp.append(matched & ~ignored)
            fp.append(~matched & ~ignored)
            self._len[i] = len(scores[-1])
            self._n_gt[i] = int(np.count_nonzero(np.asarray(e["gtIgnore"]) == 0))
        t = len(p.iouThrs)
        self._scores = np.concatenate(scores) if scores else np.zeros(0)
        self._tp = np.concatenate(tp, 1) if tp else np.zeros((t, 0), bool)
        self._fp = np.concatenate(fp, 1) if fp else np.zeros((t, 0), bool)
        self._start = np.cumsum(self._len) - self._len

    def ap(self, image_ids: list[int] | None = None) -> float:
        """AP over these images in this order (the whole set when None), as COCOeval.accumulate
        and summarize compute it: precision at 101 recall points, averaged over the OKS thresholds."""
        if image_ids is None:
            image_ids = sorted(self._row)  # COCOeval's order
        rows = np.array([self._row[i] for i in image_ids], np.int64)
        n_gt = int(self._n_gt[rows].sum())
        if n_gt == 0 or len(self._rec_thrs) == 0:
            return 0.0
        lengths = self._len[rows]
        total = int(lengths.sum())
        flat = np.repeat(self._start[rows] - (np.cumsum(lengths) - lengths), lengths) + np.arange(total)
        order = np.argsort(-self._scores[flat], kind="mergesort")  # as accumulate sorts (stable: ties by image)
        tp = np.cumsum(self._tp[:, flat][:, order], 1).astype(float)
        fp = np.cumsum(self._fp[:, flat][:, order], 1).astype(float)
        recall = tp / n_gt
        precision = tp / (fp + tp + np.spacing(1))
        precision = np.maximum.accumulate(precision[:, ::-1], 1)[:, ::-1]  # the envelope, from the right
        q = np.zeros((len(tp), len(self._rec_thrs)))
        for t in range(len(tp)):
            at = np.searchsorted(recall[t], self._rec_thrs, side="left")
            ok = at < total
            q[t, ok] = precision[t, at[ok]]
        return float(max(q.mean(), 0.0))


def bootstrap_ap(gt: dict[str, Any], results: list[dict[str, Any]], resamples: int,
                 baseline: list[dict[str, Any]] | None = None, joints: tuple[int, ...] | None = skeleton.COCO17_BODY,
                 level: float = 0.9, seed: int = 0) -> dict[str, float]:
    """How far the AP could move on another draw of images like these: the AP over `resamples` draws of
    the set's images with replacement, and its central `level` interval. With `baseline` (another model's
    results on the same images) also the paired difference, results - baseline, on the same draws, and the
    share of draws in which `results` scores higher."""
    rng = np.random.default_rng(seed)
    ids = [im["id"] for im in gt["images"]]
    mine = ImageMatches(gt, results, joints)
    other = ImageMatches(gt, baseline, joints) if baseline is not None else None
    aps, diffs = [], []
    for _ in range(resamples):
        draw = [ids[i] for i in rng.integers(0, len(ids), len(ids))]
        aps.append(mine.ap(draw))
        if other is not None:
            diffs.append(aps[-1] - other.ap(draw))
    tail = (1 - level) / 2 * 100
    out = {"resamples": resamples, "level": level,
           "ap_low": float(np.percentile(aps, tail)), "ap_high": float(np.percentile(aps, 100 - tail))}
    if other is not None:
        out.update(diff=mine.ap() - other.ap(),
                   diff_low=float(np.percentile(diffs, tail)), diff_high=float(np.percentile(diffs, 100 - tail)),
                   higher_share=float(np.mean(np.array(diffs) > 0)))
    return out


def pck(gt: dict[str, Any], results: list[dict[str, Any]], alpha: float = 0.2) -> float:
    """PCK of the 12 body joints: each GT person matched to the prediction with the most joints
    within alpha x torso-scale (box diagonal fallback); fraction of labelled joints found."""
    by_img: dict[int, list[np.ndarray]] = {}
    for r in results:
        by_img.setdefault(r["image_id"], []).append(np.array(r["keypoints"], float).reshape(17, 3))
    hit = total = 0
    body = np.array(skeleton.COCO17_BODY)
    for a in gt["annotations"]:
        if a.get("iscrowd", 0) or a.get("num_keypoints", 0) == 0:
            continue
        g = np.array(a["keypoints"], float).reshape(17, 3)[body]
        lab = g[:, 2] > 0
        if not lab.any():
            continue
        x, y, w, h = a["bbox"]
        thr = alpha * max(w, h)
        best = 0
        for p in by_img.get(a["image_id"], []):
            q = p[body]
            ok = (q[:, 2] > 0) & lab & (np.linalg.norm(q[:, :2] - g[:, :2], axis=1) < thr)
            best = max(best, int(ok.sum()))
        hit += best
        total += int(lab.sum())
    return hit / max(total, 1)


def evaluate_coco(estimator: Callable[[np.ndarray], Any], coco_dir: str | Path,
                  teacher3d: str | Path | None = None, keep_results: bool = False) -> dict[str, Any]:
    """COCO AP / PCK; with `teacher3d` (a teacher label file of the same people, made by
    `python -m xnect_app.train.teacher --for-eval`) also the 3D agreement with the teacher; with
    `keep_results` the detections too ("results", COCO results format, for `bootstrap_ap`)."""
    data, img_dir = load_coco_json(coco_dir)
    people: dict[int, list] = {}
    shares: list[float] = []
    results = predict_coco(estimator, data, img_dir, people, shares)
    all17 = coco_ap(data, results)
    body = coco_ap(data, results, skeleton.COCO17_BODY)
    n_gt = sum(1 for a in data["annotations"] if a.get("num_keypoints", 0) > 0 and not a.get("iscrowd", 0))
    out = {"ap": all17["ap"], "ap50": all17["ap50"], "ar": all17["ar"],
           "ap_body": body["ap"], "ap50_body": body["ap50"], "ar_body": body["ar"],
           "ap_medium_body": body["ap_medium"], "ap_large_body": body["ap_large"],
           "pck_body@0.2": pck(data, results), "images": len(data["images"]), "gt_persons": n_gt,
           "detections": len(results)}
    if shares:  # DynConv: mean share of the stride-8 cells computed
        out["computed_share"] = float(np.mean(shares))
    if teacher3d is not None:
        out["teacher3d"] = teacher_3d_agreement(data, people, TeacherLabels.load(teacher3d))
    if keep_results:
        out["results"] = results
    return out


def lspet_as_coco(root: str | Path, split: str = "heldout") -> dict[str, Any]:
    """LSPET's labelled people (the 12 body joints) as a COCO keypoints dict, for `pck`: one
    person per image, so its AP would count the unlabelled bystanders as false detections."""
    images, anns = [], []
    for i, rec in enumerate(read_lspet(root, ignore_context=False, split=split)):
        kp = np.zeros((17, 3))
        for c, ours in enumerate(skeleton.COCO17_FROM_2D):
            if c in skeleton.COCO17_BODY and rec.kp2d[0, ours, 2] > 0:
                kp[c] = (rec.kp2d[0, ours, 0], rec.kp2d[0, ours, 1], 2)
        x, y, w, h = (float(v) for v in rec.boxes[0])
        images.append({"id": i + 1, "file_name": str(Path(rec.path).resolve()), "width": rec.width,
                       "height": rec.height})
        anns.append({"id": i + 1, "image_id": i + 1, "category_id": 1, "iscrowd": 0, "bbox": [x, y, w, h],
                     "area": w * h, "keypoints": kp.ravel().tolist(), "num_keypoints": int((kp[:, 2] > 0).sum())})
    return {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}


def evaluate_pck(estimator: Callable[[np.ndarray], Any], gt: dict[str, Any], alpha: float = 0.2) -> dict[str, Any]:
    results = predict_coco(estimator, gt, Path("/"))
    return {"pck_body@%g" % alpha: pck(gt, results, alpha), "images": len(gt["images"]),
            "gt_persons": len(gt["annotations"]), "detections": len(results)}


# -- 3D agreement with the BlazePose teacher ---------------------------------------------------

# Joints the teacher measures directly (or as midpoints): not the derived spine and head top, nor
# the pelvis (zero in both after root-centring).
TEACHER_3D_JOINTS = tuple(skeleton.JOINTS_3D.index(n) for n in (
    "neck", "head", "r_shoulder", "r_elbow", "r_wrist", "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle", "l_hip", "l_knee", "l_ankle"))


def procrustes_aligned(pred: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """`pred` (J x 3) after the similarity transform (scale, rotation, translation) that best fits
    it to `ref` in the least-squares sense."""
    mp, mr = pred.mean(0), ref.mean(0)
    p, r = pred - mp, ref - mr
    u, sv, vt = np.linalg.svd(p.T @ r)
    d = np.sign(np.linalg.det(u @ vt))
    fix = np.diag([1.0, 1.0, d])
    rot = u @ fix @ vt
    scale = (sv * np.diag(fix)).sum() / max(float((p ** 2).sum()), 1e-9)
    return scale * p @ rot + mr


def coco_oks(gt_kp: np.ndarray, pred_kp: np.ndarray, area: float) -> float:
    """COCO OKS of a 17 x 3 prediction against a 17 x 3 ground truth (labelled joints only)."""
    lab = gt_kp[:, 2] > 0
    if not lab.any():
        return 0.0
    k2 = (2 * np.asarray(skeleton.COCO_SIGMAS)) ** 2
    d2 = ((pred_kp[:, :2] - gt_kp[:, :2]) ** 2).sum(1)
    e = np.exp(-d2 / (2 * max(area, 1.0) * k2))
    e[~(pred_kp[:, 2] > 0)] = 0.0  # not found (confidence 0 or NaN)
    return float(e[lab].mean())


def teacher_3d_agreement(data: dict[str, Any], people: dict[int, list], labels,
                         min_teacher_pck: float = 0.6, min_oks: float = 0.5) -> dict[str, Any]:
    """Root-relative 3D of the detected people against the teacher's metric 3D of the same people.

    A ground-truth person counts when the teacher found them with 2D agreeing with the ground
    truth (PCK@0.2 >= `min_teacher_pck`, proper chirality) and a detection matches them (COCO OKS
    >= `min_oks`, one detection per person, best first). Errors in mm over `TEACHER_3D_JOINTS`,
    both poses pelvis-centred: MPJPE, PA-MPJPE (after a similarity Procrustes fit), and the MPJPE
    of one constant pose (the mean teacher pose of the compared people) as the floor to beat.
    """
    joints = list(TEACHER_3D_JOINTS)
    root = skeleton.ROOT_3D
    pairs = []
    labelled = 0
    by_image: dict[int, list] = {}
    for a in data["annotations"]:
        by_image.setdefault(a["image_id"], []).append(a)
    file_names = {im["id"]: Path(im["file_name"]).name for im in data["images"]}
    for image_id, anns in by_image.items():
        cands = []
        for a in anns:
            if a.get("iscrowd", 0) or a.get("num_keypoints", 0) == 0:
                continue
            lab = labels.get(f"{file_names[image_id]}#{a['id']}")  # the key train.data gives a COCO person
            if lab is None or lab.pck < min_teacher_pck or not np.isfinite(lab.kp3d_mm).all():
                continue
            labelled += 1
            gt = np.asarray(a["keypoints"], float).reshape(17, 3)
            for i, person in enumerate(people.get(image_id, [])):
                pred = np.asarray(person_to_coco17(person.kp2d), float).reshape(17, 3)
                o = coco_oks(gt, pred, float(a.get("area", a["bbox"][2] * a["bbox"][3])))
                if o >= min_oks:
                    cands.append((o, a["id"], i, lab, person))
        used_gt, used_det = set(), set()
        for o, ann_id, i, lab, person in sorted(cands, key=lambda c: -c[0]):
            if ann_id in used_gt or i in used_det:
                continue
            used_gt.add(ann_id)
            used_det.add(i)
            ours = np.asarray(person.kp3d_rel_mm, float)
            pairs.append((ours - ours[root], lab.kp3d_mm.astype(float) - lab.kp3d_mm[root]))
    out: dict[str, Any] = {"labelled_persons": labelled, "persons": len(pairs),
                           "joints": [skeleton.JOINTS_3D[j] for j in joints],
                           "min_teacher_pck": min_teacher_pck, "min_oks": min_oks}
    if not pairs:
        return out
    ours = np.stack([p[0][joints] for p in pairs])
    ref = np.stack([p[1][joints] for p in pairs])
    err = np.linalg.norm(ours - ref, axis=2).mean(1)
    pa = np.array([np.linalg.norm(procrustes_aligned(o, r) - r, axis=1).mean() for o, r in zip(ours, ref)])
    mean_pose = ref.mean(0)
    const = np.linalg.norm(mean_pose[None] - ref, axis=2).mean(1)
    const_pa = np.array([np.linalg.norm(procrustes_aligned(mean_pose, r) - r, axis=1).mean() for r in ref])
    out.update(mpjpe_mm=float(err.mean()), mpjpe_median_mm=float(np.median(err)), pa_mpjpe_mm=float(pa.mean()),
               mean_pose_mpjpe_mm=float(const.mean()), mean_pose_pa_mpjpe_mm=float(const_pa.mean()))
    return out


# -- MuPoTS-3D protocol (spec §2.10) -------------------------------------------------------------

# Tree walk of the MuPoTS kit (1-based 16, 2, 1, 17, 3..14: head top and head hang off the neck)
# used to rescale predicted bones to the ground truth's, 0-based, over the MuPoTS-17
# joints: each entry (child, parent) after the pelvis (14).
_MUPOTS_RESCALE_ORDER = ((15, 14), (1, 15), (0, 1), (16, 1), (2, 1), (3, 2), (4, 3), (5, 1), (6, 5), (7, 6),
                         (8, 14), (9, 8), (10, 9), (11, 14), (12, 11), (13, 12))
_MUPOTS_EVAL_JOINTS = tuple(range(14))  # the 14 LSP-compatible joints of the 17


def rescale_to_gt_bones(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """Keep each predicted bone direction, set its length to the ground truth's (17 x 3 mm,
    pelvis-centred)."""
    out = np.zeros_like(pred)
    out[14] = gt[14]
    for c, p in _MUPOTS_RESCALE_ORDER:
        d = pred[c] - pred[p]
        n = np.linalg.norm(d)
        length = np.linalg.norm(gt[c] - gt[p])
        out[c] = out[p] + (d / n * length if n > 1e-9 else 0.0)
    return out


def mupots_errors(pred17: np.ndarray, gt17: np.ndarray) -> np.ndarray:
    """Per-joint errors (14,) in mm after pelvis-centring and bone rescaling."""
    p = pred17 - pred17[14]
    g = gt17 - gt17[14]
    p = rescale_to_gt_bones(p, g)
    return np.linalg.norm(p - g, axis=1)[list(_MUPOTS_EVAL_JOINTS)]


def pck3d_summary(errors: np.ndarray) -> dict[str, float]:
    """3DPCK@150mm, AUC over 0:5:150 mm and MPJPE from an array of joint errors (NaN = miss)."""
    e = np.where(np.isfinite(errors), errors, np.inf)
    ths = np.arange(0, 151, 5)
    return {"pck3d_150": float((e < MUPOTS_PCK_THRESHOLD_MM).mean() * 100),
            "auc": float(np.mean([(e < t).mean() for t in ths]) * 100),
            "mpjpe": float(errors[np.isfinite(errors)].mean()) if np.isfinite(errors).any() else float("nan")}
