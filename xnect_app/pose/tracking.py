"""Identity tracking with per-track One Euro smoothing and bone lengths (spec §2.8).

Association as ByteTrack does it, on poses:
- every track predicts its box with a constant-velocity Kalman filter, and its joints move
  with the box;
- confident detections (score >= `high_score`) are matched first, to all live and lost tracks,
  on a similarity of 0.5 OKS + 0.5 box IoU (times a torso colour term when frames are given);
  then the other detections extend the tracks still unmatched, on a stricter gate;
- a lost track (no match) is kept `max_lost_s` seconds and can be found again by motion, and
  by appearance (the torso's colour histogram) near where it was; a re-found track restarts
  its smoothing filters but keeps its bone lengths;
- a confident detection left over starts a tentative track, which gets an id (1, 2, ...) once
  matched in `confirm_frames` frames (at once in a stream's first frame). People without a
  confirmed track are returned with track_id -1.
A track carries One Euro filters for 2D, root-relative 3D and the root, and its bone lengths:
the median of the raw 3D bone lengths over its first `rescale_frames` frames with 3D.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

import cv2
import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import skeleton
from ..types import Intrinsics, Person
from .ik import IKConfig, SkeletonFitter
from .kinematics import DEFAULT_BONE_LENGTHS_MM, bone_lengths_of
from .one_euro import ONE_EURO_2D, ONE_EURO_3D, OneEuroFilter, filter_many

__all__ = ["Track", "Tracker", "TrackerConfig", "person_scale"]

LOG = logging.getLogger(__name__)
ROOT = skeleton.ROOT_3D
_NOMINAL_HEIGHT_MM = 1700.0
# OKS falloff per 2D joint: COCO's sigmas, the head top and neck like the shoulders.
_SIGMAS = np.full(skeleton.NUM_JOINTS_2D, 0.079)
for _c, _ours in enumerate(skeleton.COCO17_FROM_2D):
    _SIGMAS[_ours] = skeleton.COCO_SIGMAS[_c]
_TORSO = [skeleton.JOINTS_2D.index(n) for n in ("r_shoulder", "l_shoulder", "l_hip", "r_hip")]


def _get(p: Any, key: str) -> Any:
    return p.get(key) if isinstance(p, dict) else getattr(p, key, None)


def person_scale(kp2d: np.ndarray) -> float:
    """Diagonal of the box around the visible 2D joints (at least 1 pixel)."""
    vis = kp2d[:, 2] > 0
    if vis.sum() < 2:
        return 1.0
    xy = kp2d[vis, :2]
    return max(float(np.linalg.norm(xy.max(0) - xy.min(0))), 1.0)


def joint_boxes(kp2d: np.ndarray) -> np.ndarray:
    """cx, cy, w, h of each of (N, J, 3) people's visible joints, grown by 10% (at least 8 px a
    side) -> (N, 4); (0, 0, 8, 8) for one with no joint seen."""
    xy = kp2d[..., :2]
    vis = ((kp2d[..., 2] > 0) & np.isfinite(xy).all(-1))[..., None]
    lo = np.where(vis, xy, np.inf).min(1)
    hi = np.where(vis, xy, -np.inf).max(1)
    seen = vis.any(1)
    centre = np.where(seen, 0.5 * (lo + hi), 0.0)
    size = np.where(seen, np.maximum((hi - lo) * 1.1, 8.0), 8.0)
    return np.concatenate([centre, size], 1)


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of cx, cy, w, h boxes: (A, 4) x (B, 4) -> (A, B)."""
    a0, a1 = a[:, None, :2] - a[:, None, 2:] / 2, a[:, None, :2] + a[:, None, 2:] / 2
    b0, b1 = b[None, :, :2] - b[None, :, 2:] / 2, b[None, :, :2] + b[None, :, 2:] / 2
    inter = np.clip(np.minimum(a1, b1) - np.maximum(a0, b0), 0, None).prod(-1)
    union = a[:, None, 2:].prod(-1) + b[None, :, 2:].prod(-1) - inter
    return inter / np.maximum(union, 1e-9)


