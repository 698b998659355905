"""Identity metrics of a tracker against ground-truth boxes and ids: IDF1 and ID switches.

- IDF1 (Ristani et al., 2016): ground-truth and predicted ids are matched one to one for the
  whole sequence so that the number of frames in which a matched pair overlaps (IoU >= 0.5)
  is largest; IDF1 = 2 IDTP / (2 IDTP + IDFP + IDFN).
- ID switches (CLEAR MOT): each frame, ground truth and predictions are matched (IoU >= 0.5,
  keeping last frame's pairs where they still overlap); a switch is a ground-truth id whose
  match has a different predicted id from its previous match.
Boxes are x0, y0, x1, y1. Predictions without an id (-1) count as missed.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

Frame = list[tuple[int, np.ndarray]]  # (id, box) of the people in one frame


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(A, 4) x (B, 4) x0, y0, x1, y1 -> (A, B)."""
    a, b = np.asarray(a, float).reshape(-1, 4), np.asarray(b, float).reshape(-1, 4)
    lo = np.maximum(a[:, None, :2], b[None, :, :2])
    hi = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.clip(hi - lo, 0, None).prod(-1)
    area = lambda x: np.clip(x[:, 2:] - x[:, :2], 0, None).prod(-1)  # noqa: E731
    union = area(a)[:, None] + area(b)[None, :] - inter
    return inter / np.maximum(union, 1e-9)


@dataclass
class IdentityScores:
    idf1: float
    idp: float
    idr: float
    id_switches: int
    gt_ids: int
    predicted_ids: int
    gt_boxes: int
    predicted_boxes: int

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def identity_scores(gt: list[Frame], pred: list[Frame], iou: float = 0.5, partial: bool = False) -> IdentityScores:
    """Scores of predicted tracks against the ground truth, frame lists of equal length.
    partial: the ground truth leaves some people out, so predictions overlapping no labelled
    box (IoU under `iou` with all of them) are left out rather than counted as false."""
    if len(gt) != len(pred):
        raise ValueError(f"{len(gt)} ground-truth frames but {len(pred)} predicted")
    if partial:
        pred = [[(i, b) for i, b in p_fr if g_fr and box_iou(b, np.stack([g for _, g in g_fr])).max() >= iou]
                for g_fr, p_fr in zip(gt, pred)]
    pred = [[(i, b) for i, b in fr if i >= 0] for fr in pred]
    gt_ids = sorted({i for fr in gt for i, _ in fr})
    pr_ids = sorted({i for fr in pred for i, _ in fr})
    gi = {g: k for k, g in enumerate(gt_ids)}
    pi = {p: k for k, p in enumerate(pr_ids)}
    overlap = np.zeros((len(gt_ids), len(pr_ids)))
    switches = 0
    last: dict[int, int] = {}
    for g_fr, p_fr in zip(gt, pred):
        if not g_fr or not p_fr:
            continue
        m = box_iou(np.stack([b for _, b in g_fr]), np.stack([b for _, b in p_fr])) >= iou
        for r, c in zip(*np.nonzero(m)):
            overlap[gi[g_fr[r][0]], pi[p_fr[c][0]]] += 1
        # per-frame matching for the switches: previous pairs first, then the best IoU
        ious = box_iou(np.stack([b for _, b in g_fr]), np.stack([b for _, b in p_fr]))
        bonus = np.array([[1.0 if last.get(g) == p else 0.0 for p, _ in p_fr] for g, _ in g_fr])
        rows, cols = linear_sum_assignment(-(np.where(ious >= iou, ious + bonus, -1e3)))
        for r, c in zip(rows, cols):
            if ious[r, c] < iou:
                continue
            g, p = g_fr[r][0], p_fr[c][0]
            if g in last and last[g] != p:
                switches += 1
            last[g] = p
    n_gt = sum(len(fr) for fr in gt)
    n_pr = sum(len(fr) for fr in pred)
    idtp = 0.0
    if overlap.size:
        rows, cols = linear_sum_assignment(-overlap)
        idtp = float(overlap[rows, cols].sum())
    idfp, idfn = n_pr - idtp, n_gt - idtp
    return IdentityScores(idf1=2 * idtp / max(2 * idtp + idfp + idfn, 1e-9), idp=idtp / max(n_pr, 1),
                          idr=idtp / max(n_gt, 1), id_switches=switches, gt_ids=len(gt_ids),
                          predicted_ids=len(pr_ids), gt_boxes=n_gt, predicted_boxes=n_pr)


def track_stats(frames: list[list[tuple[int, float]]], confident: float = 0.4, long_frames: int = 20) -> dict:
    """Per-video track statistics from each frame's (track id, score) pairs: ids, median track
    length (frames with the id), and the share of confident detections in tracks at least
    `long_frames` long (people without an id count as in no track)."""
    lengths: dict[int, int] = {}
    for fr in frames:
        for tid, _ in fr:
            if tid >= 0:
                lengths[tid] = lengths.get(tid, 0) + 1
    sure = [(tid, s) for fr in frames for tid, s in fr if s >= confident]
    in_long = sum(1 for tid, _ in sure if tid >= 0 and lengths.get(tid, 0) >= long_frames)
    n_people = sum(len(fr) for fr in frames)
    return {"frames": len(frames), "people_per_frame": n_people / max(len(frames), 1),
            "track_ids": len(lengths), "median_track_length": float(np.median(list(lengths.values()))) if lengths else 0.0,
            "confident_in_long_tracks": in_long / max(len(sure), 1), "without_id": sum(
                1 for fr in frames for tid, _ in fr if tid < 0) / max(n_people, 1)}
