"""The result types every front end shares, and their one JSON form.

Coordinates: 2D in pixels of the input frame; 3D in millimetres, camera space
(x right, y down, z forward), plus root-relative (pelvis at the origin).
Missing joints: 2D confidence 0 and coordinates NaN; serialised as null.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from . import skeleton

SCHEMA_VERSION = 1


@dataclass
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float

    @classmethod
    def from_fov(cls, width: int, height: int, fov_deg: float) -> "Intrinsics":
        """Pinhole camera with the given horizontal field of view, centred principal point."""
        if not 1.0 < fov_deg < 179.0:
            raise ValueError(f"field of view must be between 1 and 179 degrees, got {fov_deg}")
        fx = 0.5 * width / math.tan(math.radians(fov_deg) / 2)
        return cls(fx, fx, width / 2.0, height / 2.0)

    def scaled(self, sx: float, sy: float, ox: float = 0.0, oy: float = 0.0) -> "Intrinsics":
        """Intrinsics after x' = sx*x + ox, y' = sy*y + oy on the image."""
        return Intrinsics(self.fx * sx, self.fy * sy, self.cx * sx + ox, self.cy * sy + oy)

    def to_dict(self) -> dict[str, float]:
        return {"fx": self.fx, "fy": self.fy, "cx": self.cx, "cy": self.cy}


@dataclass
class Person:
    """One person in one frame.

    kp2d: (19, 3) x, y in input pixels and confidence in [0, 1] (skeleton.JOINTS_2D order).
    kp3d_rel_mm: (21, 3) root-relative 3D in mm (skeleton.JOINTS_3D order).
    kp3d_cam_mm: (21, 3) camera-space 3D in mm.
    joint_angles: (21, 3) local joint rotations as rotation vectors (radians) from the skeleton
        fit, or None when Stage III fitting is off.
    """

    track_id: int
    score: float
    kp2d: np.ndarray
    kp3d_rel_mm: np.ndarray
    kp3d_cam_mm: np.ndarray
    joint_angles: np.ndarray | None = None
    bone_lengths_mm: np.ndarray | None = None

    @property
    def root_cam_mm(self) -> np.ndarray:
        return self.kp3d_cam_mm[skeleton.ROOT_3D]

    @property
    def bbox(self) -> tuple[float, float, float, float]:
        """x, y, w, h around the visible 2D joints (0s if none)."""
        vis = self.kp2d[:, 2] > 0
        if not vis.any():
            return (0.0, 0.0, 0.0, 0.0)
        xy = self.kp2d[vis, :2]
        x0, y0 = xy.min(0)
        x1, y1 = xy.max(0)
        return (float(x0), float(y0), float(x1 - x0), float(y1 - y0))

    def to_dict(self, image_size: tuple[int, int] | None = None) -> dict[str, Any]:
        d: dict[str, Any] = {
            "id": int(self.track_id),
            "score": round(float(self.score), 4),
            "bbox": [round(v, 1) for v in self.bbox],
            "kp2d": _rows(self.kp2d, 2),
            "kp3d_root_rel_mm": _rows(self.kp3d_rel_mm, 1),
            "root_cam_mm": _rows(self.root_cam_mm[None], 1)[0],
            "kp3d_cam_mm": _rows(self.kp3d_cam_mm, 1),
        }
        if image_size is not None:
            w, h = image_size
            norm = self.kp2d.astype(np.float64).copy()
            norm[:, 0] /= w
            norm[:, 1] /= h
            d["kp2d_norm"] = _rows(norm, 4)
        if self.joint_angles is not None:
            d["joint_angles_rad"] = _rows(self.joint_angles, 4)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Person":
        def arr(key: str, shape: tuple[int, int]) -> np.ndarray:
            rows = d.get(key)
            if rows is None:
                return np.full(shape, np.nan)
            return np.array([[np.nan if v is None else v for v in r] for r in rows], dtype=np.float64)
        kp2d = arr("kp2d", (skeleton.NUM_JOINTS_2D, 3))
        kp2d[:, 2] = np.nan_to_num(kp2d[:, 2])
        angles = d.get("joint_angles_rad")
        return cls(
            track_id=int(d["id"]), score=float(d["score"]), kp2d=kp2d,
            kp3d_rel_mm=arr("kp3d_root_rel_mm", (skeleton.NUM_JOINTS_3D, 3)),
            kp3d_cam_mm=arr("kp3d_cam_mm", (skeleton.NUM_JOINTS_3D, 3)),
            joint_angles=None if angles is None else arr("joint_angles_rad", (skeleton.NUM_JOINTS_3D, 3)),
        )


@dataclass
class FrameResult:
    frame_index: int
    time_s: float
    image_size: tuple[int, int]  # (width, height) of the input frame
    people: list[Person] = field(default_factory=list)
    intrinsics: Intrinsics | None = None
    timings_ms: dict[str, float] = field(default_factory=dict)
    # DynConv: cells Stage I computed (frame-size uint8, 1 = active); None without DynConv. Not
    # part of the JSON record.
    dynconv_mask: np.ndarray | None = field(default=None, repr=False, compare=False)
    # DynConv: share of the network input's cells Stage I computed (1.0 when it ran dense).
    computed_share: float | None = field(default=None, compare=False)

    def to_dict(self) -> dict[str, Any]:
        """The JSON-lines frame record (architecture guide contract)."""
        return {
            "type": "frame",
            "frame": int(self.frame_index),
            "time_s": round(float(self.time_s), 4),
            "image_wh": list(self.image_size),
            "people": [p.to_dict() for p in self.people],
            "timings_ms": {k: round(float(v), 2) for k, v in self.timings_ms.items()},
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "FrameResult":
        return cls(
            frame_index=int(d["frame"]), time_s=float(d["time_s"]),
            image_size=tuple(d.get("image_wh", (0, 0))),  # type: ignore[arg-type]
            people=[Person.from_dict(p) for p in d["people"]],
            timings_ms=dict(d.get("timings_ms", {})),
        )


def meta_record(model: str, intrinsics: Intrinsics | None, image_size: tuple[int, int] | None,
                fps: float | None = None, source: str | None = None,
                inference: dict[str, Any] | None = None) -> dict[str, Any]:
    """The first JSON-lines record: joint sets, units, camera, model and how it was run
    (`inference`: PoseEstimator.settings())."""
    record = {
        "type": "meta",
        "schema_version": SCHEMA_VERSION,
        "joints_2d": list(skeleton.JOINTS_2D),
        "joints_3d": list(skeleton.JOINTS_3D),
        "limbs_2d": [list(l) for l in skeleton.LIMBS_2D],
        "parents_3d": list(skeleton.PARENTS_3D),
        "units": {"kp2d": "pixels of the input frame, [x, y, confidence]",
                  "kp3d": "millimetres, camera space: x right, y down, z forward"},
        "intrinsics": None if intrinsics is None else intrinsics.to_dict(),
        "image_wh": None if image_size is None else list(image_size),
        "fps": fps,
        "source": source,
        "model": model,
    }
    if inference is not None:
        record["inference"] = inference
    return record


def _rows(a: np.ndarray, ndigits: int) -> list[list[float | None]]:
    return [[None if not np.isfinite(v) else round(float(v), ndigits) for v in row] for row in np.asarray(a)]