def torso_histogram(image: np.ndarray, kp2d: np.ndarray, bins: tuple[int, int] = (16, 4)) -> np.ndarray | None:
    """Normalised hue-saturation histogram of the torso (shoulders to hips), None if not seen."""
    pts = kp2d[_TORSO]
    seen = (pts[:, 2] > 0) & np.isfinite(pts[:, :2]).all(1)
    if seen.sum() < 3:
        return None
    xy = pts[seen, :2]
    lo = np.floor(xy.min(0)).astype(int)
    hi = np.ceil(xy.max(0)).astype(int) + 1
    h, w = image.shape[:2]
    lo, hi = np.clip(lo, 0, [w, h]), np.clip(hi, 0, [w, h])
    if (hi - lo).min() < 3:
        return None
    roi = image[lo[1]:hi[1], lo[0]:hi[0]]
    if roi.shape[0] * roi.shape[1] > 4096:  # enough pixels for a histogram, at a fixed cost
        f = (4096 / (roi.shape[0] * roi.shape[1])) ** 0.5
        roi = cv2.resize(roi, None, fx=f, fy=f, interpolation=cv2.INTER_AREA)
    hsv = cv2.cvtColor(roi, cv2.COLOR_BGR2HSV)
    hist = cv2.calcHist([hsv], [0, 1], None, list(bins), [0, 180, 0, 256]).ravel()
    total = hist.sum()
    return hist / total if total > 0 else None


def appearance_similarity(a: np.ndarray | None, b: np.ndarray | None) -> float:
    """Bhattacharyya coefficient of two histograms (1 same colours, 0 disjoint); 1 if unknown."""
    if a is None or b is None:
        return 1.0
    return float(np.sqrt(a * b).sum())


def _appearance_matrix(a: list[np.ndarray | None], b: list[np.ndarray | None]) -> tuple[np.ndarray, np.ndarray]:
    """appearance_similarity of every pair (len(a), len(b)), and which pairs have both histograms."""
    ka, kb = np.array([h is not None for h in a], bool), np.array([h is not None for h in b], bool)
    sim = np.ones((len(a), len(b)))
    if ka.any() and kb.any():
        sim[np.ix_(ka, kb)] = (np.sqrt(np.stack([h for h in a if h is not None]).astype(np.float64))
                               @ np.sqrt(np.stack([h for h in b if h is not None]).astype(np.float64)).T)
    return sim, ka[:, None] & kb[None, :]


class BoxKalman:
    """Constant-velocity Kalman filter on a box's cx, cy, w, h; noise scaled with its size."""

    _Q = np.diag(np.square([0.05] * 4 + [0.02] * 4))   # process noise per unit of box size squared
    _R = np.diag(np.square([0.05] * 4))                # measurement noise, likewise

    def __init__(self, box: np.ndarray):
        self.x = np.concatenate([box, np.zeros(4)])
        s = max(box[2], box[3])
        self.P = np.diag(np.square([0.1 * s] * 4 + [0.3 * s] * 4))

    def predict(self, steps: float = 1.0) -> np.ndarray:
        """The box `steps` frames ahead (the state is not changed), at least 8 px a side."""
        box = self.x[:4] + steps * self.x[4:]
        box[2:] = np.maximum(box[2:], 8.0)
        return box

    def step(self) -> None:
        s = max(self.x[2], self.x[3])
        self.x[:4] += self.x[4:]
        self.x[2:4] = np.maximum(self.x[2:4], 8.0)
        p = self.P                                       # F P F^T with F = [[I, I], [0, I]]
        p[:4] += p[4:]
        p[:, :4] += p[:, 4:]
        p += (s * s) * self._Q

    @staticmethod
    def update_many(filters: list["BoxKalman"], boxes: np.ndarray) -> None:
        """Each filter's update with its measured box ((F, 4)), in one vectorised step."""
        if not filters:
            return
        p = np.stack([f.P for f in filters])
        x = np.stack([f.x for f in filters])
        s = np.maximum(boxes[:, 2], boxes[:, 3])
        gain = p[:, :, :4] @ np.linalg.inv(p[:, :4, :4] + (s * s)[:, None, None] * BoxKalman._R)   # H = [I 0]
        x = x + (gain @ (boxes - x[:, :4])[..., None])[..., 0]
        p = p - gain @ p[:, :4]
        for k, f in enumerate(filters):
            f.x, f.P = x[k], p[k]

    def restart(self, box: np.ndarray) -> None:
        self.__init__(box)


