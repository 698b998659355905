"""Result sinks: JSON lines, rendered MP4, COCO results JSON, CSV (BVH lives in `bvh.py`).

A sink has ``write(frame, result, rendered)`` and ``close(complete=True)``, and works in a `with`
block (an exception discards it). Every file is written to a hidden temporary name in the target
folder and renamed into place only on a complete close (fsync, then os.replace), so an
interrupted run never leaves a file that looks finished.
"""
from __future__ import annotations

import csv
import json
import logging
import math
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from .. import skeleton
from ..types import FrameResult, Intrinsics, meta_record
from .sources import Frame

LOG = logging.getLogger(__name__)

TMP_MARK = ".xnect-tmp"


def temp_path_for(path: Path) -> Path:
    """Hidden temporary sibling of `path` that keeps its extension (OpenCV picks the container
    from it): out/clip.mp4 -> out/.clip.mp4.<pid>.xnect-tmp.mp4"""
    return path.with_name(f".{path.name}.{os.getpid()}{TMP_MARK}{path.suffix}")


def commit(tmp: Path, path: Path) -> None:
    """fsync `tmp`, rename it to `path`, fsync the folder."""
    with open(tmp, "rb") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # not supported on this platform
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    path = Path(path)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


class Sink:
    """Base sink. `paths` lists the files a complete close produced."""

    needs_render = False

    def __init__(self) -> None:
        self.paths: list[Path] = []
        self.closed = False

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        raise NotImplementedError

    def close(self, complete: bool = True) -> None:
        self.closed = True

    def __enter__(self) -> "Sink":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self.closed:
            self.close(complete=exc_type is None)


