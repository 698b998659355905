"""Frames to network input: letterboxing, and the map from network pixels back to the frame."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..nn.stage1 import STRIDE

__all__ = ["PAD_VALUE", "Letterbox", "letterbox"]

PAD_VALUE = 114


@dataclass(frozen=True)
class Letterbox:
    """Input frame -> network input: x_net = scale * x + ox, y_net = scale * y + oy."""
    scale: float
    ox: float
    oy: float

    def to_frame(self, xy: np.ndarray) -> np.ndarray:
        out = np.array(xy, dtype=np.float64, copy=True)
        out[..., 0] = (out[..., 0] - self.ox) / self.scale
        out[..., 1] = (out[..., 1] - self.oy) / self.scale
        return out

    def mask_to_frame(self, mask: np.ndarray, width: int, height: int, stride: int = STRIDE) -> np.ndarray:
        """A network-input grid mask (cells of `stride` pixels) as a width x height uint8 frame mask."""
        # frame pixel centre x -> net pixel x_net = scale * x + ox -> cell (x_net + 0.5) / stride - 0.5
        a = self.scale / stride
        m = np.array([[a, 0.0, (self.ox + 0.5) / stride - 0.5], [0.0, a, (self.oy + 0.5) / stride - 0.5]])
        return cv2.warpAffine(np.ascontiguousarray(mask, np.uint8), m, (int(width), int(height)),
                              flags=cv2.INTER_NEAREST | cv2.WARP_INVERSE_MAP, borderValue=0)


def letterbox(frame: np.ndarray, size: tuple[int, int]) -> tuple[np.ndarray, Letterbox]:
    """Resize keeping the aspect ratio and pad to size (w, h), centred."""
    w, h = size
    fh, fw = frame.shape[:2]
    s = min(w / fw, h / fh)
    nw, nh = max(1, round(fw * s)), max(1, round(fh * s))
    resized = cv2.resize(frame, (nw, nh), interpolation=cv2.INTER_AREA if s < 1 else cv2.INTER_LINEAR)
    ox, oy = (w - nw) // 2, (h - nh) // 2
    out = np.full((h, w, 3), PAD_VALUE, np.uint8)
    out[oy:oy + nh, ox:ox + nw] = resized
    # Pixel centres: x_net + 0.5 = s_x * (x + 0.5) with s_x = nw / fw.
    sx = nw / fw
    return out, Letterbox(sx, ox + 0.5 * sx - 0.5, oy + 0.5 * (nh / fh) - 0.5)