@dataclass
class TrackerConfig:
    """Association settings (every tool's --track-* options).

    high_score: detections this sure are matched first and may start tracks.
    match_similarity: least similarity (0..1, see Tracker._similarity) of a first-pass match.
    low_match_similarity: least similarity of a low-score detection's match (second pass).
    refind_similarity: least appearance similarity to find a lost track again far from its
        predicted box (near it, by motion alone).
    max_lost_s: seconds a lost track is kept; max_age, if given, counts frames instead.
    confirm_frames: matched frames before a new track gets an id.
    use_colour: compare torso colours (needs the frames: `update(..., image=)`).
    """
    high_score: float = 0.4
    match_similarity: float = 0.2
    low_match_similarity: float = 0.4
    refind_similarity: float = 0.75
    max_lost_s: float = 1.5
    max_age: int | None = None
    confirm_frames: int = 3
    appearance_weight: float = 0.5
    use_colour: bool = True


@dataclass(eq=False)  # tracks are compared by identity
class Track:
    track_id: int                    # -1 while tentative
    kp2d: np.ndarray                 # (19, 3) last raw detection
    time_s: float
    root_mm: np.ndarray              # (3,) last raw root, NaN if unknown
    filter2d: OneEuroFilter
    filter3d: OneEuroFilter          # the root-relative joints and, as a 22nd row, the root
    box: BoxKalman
    misses: int = 0
    hits: int = 1
    lost_since: float = 0.0
    appearance: np.ndarray | None = None
    bone_samples: list[np.ndarray] = field(default_factory=list)
    bone_lengths: np.ndarray | None = None
    key: int = 0                     # internal identity, tentative tracks included

    @property
    def confirmed(self) -> bool:
        return self.track_id >= 0


def _predicted(tracks: list[Track]) -> tuple[np.ndarray, np.ndarray]:
    """Each track's box predicted for the next frame it may be seen in (misses + 1 ahead), (T, 4),
    and its last joints (T, J, 3) moved and scaled with it (NaN where never seen)."""
    box = np.stack([t.box.predict(t.misses + 1.0) for t in tracks])
    kp = np.stack([t.kp2d for t in tracks])
    ref = joint_boxes(kp)
    out = kp.copy()
    scale = box[:, None, 2:] / np.maximum(ref[:, None, 2:], 1e-6)
    out[..., :2] = (kp[..., :2] - ref[:, None, :2]) * scale + box[:, None, :2]
    return box, out


