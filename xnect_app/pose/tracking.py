"""Identity tracking with per-track One Euro smoothing and bone lengths (spec §2.8).

Each frame, detections are matched to live tracks with the Hungarian algorithm on
    cost = mean 2D distance over joints visible in both (track position predicted with its
           velocity) / person scale  +  depth_weight * |root depth difference| / 1 m,
pairs above `gate` or with fewer than `min_common` shared joints are never matched.
Unmatched tracks survive `max_age` frames; unmatched detections start new tracks with ids
from the tracker's own counter (1, 2, ...). A track carries One Euro filters for 2D, for
root-relative 3D and for the root position, and its bone lengths: the median of the raw 3D
bone lengths over its first `rescale_frames` frames with 3D (XNect's RescaleFrameNum = 2).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy.optimize import linear_sum_assignment

from .. import skeleton
from ..types import Intrinsics, Person
from .ik import IKConfig, SkeletonFitter
from .kinematics import DEFAULT_BONE_LENGTHS_MM, bone_lengths_of
from .one_euro import ONE_EURO_2D, ONE_EURO_3D, OneEuroFilter

__all__ = ["Track", "Tracker", "person_scale"]

LOG = logging.getLogger(__name__)
ROOT = skeleton.ROOT_3D
_NOMINAL_HEIGHT_MM = 1700.0


def _get(p: Any, key: str) -> Any:
    return p.get(key) if isinstance(p, dict) else getattr(p, key, None)


def person_scale(kp2d: np.ndarray) -> float:
    """Diagonal of the box around the visible 2D joints (at least 1 pixel)."""
    vis = kp2d[:, 2] > 0
    if vis.sum() < 2:
        return 1.0
    xy = kp2d[vis, :2]
    return max(float(np.linalg.norm(xy.max(0) - xy.min(0))), 1.0)


@dataclass
class Track:
    track_id: int
    kp2d: np.ndarray                 # (19, 3) last raw detection
    velocity: np.ndarray             # (19, 2) px per second, 0 where unknown
    time_s: float
    root_mm: np.ndarray              # (3,) last raw root, NaN if unknown
    filter2d: OneEuroFilter
    filter3d: OneEuroFilter
    filter_root: OneEuroFilter
    misses: int = 0
    hits: int = 1
    bone_samples: list[np.ndarray] = field(default_factory=list)
    bone_lengths: np.ndarray | None = None

    def predicted(self, time_s: float) -> np.ndarray:
        out = self.kp2d.copy()
        out[:, :2] += self.velocity * (time_s - self.time_s)
        return out


class Tracker:
    """Args:
        max_age: frames a track survives without a match.
        gate: largest matching cost (about the mean joint distance in person sizes).
        min_common: fewest joints visible in both to compare a track and a detection.
        depth_weight: cost per metre of root depth difference (0 turns the 3D term off).
        rescale_frames: frames of raw 3D whose median bone lengths become the track's.
        smooth: apply the One Euro filters (off: raw values pass through, ids still assigned).
        one_euro_2d, one_euro_3d: filter parameters (see one_euro.py for the units).
        freq: frame rate assumed when no timestamps are given.
        ik: skeleton-fit settings used when `update(..., fit_skeleton=True)`.
    """

    def __init__(self, max_age: int = 5, gate: float = 0.5, min_common: int = 2,
                 depth_weight: float = 0.3, rescale_frames: int = 2, smooth: bool = True,
                 one_euro_2d: dict | None = None, one_euro_3d: dict | None = None, freq: float = 30.0,
                 ik: IKConfig = IKConfig()):
        self.max_age, self.gate, self.min_common = max_age, gate, min_common
        self.depth_weight, self.rescale_frames, self.smooth = depth_weight, rescale_frames, smooth
        self.one_euro_2d = dict(ONE_EURO_2D if one_euro_2d is None else one_euro_2d)
        self.one_euro_3d = dict(ONE_EURO_3D if one_euro_3d is None else one_euro_3d)
        self.freq = freq
        self.fitter = SkeletonFitter(ik, max_age=max_age)
        self.tracks: dict[int, Track] = {}
        self._next_id = 1
        self._frame = 0

    def reset(self) -> None:
        self.tracks.clear()
        self.fitter.reset()
        self._next_id = 1
        self._frame = 0

    # -- matching ---------------------------------------------------------------------------
    def _costs(self, dets: list[dict[str, np.ndarray]], tracks: list[Track], time_s: float) -> np.ndarray:
        cost = np.full((len(tracks), len(dets)), np.inf)
        if not tracks or not dets:
            return cost
        pred = np.stack([t.predicted(time_s) for t in tracks])          # (T, 19, 3)
        det2d = np.stack([d["kp2d"] for d in dets])                        # (D, 19, 3)
        both = (pred[:, None, :, 2] > 0) & (det2d[None, :, :, 2] > 0)     # (T, D, 19)
        dist = np.linalg.norm(pred[:, None, :, :2] - det2d[None, :, :, :2], axis=-1)
        n = both.sum(-1)
        mean = np.where(both, np.nan_to_num(dist), 0.0).sum(-1) / np.maximum(n, 1)
        scale = 0.5 * (np.array([person_scale(t.kp2d) for t in tracks])[:, None]
                       + np.array([person_scale(d["kp2d"]) for d in dets])[None, :])
        cost = mean / scale
        if self.depth_weight > 0:
            tz = np.array([t.root_mm[2] for t in tracks])[:, None]
            dz = np.array([d["root_mm"][2] for d in dets])[None, :]
            cost = cost + self.depth_weight * np.nan_to_num(np.abs(tz - dz) / 1000.0)
        return np.where((n >= self.min_common) & (cost <= self.gate), cost, np.inf)

    def _match(self, cost: np.ndarray) -> list[tuple[int, int]]:
        if cost.size == 0 or not np.isfinite(cost).any():
            return []
        rows, cols = linear_sum_assignment(np.where(np.isfinite(cost), cost, 1e6))
        return [(r, c) for r, c in zip(rows, cols) if np.isfinite(cost[r, c])]

    # -- update -----------------------------------------------------------------------------
    def update(self, people: list[Any], timestamp: float | None = None,
               intrinsics: Intrinsics | None = None, fit_skeleton: bool = False) -> list[Person]:
        """Assign track ids and smooth one frame's people.

        Args:
            people: dicts or objects with kp2d (19, 3) and optionally kp3d_rel_mm (21, 3),
                kp3d_cam_mm (21, 3) and score.
            timestamp: seconds; frames are 1 / freq apart when None.
            intrinsics: used to express 2D speeds in decimetres (One Euro units).
            fit_skeleton: fit the kinematic skeleton (ik.py) to the smoothed 3D; the people
                then carry joint_angles and the fitted joints as kp3d_rel_mm / kp3d_cam_mm.
        Returns:
            One Person per detection, in input order, with track_id, smoothed 2D/3D and the
            track's bone lengths (None until `rescale_frames` frames with 3D were seen).
        """
        time_s = self._frame / self.freq if timestamp is None else float(timestamp)
        self._frame += 1
        dets = [self._as_arrays(p) for p in people]
        ids = list(self.tracks)
        live = [self.tracks[i] for i in ids]
        pairs = self._match(self._costs(dets, live, time_s))
        matched_det = {c: live[r] for r, c in pairs}
        out: list[Person] = []
        for k, det in enumerate(dets):
            track = matched_det.get(k)
            if track is None:
                track = self._new_track(det, time_s)
            else:
                self._advance(track, det, time_s)
            out.append(self._emit(track, det, time_s, intrinsics))
        if fit_skeleton:
            self._fit(out)
        seen = {t.track_id for t in matched_det.values()} | {p.track_id for p in out}
        for tid in ids:
            if tid not in seen:
                self.tracks[tid].misses += 1
                if self.tracks[tid].misses > self.max_age:
                    LOG.debug("track %d ended", tid)
                    del self.tracks[tid]
        return out

    @staticmethod
    def _as_arrays(p: Any) -> dict[str, np.ndarray]:
        kp2d = np.asarray(_get(p, "kp2d"), dtype=np.float64).reshape(skeleton.NUM_JOINTS_2D, 3)
        rel = _get(p, "kp3d_rel_mm")
        cam = _get(p, "kp3d_cam_mm")
        rel = np.full((skeleton.NUM_JOINTS_3D, 3), np.nan) if rel is None else np.asarray(rel, dtype=np.float64)
        root = np.full(3, np.nan) if cam is None else np.asarray(cam, dtype=np.float64)[ROOT]
        score = _get(p, "score")
        return {"kp2d": kp2d, "kp3d_rel_mm": rel, "root_mm": root,
                "score": float(np.nanmean(kp2d[:, 2]) if score is None else score)}

    def _new_track(self, det: dict[str, np.ndarray], time_s: float) -> Track:
        track = Track(track_id=self._next_id, kp2d=det["kp2d"].copy(),
                      velocity=np.zeros((skeleton.NUM_JOINTS_2D, 2)), time_s=time_s,
                      root_mm=det["root_mm"].copy(),
                      filter2d=OneEuroFilter(freq=self.freq, **self.one_euro_2d),
                      filter3d=OneEuroFilter(freq=self.freq, **self.one_euro_3d),
                      filter_root=OneEuroFilter(freq=self.freq, **self.one_euro_3d))
        self._next_id += 1
        self.tracks[track.track_id] = track
        self._collect_bones(track, det)
        LOG.debug("track %d started", track.track_id)
        return track

    def _advance(self, track: Track, det: dict[str, np.ndarray], time_s: float) -> None:
        dt = time_s - track.time_s
        both = (track.kp2d[:, 2] > 0) & (det["kp2d"][:, 2] > 0)
        if dt > 0:
            vel = (det["kp2d"][:, :2] - track.kp2d[:, :2]) / dt
            track.velocity = np.where(both[:, None], 0.5 * track.velocity + 0.5 * vel, 0.0)
        # Joints missing now keep their last position, so the next frame can still match them.
        track.kp2d = np.where((det["kp2d"][:, 2] > 0)[:, None], det["kp2d"], track.kp2d)
        track.time_s = time_s
        track.root_mm = np.where(np.isfinite(det["root_mm"]), det["root_mm"], track.root_mm)
        track.misses = 0
        track.hits += 1
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

    def _emit(self, track: Track, det: dict[str, np.ndarray], time_s: float,
              intrinsics: Intrinsics | None) -> Person:
        kp2d = det["kp2d"].copy()
        rel = det["kp3d_rel_mm"]
        root = det["root_mm"]
        if self.smooth:
            xy = np.where((kp2d[:, 2] > 0)[:, None], kp2d[:, :2], np.nan)
            kp2d[:, :2] = track.filter2d(xy, time_s, speed_scale=self._px_per_dm(kp2d, root, intrinsics))
            rel = track.filter3d(rel, time_s)
            root = track.filter_root(root, time_s)
        cam = rel + root
        return Person(track_id=track.track_id, score=det["score"], kp2d=kp2d, kp3d_rel_mm=rel,
                      kp3d_cam_mm=cam, bone_lengths_mm=None if track.bone_lengths is None else track.bone_lengths.copy())

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
