"""Painters: 2D skeletons coloured per track id, a small orthographic 3D view, a text HUD.

All functions draw on a copy and return it, except the ``*_into`` helpers, which draw in place
on an image the caller owns. Coordinates come straight from `types.Person`.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Sequence

import numpy as np

from .. import skeleton
from ..types import FrameResult, Person

PARENTS_3D = np.asarray(skeleton.PARENTS_3D)


UNTRACKED_BGR = (170, 170, 170)  # people whose track is not confirmed yet (track_id -1)


def track_color(track_id: int) -> tuple[int, int, int]:
    if track_id < 0:
        return UNTRACKED_BGR
    return skeleton.TRACK_COLORS_BGR[int(track_id) % len(skeleton.TRACK_COLORS_BGR)]


def _thickness(image: np.ndarray) -> int:
    return max(1, round(min(image.shape[:2]) / 250))


def draw_people_into(image: np.ndarray, people: Sequence[Person], *, min_conf: float = 0.05,
                     label: bool = True) -> None:
    """Draw every person's 2D limbs and joints, in the colour of its track id."""
    import cv2
    t = _thickness(image)
    for person in people:
        color = track_color(person.track_id)
        kp = np.asarray(person.kp2d, dtype=np.float64)
        ok = (kp[:, 2] > min_conf) & np.isfinite(kp[:, :2]).all(1)
        for a, b in skeleton.LIMBS_2D:
            if ok[a] and ok[b]:
                cv2.line(image, _pt(kp[a]), _pt(kp[b]), color, t + 1, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(image, _pt(kp[j]), t + 1, (255, 255, 255), -1, cv2.LINE_AA)
            cv2.circle(image, _pt(kp[j]), t + 1, color, 1, cv2.LINE_AA)
        if label and ok.any() and person.track_id >= 0:
            x, y = kp[ok, 0].min(), kp[ok, 1].min()
            _text(image, f"{person.track_id}", (int(x), max(12, int(y) - 6)), color, scale=0.45 * t)


def project_3d(points_mm: np.ndarray, yaw_deg: float = 0.0, pitch_deg: float = 10.0) -> np.ndarray:
    """Orthographic view of camera-space points (x right, y down, z forward): rotate by yaw about
    the vertical axis and pitch about x, then drop depth. Returns (N, 2) in mm, y down."""
    yaw, pitch = math.radians(yaw_deg), math.radians(pitch_deg)
    cy, sy, cp, sp = math.cos(yaw), math.sin(yaw), math.cos(pitch), math.sin(pitch)
    ry = np.array([[cy, 0, sy], [0, 1, 0], [-sy, 0, cy]])
    rx = np.array([[1, 0, 0], [0, cp, -sp], [0, sp, cp]])
    return (np.asarray(points_mm, dtype=np.float64) @ (rx @ ry).T)[:, :2]


def render_3d_view(people: Sequence[Person], size: tuple[int, int] = (240, 240), *,
                   yaw_deg: float = 0.0, pitch_deg: float = 10.0, extent_mm: float = 2200.0) -> np.ndarray:
    """A (h, w, 3) image: each person's root-relative 3D skeleton, side by side in the order of
    their camera-space x, seen orthographically from (yaw, pitch)."""
    import cv2
    w, h = size
    view = np.full((h, w, 3), 32, np.uint8)
    # ground line and frame
    cv2.rectangle(view, (0, 0), (w - 1, h - 1), (90, 90, 90), 1)
    shown = [p for p in people if np.isfinite(p.kp3d_rel_mm).all(1).sum() >= 2]
    if not shown:
        _text(view, "3D: nobody", (6, 16), (160, 160, 160), scale=0.4)
        return view
    root_x = [p.kp3d_cam_mm[skeleton.ROOT_3D, 0] for p in shown]
    order = np.argsort([x if np.isfinite(x) else 0.0 for x in root_x], kind="stable")
    n = len(shown)
    cell_w = w / n
    scale = min(cell_w, h) / extent_mm
    for slot, i in enumerate(order):
        person = shown[i]
        xy = project_3d(person.kp3d_rel_mm, yaw_deg, pitch_deg) * scale
        xy[:, 0] += (slot + 0.5) * cell_w
        xy[:, 1] += h * 0.5
        ok = np.isfinite(xy).all(1)
        color = track_color(person.track_id)
        for j, parent in enumerate(PARENTS_3D):
            if parent >= 0 and ok[j] and ok[parent]:
                cv2.line(view, _pt(xy[j]), _pt(xy[parent]), color, 2, cv2.LINE_AA)
        for j in np.flatnonzero(ok):
            cv2.circle(view, _pt(xy[j]), 2, (235, 235, 235), -1, cv2.LINE_AA)
    return view


def inset_into(image: np.ndarray, view: np.ndarray, corner: str = "top-right", margin: int = 8) -> None:
    """Paste `view` into a corner of `image` (shrunk to at most a third of it if needed)."""
    import cv2
    H, W = image.shape[:2]
    h, w = view.shape[:2]
    f = min(1.0, (W / 3) / w, (H / 3) / h)
    if f < 1.0:
        view = cv2.resize(view, (max(1, int(w * f)), max(1, int(h * f))), interpolation=cv2.INTER_AREA)
        h, w = view.shape[:2]
    x = W - w - margin if corner.endswith("right") else margin
    y = margin if corner.startswith("top") else H - h - margin
    x, y = max(0, x), max(0, y)
    image[y:y + h, x:x + w] = view[: H - y, : W - x]


def draw_mask_into(image: np.ndarray, mask: np.ndarray) -> None:
    """Darken the cells DynConv skipped and outline the computed ones (mask: frame-size, 1 = computed)."""
    import cv2

    off = mask == 0
    image[off] = (image[off] * 0.4).astype(image.dtype)
    contours, _ = cv2.findContours(np.ascontiguousarray(mask, np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(image, contours, -1, (0, 200, 255), max(1, _thickness(image) // 2), cv2.LINE_AA)


def draw_hud_into(image: np.ndarray, lines: Sequence[str]) -> None:
    """White text with a dark outline, top-left."""
    s = 0.5 * max(1.0, min(image.shape[:2]) / 480)
    for i, line in enumerate(lines):
        _text(image, line, (8, int(22 * s / 0.5) * (i + 1)), (255, 255, 255), scale=s)


class Overlay:
    """Renders a frame with its result: 2D skeletons, a 3D inset and FPS/people text.

    rotate_deg_per_s: spin the 3D view (0 keeps it fixed at `yaw_deg`).
    """

    def __init__(self, *, view_3d: bool = True, yaw_deg: float = 30.0, rotate_deg_per_s: float = 0.0,
                 hud: bool = True, show_mask: bool = False) -> None:
        self.show_mask = show_mask
        self.view_3d = view_3d
        self.yaw_deg = yaw_deg
        self.rotate_deg_per_s = rotate_deg_per_s
        self.hud = hud

    def __call__(self, image: np.ndarray, result: FrameResult, fps: float | None = None) -> np.ndarray:
        out = image.copy()
        mask = result.dynconv_mask if self.show_mask else None
        if mask is not None:
            draw_mask_into(out, mask)
        draw_people_into(out, result.people)
        if self.view_3d:
            side = max(96, min(out.shape[:2]) // 3)
            yaw = self.yaw_deg + self.rotate_deg_per_s * result.time_s
            inset_into(out, render_3d_view(result.people, (side, side), yaw_deg=yaw))
        if self.hud:
            lines = [f"people {len(result.people)}"]
            if mask is not None:
                lines.append(f"computed {mask.mean():.0%} of the frame")
            if fps is not None:
                lines.insert(0, f"{fps:5.1f} fps")
            draw_hud_into(out, lines)
        return out


def display_available() -> tuple[bool, str]:
    """Whether cv2.imshow can open a window here, and if not, why (one line)."""
    import cv2
    info = cv2.getBuildInformation()
    gui = ""
    for line in info.splitlines():
        if line.strip().startswith("GUI:"):
            gui = line.split(":", 1)[1].strip()
            break
    if gui.upper() in ("", "NONE"):
        return False, "this OpenCV build has no GUI support (opencv-python-headless)"
    if sys.platform.startswith("linux") and not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        return False, "no display ($DISPLAY is not set)"
    return True, ""


def _pt(xy: np.ndarray) -> tuple[int, int]:
    return int(round(float(xy[0]))), int(round(float(xy[1])))


def _text(image: np.ndarray, text: str, org: tuple[int, int], color, scale: float = 0.5) -> None:
    import cv2
    scale = max(0.35, scale)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, (0, 0, 0), 3, cv2.LINE_AA)
    cv2.putText(image, text, org, cv2.FONT_HERSHEY_SIMPLEX, scale, color, 1, cv2.LINE_AA)


class Window:
    """An OpenCV window for the live view; show() returns the key pressed (-1 for none), and
    reports 'q' when the user closes the window."""

    def __init__(self, title: str = "xnect") -> None:
        import cv2
        self.title = title
        cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        self._shown = False

    def show(self, image: np.ndarray) -> int:
        import cv2
        cv2.imshow(self.title, image)
        key = cv2.waitKey(1)
        if self._shown and cv2.getWindowProperty(self.title, cv2.WND_PROP_VISIBLE) < 1:
            return ord("q")
        self._shown = True
        return key

    def close(self) -> None:
        import cv2
        try:
            cv2.destroyWindow(self.title)
            cv2.waitKey(1)
        except cv2.error:
            pass