class Tracker:
    """Args:
        max_age: frames a lost track survives (default: TrackerConfig.max_lost_s seconds).
        gate: kept for compatibility; first-pass matches need 1 - gate similarity at most... see
            TrackerConfig.match_similarity (used when config is None: 1 - gate when gate < 1).
        min_common: fewest joints visible in both for an OKS comparison.
        depth_weight: unused (kept so old callers work); depth is not compared.
        rescale_frames: frames of raw 3D whose median bone lengths become the track's.
        smooth: apply the One Euro filters (off: raw values pass through, ids still assigned).
        one_euro_2d, one_euro_3d: filter parameters (see one_euro.py for the units).
        freq: frame rate assumed when no timestamps are given.
        ik: skeleton-fit settings used when `update(..., fit_skeleton=True)`.
        config: association settings (TrackerConfig).
    """

    def __init__(self, max_age: int | None = None, gate: float | None = None, min_common: int = 2,
                 depth_weight: float = 0.0, rescale_frames: int = 2, smooth: bool = True,
                 one_euro_2d: dict | None = None, one_euro_3d: dict | None = None, freq: float = 30.0,
                 ik: IKConfig = IKConfig(), config: TrackerConfig | None = None):
        self.cfg = replace(config) if config is not None else TrackerConfig()  # own copy
        if max_age is not None:
            self.cfg.max_age = max_age
        if gate is not None and gate < 1:
            self.cfg.match_similarity = 1.0 - gate
        self.min_common, self.rescale_frames, self.smooth = min_common, rescale_frames, smooth
        self.one_euro_2d = dict(ONE_EURO_2D if one_euro_2d is None else one_euro_2d)
        self.one_euro_3d = dict(ONE_EURO_3D if one_euro_3d is None else one_euro_3d)
        self.freq = freq
        self.fitter = SkeletonFitter(ik, max_age=max(self.cfg.max_age or 0, round(self.cfg.max_lost_s * freq)))
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._next_key = 1
        self._frame = 0
        self._last_time: float | None = None

    def reset(self) -> None:
        self.tracks.clear()
        self.fitter.reset()
        self._next_id = 1
        self._next_key = 1
        self._frame = 0
        self._last_time = None

    # -- matching ---------------------------------------------------------------------------
    def _similarity(self, dets: list[dict[str, Any]], tracks: list[Track]) -> np.ndarray:
        """(T, D) similarity: 0.4 OKS of the predicted joints + 0.3 IoU of the boxes + 0.3 nearness
        of their centres, times a colour term; for lost tracks, at least the colour similarity
        near the predicted box."""
        if not tracks or not dets:
            return np.zeros((len(tracks), len(dets)))
        tbox, tkp = _predicted(tracks)                                          # (T, 4), (T, 19, 3)
        dkp = np.stack([d["kp2d"] for d in dets])                               # (D, 19, 3)
        dbox = np.stack([d["box"] for d in dets])
        both = (tkp[:, None, :, 2] > 0) & (dkp[None, :, :, 2] > 0)               # (T, D, 19)
        both &= np.isfinite(tkp[:, None, :, :2]).all(-1) & np.isfinite(dkp[None, :, :, :2]).all(-1)
        d2 = np.where(both, ((np.nan_to_num(tkp[:, None, :, :2]) - np.nan_to_num(dkp[None, :, :, :2])) ** 2).sum(-1), 0.0)
        area = 0.5 * (tbox[:, None, 2] * tbox[:, None, 3] + dbox[None, :, 2] * dbox[None, :, 3]) / 1.21
        oks_j = np.exp(-d2 / (2 * area[..., None] * (2 * _SIGMAS) ** 2 + 1e-9))
        n = both.sum(-1)
        oks = np.where(n >= self.min_common, (oks_j * both).sum(-1) / np.maximum(n, 1), 0.0)
        dist = np.linalg.norm(tbox[:, None, :2] - dbox[None, :, :2], axis=-1)
        size = np.hypot(tbox[:, None, 2], tbox[:, None, 3]) * (1.0 + 0.1 * np.array([t.misses for t in tracks]))[:, None]
        near = np.exp(-0.5 * (dist / (0.5 * size)) ** 2)  # keeps fast or just-started people
        sim = 0.4 * oks + 0.3 * _iou(tbox, dbox) + 0.3 * near
        app, known = _appearance_matrix([t.appearance for t in tracks], [d["appearance"] for d in dets])
        w = self.cfg.appearance_weight
        sim = sim * ((1 - w) + w * app)
        lost = np.array([t.misses > 0 for t in tracks])
        if lost.any():
            # far from its prediction a lost person can only be recognised by its colours
            height = np.maximum(tbox[:, None, 3], dbox[None, :, 3])
            near = dist < (1.0 + 0.2 * np.array([t.misses for t in tracks]))[:, None] * height
            refind = lost[:, None] & near & known & (app >= self.cfg.refind_similarity)
            sim = np.where(refind, np.maximum(sim, self.cfg.match_similarity + (app - self.cfg.refind_similarity)), sim)
        return sim

    @staticmethod
    def _match(sim: np.ndarray, least: float) -> list[tuple[int, int]]:
        if sim.size == 0:
            return []
        ok = sim >= least
        if not ok.any():
            return []
        rows, cols = linear_sum_assignment(np.where(ok, -sim, 1e6))
        return [(r, c) for r, c in zip(rows, cols) if ok[r, c]]

    # -- update -----------------------------------------------------------------------------
    def update(self, people: list[Any], timestamp: float | None = None,
               intrinsics: Intrinsics | None = None, fit_skeleton: bool = False,
               image: np.ndarray | None = None) -> list[Person]:
        """Assign track ids and smooth one frame's people.

        Args:
            people: dicts or objects with kp2d (19, 3) and optionally kp3d_rel_mm (21, 3),
                kp3d_cam_mm (21, 3) and score.
            timestamp: seconds; frames are 1 / freq apart when None.
            intrinsics: used to express 2D speeds in decimetres (One Euro units).
            fit_skeleton: fit the kinematic skeleton (ik.py) to the smoothed 3D; the people
                then carry joint_angles and the fitted joints as kp3d_rel_mm / kp3d_cam_mm.
            image: the frame (BGR), for the torso colours that find lost people again.
        Returns:
            One Person per detection, in input order, with track_id (-1 until its track is
            confirmed), smoothed 2D/3D and the track's bone lengths (None until
            `rescale_frames` frames with 3D were seen).
        """
        time_s = self._frame / self.freq if timestamp is None else float(timestamp)
        first_frame = self._frame == 0
        self._frame += 1
        image = image if self.cfg.use_colour else None
        dets = [self._as_arrays(p, image) for p in people]
        if dets:
            for d, box in zip(dets, joint_boxes(np.stack([d["kp2d"] for d in dets]))):
                d["box"] = box
        for t in self.tracks.values():
            t.box.step()
        live = list(self.tracks.values())
        sim = self._similarity(dets, live)
        high = [k for k, d in enumerate(dets) if d["score"] >= self.cfg.high_score]
        low = [k for k, d in enumerate(dets) if d["score"] < self.cfg.high_score]
        matched: dict[int, Track] = {}
        # pass 1: confident detections, every track
        for r, c in self._match(sim[:, high], self.cfg.match_similarity):
            matched[high[c]] = live[r]
        # pass 2: the other detections, the tracks still free
        taken = {id(t) for t in matched.values()}
        free = [r for r, t in enumerate(live) if id(t) not in taken]
        for r, c in self._match(sim[np.ix_(free, low)], self.cfg.low_match_similarity):
            matched[low[c]] = live[free[r]]
        tracked: dict[int, Track] = {}
        box_updates: list[tuple[BoxKalman, np.ndarray]] = []   # Kalman updates, made together below
        for k, det in enumerate(dets):
            track = matched.get(k)
            if track is not None:
                self._advance(track, det, time_s, box_updates)
            elif det["score"] >= self.cfg.high_score:
                track = self._new_track(det, time_s, confirmed=first_frame)
            if track is not None:
                tracked[k] = track
        if box_updates:
            BoxKalman.update_many([b for b, _ in box_updates], np.stack([m for _, m in box_updates]))
        emitted = self._emit(list(tracked.values()), [dets[k] for k in tracked], time_s, intrinsics)
        by_det = dict(zip(tracked, emitted))
        out = [by_det[k] if k in by_det else self._emit_untracked(det) for k, det in enumerate(dets)]
        if fit_skeleton:
            self._fit([p for p in out if p.track_id >= 0])
        seen = {id(t) for t in matched.values()}
        for key in list(self.tracks):
            t = self.tracks[key]
            if id(t) in seen or t.time_s == time_s:
                continue
            if t.misses == 0:
                t.lost_since = time_s
            t.misses += 1
            if self._expired(t, time_s):
                LOG.debug("track %d ended", t.track_id)
                del self.tracks[key]
        self._last_time = time_s
        return out

    def _expired(self, t: Track, time_s: float) -> bool:
        if not t.confirmed:
            return True  # a tentative track must be matched in consecutive frames
        if self.cfg.max_age is not None:
            return t.misses > self.cfg.max_age
        return time_s - t.lost_since > self.cfg.max_lost_s

    @staticmethod
    def _as_arrays(p: Any, image: np.ndarray | None) -> dict[str, Any]:
        kp2d = np.asarray(_get(p, "kp2d"), dtype=np.float64).reshape(skeleton.NUM_JOINTS_2D, 3)
        rel = _get(p, "kp3d_rel_mm")
        cam = _get(p, "kp3d_cam_mm")
        rel = np.full((skeleton.NUM_JOINTS_3D, 3), np.nan) if rel is None else np.asarray(rel, dtype=np.float64)
        root = np.full(3, np.nan) if cam is None else np.asarray(cam, dtype=np.float64)[ROOT]
        score = _get(p, "score")
        return {"kp2d": kp2d, "kp3d_rel_mm": rel, "root_mm": root,
                "score": float(np.nanmean(kp2d[:, 2]) if score is None else score),
                "appearance": torso_histogram(image, kp2d) if image is not None else None}

    def _new_track(self, det: dict[str, Any], time_s: float, confirmed: bool) -> Track:
        track = Track(track_id=-1, kp2d=det["kp2d"].copy(), time_s=time_s, root_mm=det["root_mm"].copy(),
                      filter2d=OneEuroFilter(freq=self.freq, **self.one_euro_2d),
                      filter3d=OneEuroFilter(freq=self.freq, **self.one_euro_3d),
                      box=BoxKalman(det["box"]), appearance=det["appearance"], key=self._next_key)
        self._next_key += 1
        self.tracks[track.key] = track
        if confirmed or self.cfg.confirm_frames <= 1:
            self._confirm(track)
        self._collect_bones(track, det)
        return track

    def _confirm(self, track: Track) -> None:
        track.track_id = self._next_id
        self._next_id += 1
        LOG.debug("track %d started", track.track_id)

    def _advance(self, track: Track, det: dict[str, Any], time_s: float,
                 box_updates: list[tuple[BoxKalman, np.ndarray]]) -> None:
        if track.misses >= 3:  # found again: smoothing restarts from here, bone lengths stay
            for f in (track.filter2d, track.filter3d):
                f.reset()
            track.box.restart(det["box"])
        else:
            box_updates.append((track.box, det["box"]))
        # Joints missing now keep their last position, so the next frame can still match them.
        track.kp2d = np.where((det["kp2d"][:, 2] > 0)[:, None], det["kp2d"], track.kp2d)
        track.time_s = time_s
        track.root_mm = np.where(np.isfinite(det["root_mm"]), det["root_mm"], track.root_mm)
        track.misses = 0
        track.hits += 1
        if det["appearance"] is not None and det["score"] >= self.cfg.high_score:
            track.appearance = det["appearance"] if track.appearance is None else \
                0.9 * track.appearance + 0.1 * det["appearance"]
        if not track.confirmed and track.hits >= self.cfg.confirm_frames:
            self._confirm(track)
        self._collect_bones(track, det)

    def _collect_bones(self, track: Track, det: dict[str, np.ndarray]) -> None:
        n_known = np.isfinite(det["kp3d_rel_mm"]).all(-1).sum()
        if track.bone_lengths is not None or n_known <= skeleton.NUM_JOINTS_3D // 2:
            return
        track.bone_samples.append(bone_lengths_of(det["kp3d_rel_mm"]))
        if len(track.bone_samples) >= self.rescale_frames:
            with np.errstate(all="ignore"):
                bones = np.nanmedian(np.stack(track.bone_samples), 0)
            known = np.isfinite(bones) & (DEFAULT_BONE_LENGTHS_MM > 0)
            ratio = np.median(bones[known] / DEFAULT_BONE_LENGTHS_MM[known]) if known.any() else 1.0
            track.bone_lengths = np.where(np.isfinite(bones), bones, DEFAULT_BONE_LENGTHS_MM * ratio)
            track.bone_lengths[ROOT] = 0.0
            track.bone_samples.clear()

    def _emit(self, tracks: list[Track], dets: list[dict[str, np.ndarray]], time_s: float,
              intrinsics: Intrinsics | None) -> list[Person]:
        """The tracked people of this frame, smoothed (all of them in one filter step)."""
        if not tracks:
            return []
        kp2d = np.stack([d["kp2d"] for d in dets])                              # (T, 19, 3)
        rel_root = np.stack([np.vstack([d["kp3d_rel_mm"], d["root_mm"]]) for d in dets])  # (T, 22, 3)
        if self.smooth:
            xy = np.where((kp2d[..., 2] > 0)[..., None], kp2d[..., :2], np.nan)
            scale = np.array([self._px_per_dm(d["kp2d"], d["root_mm"], intrinsics) for d in dets])
            kp2d[..., :2] = filter_many([t.filter2d for t in tracks], xy, time_s, scale[:, None, None])
            rel_root = filter_many([t.filter3d for t in tracks], rel_root, time_s)
        rel, root = rel_root[:, :-1], rel_root[:, -1:]
        cam = rel + root
        return [Person(track_id=t.track_id, score=d["score"], kp2d=kp2d[k], kp3d_rel_mm=rel[k], kp3d_cam_mm=cam[k],
                       bone_lengths_mm=None if t.bone_lengths is None else t.bone_lengths.copy())
                for k, (t, d) in enumerate(zip(tracks, dets))]

    @staticmethod
    def _emit_untracked(det: dict[str, Any]) -> Person:
        rel = det["kp3d_rel_mm"].copy()
        return Person(track_id=-1, score=det["score"], kp2d=det["kp2d"].copy(), kp3d_rel_mm=rel,
                      kp3d_cam_mm=rel + det["root_mm"], bone_lengths_mm=None)

    def _fit(self, people: list[Person]) -> None:
        """Skeleton fit of every person with enough 3D (camera space when the root is known)."""
        todo = [p for p in people if np.isfinite(p.kp3d_rel_mm).all(-1).sum() >= skeleton.NUM_JOINTS_3D // 2]
        if not todo:
            return
        has_cam = np.array([np.isfinite(p.kp3d_cam_mm[ROOT]).all() for p in todo])
        target = np.stack([p.kp3d_cam_mm if c else p.kp3d_rel_mm for p, c in zip(todo, has_cam)])
        bones = np.stack([p.bone_lengths_mm if p.bone_lengths_mm is not None
                          else np.full(skeleton.NUM_JOINTS_3D, np.nan) for p in todo])
        res = self.fitter.fit([p.track_id for p in todo], target, bones)
        for k, p in enumerate(todo):
            p.joint_angles = res.angles[k]
            p.bone_lengths_mm = bone_lengths_of(res.joints[k])
            p.kp3d_rel_mm = res.joints[k] - res.joints[k, ROOT]
            p.kp3d_cam_mm = res.joints[k] if has_cam[k] else np.full_like(res.joints[k], np.nan)

    @staticmethod
    def _px_per_dm(kp2d: np.ndarray, root: np.ndarray, intrinsics: Intrinsics | None) -> float:
        """Pixels spanned by 100 mm at the person's depth (One Euro speed unit for 2D)."""
        if intrinsics is not None and np.isfinite(root[2]) and root[2] > 0:
            return intrinsics.fx * 100.0 / root[2]
        vis = kp2d[:, 2] > 0
        if vis.sum() < 2:
            return 10.0
        height = np.ptp(kp2d[vis, 1])
        return max(height * 100.0 / _NOMINAL_HEIGHT_MM, 1.0)