class _TextFileSink(Sink):
    """A text file written through a hidden temporary."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__()
        self.path = Path(path)
        self._tmp = temp_path_for(self.path)
        self._f = open(self._tmp, "w", encoding="utf-8", newline="")

    def close(self, complete: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if complete:
                self._finish()
            self._f.close()
            if complete:
                commit(self._tmp, self.path)
                self.paths = [self.path]
        finally:
            self._f.close()
            self._tmp.unlink(missing_ok=True)

    def _finish(self) -> None:
        pass


class JsonlSink(_TextFileSink):
    """JSON lines in the architecture contract: a meta record, then one frame record per input
    frame, in order, with no gaps.

    Frames of image sets may differ in size, so for them (``per_frame_camera=True``) the meta
    record has no intrinsics and each frame record carries its own "intrinsics" and "file".
    """

    def __init__(self, path: str | os.PathLike, *, model: str, source: str | None = None,
                 fps: float | None = None, intrinsics_for: Callable[[int, int], Intrinsics] | None = None,
                 per_frame_camera: bool = False, inference: dict[str, Any] | None = None) -> None:
        super().__init__(path)
        self.model, self.source, self.fps = model, source, fps
        self.inference = inference
        self.intrinsics_for = intrinsics_for
        self.per_frame_camera = per_frame_camera
        self.frames_written = 0

    def _intrinsics(self, result: FrameResult) -> Intrinsics | None:
        if result.intrinsics is not None:
            return result.intrinsics
        if self.intrinsics_for is not None:
            return self.intrinsics_for(*result.image_size)
        return None

    def _write_meta(self, result: FrameResult | None) -> None:
        if result is None or self.per_frame_camera:
            meta = meta_record(self.model, None, None, fps=self.fps, source=self.source,
                               inference=self.inference)
        else:
            meta = meta_record(self.model, self._intrinsics(result), tuple(result.image_size),
                               fps=self.fps, source=self.source, inference=self.inference)
        self._f.write(json.dumps(meta) + "\n")

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        if result.frame_index != self.frames_written:
            raise ValueError(f"{self.path}: frame {result.frame_index} arrived, expected "
                             f"{self.frames_written} (frame records must be in order without gaps)")
        if self.frames_written == 0:
            self._write_meta(result)
        record = result.to_dict()
        if self.per_frame_camera:
            intr = self._intrinsics(result)
            record["intrinsics"] = None if intr is None else intr.to_dict()
            record["file"] = frame.name
        self._f.write(json.dumps(record) + "\n")
        self.frames_written += 1

    def _finish(self) -> None:
        if self.frames_written == 0:
            self._write_meta(None)


class CsvSink(_TextFileSink):
    """One row per person per frame: frame, time, track id, score, 2D joints (x, y, conf), 3D
    camera-space joints (mm) and root-relative 3D joints (mm). Missing values are empty."""

    def __init__(self, path: str | os.PathLike) -> None:
        super().__init__(path)
        self._w = csv.writer(self._f)
        self._w.writerow(self.header())

    @staticmethod
    def header() -> list[str]:
        cols = ["frame", "time_s", "track_id", "score"]
        cols += [f"{j}_{c}" for j in skeleton.JOINTS_2D for c in ("x", "y", "conf")]
        cols += [f"{j}_cam_{c}_mm" for j in skeleton.JOINTS_3D for c in "xyz"]
        cols += [f"{j}_rel_{c}_mm" for j in skeleton.JOINTS_3D for c in "xyz"]
        return cols

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        for p in result.people:
            row = [result.frame_index, f"{result.time_s:.4f}", p.track_id, f"{p.score:.4f}"]
            row += _fmt(p.kp2d, (2, 2, 3))
            row += _fmt(p.kp3d_cam_mm, (1, 1, 1))
            row += _fmt(p.kp3d_rel_mm, (1, 1, 1))
            self._w.writerow(row)


class CocoSink(_TextFileSink):
    """COCO keypoint results (a JSON list of {image_id, category_id, keypoints, score}) in COCO-17
    order. image_id is the number in the file name when it is one (COCO style), otherwise the
    frame index; "file_name" is added for reference."""

    def __init__(self, path: str | os.PathLike, *, min_conf: float = 0.0) -> None:
        super().__init__(path)
        self.min_conf = min_conf
        self._items: list[dict[str, Any]] = []

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        image_id = _image_id(frame.name, result.frame_index)
        for p in result.people:
            kp = np.asarray(p.kp2d, dtype=np.float64)[list(skeleton.COCO17_FROM_2D)]
            ok = np.isfinite(kp[:, :2]).all(1) & (kp[:, 2] > self.min_conf)
            flat: list[float] = []
            for (x, y, c), v in zip(kp, ok):
                flat += [round(float(x), 2), round(float(y), 2), round(float(c), 4)] if v else [0.0, 0.0, 0.0]
            if not ok.any():
                continue
            self._items.append({"image_id": image_id, "category_id": 1, "keypoints": flat,
                                "score": round(float(p.score), 4), "file_name": Path(frame.name).name})

    def _finish(self) -> None:
        json.dump(self._items, self._f)


class VideoSink(Sink):
    """Rendered frames to an MP4 (mp4v). Frames of another size are letterboxed to the first."""

    needs_render = True

    def __init__(self, path: str | os.PathLike, fps: float | None) -> None:
        super().__init__()
        self.path = Path(path)
        self.fps = fps if fps and fps > 0 else 10.0
        self._tmp = temp_path_for(self.path)
        self._writer = None
        self._size: tuple[int, int] | None = None
        self.frames_written = 0

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        import cv2
        image = frame.image if rendered is None else rendered
        h, w = image.shape[:2]
        if self._writer is None:
            self._size = (w, h)
            self._writer = cv2.VideoWriter(str(self._tmp), cv2.VideoWriter_fourcc(*"mp4v"), self.fps, (w, h))
            if not self._writer.isOpened():
                raise OSError(f"{self.path}: cannot create the video file")
        if (w, h) != self._size:
            image = letterbox(image, self._size)
        self._writer.write(image)
        self.frames_written += 1

    def close(self, complete: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        try:
            if self._writer is not None:
                self._writer.release()
            if complete:
                if self._writer is None:
                    raise OSError(f"{self.path}: no frame to write")
                commit(self._tmp, self.path)
                self.paths = [self.path]
        finally:
            self._tmp.unlink(missing_ok=True)


def letterbox(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Fit `image` into (w, h), keeping its aspect ratio, padding with black."""
    import cv2
    w, h = size
    ih, iw = image.shape[:2]
    s = min(w / iw, h / ih)
    nw, nh = max(1, round(iw * s)), max(1, round(ih * s))
    out = np.zeros((h, w, 3), np.uint8)
    x, y = (w - nw) // 2, (h - nh) // 2
    out[y:y + nh, x:x + nw] = cv2.resize(image, (nw, nh), interpolation=cv2.INTER_AREA)
    return out


def close_all(sinks: Sequence[Sink], complete: bool) -> list[BaseException]:
    """Close every sink; returns the errors instead of stopping at the first one."""
    errors: list[BaseException] = []
    for s in sinks:
        try:
            s.close(complete=complete)
        except Exception as e:  # noqa: BLE001 - collected and reported by the caller
            errors.append(e)
            if complete:  # a failed commit must not leave the others half-done
                complete = False
    return errors


def _image_id(name: str, index: int) -> int:
    stem = Path(name).stem
    return int(stem) if stem.isdigit() else int(index)


def _fmt(a: np.ndarray, digits: Sequence[int]) -> list[str]:
    out: list[str] = []
    for row in np.asarray(a, dtype=np.float64):
        for v, d in zip(row, digits):
            out.append("" if not math.isfinite(v) else f"{v:.{d}f}")
    return out
