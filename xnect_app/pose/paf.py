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

__all__ = ["GroupingConfig", "score_segments", "score_limb_candidates", "match_greedy", "group_people",
           "complete_people"]

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
    min_score: float = 0.2


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


def score_segments(pafs: np.ndarray, limbs: np.ndarray, a_xy: np.ndarray, b_xy: np.ndarray,
                   cfg: GroupingConfig = GroupingConfig()) -> np.ndarray:
    """Line-integral scores of segments a_xy[i] -> b_xy[i] (map cells) in the PAF of limb limbs[i].

    -inf where a segment fails the positive-fraction test (cfg.min_fraction of the cfg.n_samples
    samples with PAF . direction > cfg.dot_threshold), has no length or scores <= 0. The score is
    the mean PAF . direction plus OpenPose's penalty for limbs longer than cfg.max_length_frac of
    the map height.
    """
    n = len(limbs)
    if n == 0:
        return np.zeros(0)
    _, h, w = pafs.shape
    t = (np.arange(cfg.n_samples) + 0.5) / cfg.n_samples
    vec = b_xy[:, :2] - a_xy[:, :2]
    length = np.linalg.norm(vec, axis=-1)
    xy = (a_xy[:, None, :2] + t[None, :, None] * vec[:, None, :]).reshape(-1, 2)
    ch = np.repeat(2 * np.asarray(limbs, dtype=np.int64), cfg.n_samples)
    flat = np.ascontiguousarray(pafs, dtype=np.float32).reshape(-1)
    field = np.stack([_bilinear_flat(flat, h, w, xy, ch), _bilinear_flat(flat, h, w, xy, ch + 1)], -1)
    unit = vec / np.maximum(length, 1e-6)[:, None]
    dots = (field.reshape(n, cfg.n_samples, 2) * unit[:, None, :]).sum(-1)        # (n, N)
    prior = np.minimum(cfg.max_length_frac * h / np.maximum(length, 1e-6) - 1.0, 0.0)
    score = dots.mean(-1) + prior
    ok = ((dots > cfg.dot_threshold).mean(-1) >= cfg.min_fraction) & (score > 0) & (length > 1e-6)
    return np.where(ok, score, -np.inf)


def score_limb_candidates(pafs: np.ndarray, peaks: list[np.ndarray],
                          cfg: GroupingConfig = GroupingConfig()) -> list[np.ndarray | None]:
    """Line-integral scores (`score_segments`) of all (a, b) candidate pairs of every limb, in one
    gather.

    Args:
        pafs: (36, h, w).
        peaks: 19 arrays (n_j, >=2) of candidate positions in map cells.
    Returns:
        per limb an (n_a, n_b) score array (-inf where a pair fails), or None when a side has
        no candidates.
    """
    shapes, limbs, a_xy, b_xy = [], [], [], []
    for limb, (a, b) in enumerate(skeleton.LIMBS_2D):
        pa, pb = peaks[a], peaks[b]
        if len(pa) == 0 or len(pb) == 0:
            continue
        shapes.append((limb, len(pa), len(pb)))
        limbs.append(np.full(len(pa) * len(pb), limb))
        a_xy.append(np.repeat(pa[:, :2], len(pb), axis=0))
        b_xy.append(np.tile(pb[:, :2], (len(pa), 1)))
    out: list[np.ndarray | None] = [None] * skeleton.NUM_LIMBS_2D
    if not shapes:
        return out
    scores = score_segments(pafs, np.concatenate(limbs), np.concatenate(a_xy), np.concatenate(b_xy), cfg)
    start = 0
    for limb, na, nb in shapes:
        out[limb] = scores[start:start + na * nb].reshape(na, nb)
        start += na * nb
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


# Looser PAF test for joints added to a person that is already assembled.
COMPLETION_GROUPING = GroupingConfig(min_fraction=0.5)


def complete_people(kp: np.ndarray, candidates: list[np.ndarray], pafs: np.ndarray,
                    cfg: GroupingConfig = COMPLETION_GROUPING, rounds: int = 3, reach: float = 0.6,
                    min_reach: float = 1.5) -> np.ndarray:
    """Fill joints the grouping left missing from weaker heatmap peaks.

    A missing joint of a person takes the free candidate whose limb PAF best joins it to a joint
    the person has (either end of the limb; best pairs first, each candidate used once); joints
    found in one round can anchor the next. A bottom-up decoder loses a joint whenever its peak
    is under the threshold or one limb's PAF test fails; COCO OKS scores such a joint 0. A new
    joint lies within `reach` x the diagonal of the person's first joints (at least `min_reach`
    cells) of its anchor, so a small person does not grow a limb to something far away.

    Args:
        kp: (P, 19, 3) people in map cells (NaN, NaN, 0 where missing), as `group_people` gives.
        candidates: 19 arrays (n_j, 3) of peaks, usually `find_peaks` with a lower threshold
            than the grouping's (a superset of its peaks).
        pafs: (36, h, w).
    Returns:
        a copy of kp with the added joints (their confidence is their peak score).
    """
    kp = np.array(kp, dtype=np.float64, copy=True)
    if len(kp) == 0:
        return kp
    free = []
    for j, cand in enumerate(candidates):
        ok = np.ones(len(cand), dtype=bool)
        if len(cand):
            have = kp[kp[:, j, 2] > 0, j, :2]
            if len(have):
                d = np.abs(cand[None, :, :2] - have[:, None, :]).max(-1)
                ok &= ~(d < 1e-4).any(0)
        free.append(ok)
    # a limb reaches at most `reach` x the diagonal of the joints the person had to begin with
    xy = np.where((kp[..., 2] > 0)[..., None], kp[..., :2], np.nan)
    diag = np.hypot(*(np.nanmax(xy, 1) - np.nanmin(xy, 1)).T)
    max_length = np.minimum(np.maximum(reach * diag, min_reach), cfg.max_length_frac * pafs.shape[1])
    for _ in range(rounds):
        present = kp[..., 2] > 0                                            # (P, 19)
        person, limb, joint, cand_idx, a_xy, b_xy = [], [], [], [], [], []
        for forward in (True, False):
            for li, (a, b) in enumerate(skeleton.LIMBS_2D):
                src, dst = (a, b) if forward else (b, a)
                need = np.flatnonzero(present[:, src] & ~present[:, dst])
                idx = np.flatnonzero(free[dst])
                if not len(need) or not len(idx):
                    continue
                anchors, ends = kp[need, src, :2], candidates[dst][idx, :2]
                dist = np.linalg.norm(anchors[:, None] - ends[None], axis=-1)
                pi, ci = np.nonzero(dist <= max_length[need, None])
                if not len(pi):
                    continue
                person.append(need[pi])
                limb.append(np.full(len(pi), li))
                joint.append(np.full(len(pi), dst))
                cand_idx.append(idx[ci])
                a_xy.append(anchors[pi] if forward else ends[ci])
                b_xy.append(ends[ci] if forward else anchors[pi])
        if not person:
            break
        person, limb, joint, cand_idx = (np.concatenate(v) for v in (person, limb, joint, cand_idx))
        scores = score_segments(pafs, limb, np.concatenate(a_xy), np.concatenate(b_xy), cfg)
        added = False
        for k in np.argsort(-scores, kind="stable"):
            if not np.isfinite(scores[k]):
                break
            p, j, c = int(person[k]), int(joint[k]), int(cand_idx[k])
            if kp[p, j, 2] > 0 or not free[j][c]:
                continue
            kp[p, j] = candidates[j][c]
            free[j][c] = False
            added = True
        if not added:
            break
    return kp
