"""Multi-person grouping of heatmap peaks with part affinity fields (OpenPose's rtpose method).

For every limb type, every (a, b) candidate pair is scored by the line integral of the limb's
PAF along the segment; pairs are matched greedily (best first, each peak used once) and the
connections are assembled into people along the limb tree (skeleton.LIMBS_2D is ordered so
that a limb's first joint is always reached before its second).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import skeleton

__all__ = ["GroupingConfig", "score_limb_candidates", "match_greedy", "group_people"]

J2 = skeleton.NUM_JOINTS_2D


@dataclass(frozen=True)
class GroupingConfig:
    """Args:
        n_samples: points sampled along each candidate segment.
        dot_threshold: a sample counts as positive when PAF . direction exceeds this.
        min_fraction: share of positive samples a connection needs.
        max_length_frac: limbs longer than this fraction of the map height are penalised
            (OpenPose's distance prior).
        min_joints, min_score: people with fewer joints or a lower score are dropped.
    """

    n_samples: int = 10
    dot_threshold: float = 0.05
    min_fraction: float = 0.8
    max_length_frac: float = 0.5
    min_joints: int = 3
    min_score: float = 0.1


def _bilinear_flat(flat: np.ndarray, h: int, w: int, xy: np.ndarray, ch: np.ndarray) -> np.ndarray:
    """Bilinear samples of channel ch[i] at xy[i] from maps flattened to (C * h * w,)."""
    x = np.clip(xy[:, 0], 0.0, w - 1.0)
    y = np.clip(xy[:, 1], 0.0, h - 1.0)
    x0 = np.minimum(x.astype(np.int64), max(w - 2, 0))
    y0 = np.minimum(y.astype(np.int64), max(h - 2, 0))
    ax, ay = x - x0, y - y0
    base = ch * (h * w) + y0 * w + x0
    dx = 1 if w > 1 else 0
    dy = w if h > 1 else 0
    top = flat[base] * (1 - ax) + flat[base + dx] * ax
    bottom = flat[base + dy] * (1 - ax) + flat[base + dy + dx] * ax
    return top * (1 - ay) + bottom * ay


def score_limb_candidates(pafs: np.ndarray, peaks: list[np.ndarray],
                          cfg: GroupingConfig = GroupingConfig()) -> list[np.ndarray | None]:
    """Line-integral scores of all (a, b) candidate pairs of every limb, in one gather.

    Args:
        pafs: (36, h, w).
        peaks: 19 arrays (n_j, >=2) of candidate positions in map cells.
    Returns:
        per limb an (n_a, n_b) score array (-inf where a pair fails the positive-fraction
        test), or None when a side has no candidates.
    """
    _, h, w = pafs.shape
    t = (np.arange(cfg.n_samples) + 0.5) / cfg.n_samples
    limbs, pts, chans, units, lengths = [], [], [], [], []
    for limb, (a, b) in enumerate(skeleton.LIMBS_2D):
        pa, pb = peaks[a], peaks[b]
        if len(pa) == 0 or len(pb) == 0:
            continue
        vec = pb[None, :, :2] - pa[:, None, :2]                               # (na, nb, 2)
        length = np.linalg.norm(vec, axis=-1)
        p = pa[:, None, None, :2] + t[None, None, :, None] * vec[:, :, None, :]  # (na, nb, N, 2)
        limbs.append((limb, len(pa), len(pb)))
        pts.append(p.reshape(-1, 2))
        chans.append(np.full(p.shape[0] * p.shape[1] * p.shape[2], 2 * limb))
        units.append(vec / np.maximum(length, 1e-6)[..., None])
        lengths.append(length)
    out: list[np.ndarray | None] = [None] * skeleton.NUM_LIMBS_2D
    if not limbs:
        return out
    xy = np.concatenate(pts)
    ch = np.concatenate(chans)
    flat = np.ascontiguousarray(pafs, dtype=np.float32).reshape(-1)
    fx = _bilinear_flat(flat, h, w, xy, ch)
    fy = _bilinear_flat(flat, h, w, xy, ch + 1)
    start = 0
    for (limb, na, nb), unit, length in zip(limbs, units, lengths):
        stop = start + na * nb * cfg.n_samples
        field = np.stack([fx[start:stop], fy[start:stop]], -1).reshape(na, nb, cfg.n_samples, 2)
        start = stop
        dots = (field * unit[:, :, None, :]).sum(-1)                          # (na, nb, N)
        prior = np.minimum(cfg.max_length_frac * h / np.maximum(length, 1e-6) - 1.0, 0.0)
        score = dots.mean(-1) + prior
        ok = ((dots > cfg.dot_threshold).mean(-1) >= cfg.min_fraction) & (score > 0) & (length > 1e-6)
        out[limb] = np.where(ok, score, -np.inf)
    return out


def match_greedy(scores: np.ndarray) -> list[tuple[int, int, float]]:
    """Best-first one-to-one matching of a score matrix; -inf entries never match."""
    ii, jj = np.nonzero(np.isfinite(scores))
    vals = scores[ii, jj]
    used_i, used_j, out = set(), set(), []
    for k in np.argsort(-vals, kind="stable"):
        i, j = int(ii[k]), int(jj[k])
        if i in used_i or j in used_j:
            continue
        used_i.add(i)
        used_j.add(j)
        out.append((i, j, float(vals[k])))
    return out


def group_people(peaks: list[np.ndarray], pafs: np.ndarray,
                 cfg: GroupingConfig = GroupingConfig()) -> tuple[np.ndarray, np.ndarray]:
    """Assemble people from per-joint peaks and the PAFs.

    Args:
        peaks: 19 arrays (n_j, 3) of x, y (map cells) and score, from `find_peaks`.
        pafs: (36, h, w).
    Returns:
        kp (P, 19, 3) x, y in map cells and confidence (NaN, NaN, 0 when missing), and
        scores (P,): (sum of joint peak scores + sum of connection scores) / (19 + 18),
        i.e. about 1 for a fully visible, confident person. Sorted by score, highest first.
    """
    owner = [np.full(len(p), -1, dtype=np.int64) for p in peaks]   # person of each peak
    people: list[np.ndarray] = []                                    # peak index per joint
    conn_score: list[float] = []
    all_scores = score_limb_candidates(pafs, peaks, cfg)
    for limb, (a, b) in enumerate(skeleton.LIMBS_2D):
        scores = all_scores[limb]
        if scores is None:
            continue
        for ia, ib, s in match_greedy(scores):
            if owner[b][ib] >= 0:
                continue
            p = owner[a][ia]
            if p < 0:
                p = len(people)
                people.append(np.full(J2, -1, dtype=np.int64))
                conn_score.append(0.0)
                people[p][a] = ia
                owner[a][ia] = p
            if people[p][b] >= 0:
                continue
            people[p][b] = ib
            owner[b][ib] = p
            conn_score[p] += min(s, 1.0)

    kp = np.full((len(people), J2, 3), np.nan)
    kp[..., 2] = 0.0
    for p, idx in enumerate(people):
        for j in np.nonzero(idx >= 0)[0]:
            kp[p, j] = peaks[j][idx[j]]
    n_joints = (kp[..., 2] > 0).sum(1)
    scores = (kp[..., 2].sum(1) + np.asarray(conn_score)) / (J2 + skeleton.NUM_LIMBS_2D)
    keep = (n_joints >= cfg.min_joints) & (scores >= cfg.min_score)
    kp, scores = kp[keep], scores[keep]
    order = np.argsort(-scores, kind="stable")
    return kp[order], scores[order]
