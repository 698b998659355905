"""Causal motion masks for DynConv on a static camera (`ModelConfig(dynconv="motion")`).

A mask source for networks trained without a DynConv mask unit. The background is the per-pixel
median of frames sampled from the past (a ring buffer; computed in a worker thread, so the
stream does not stall at each refresh); a stride-8 cell is active when enough of
its pixels differ from it, and active cells grow by `margin` cells (still limbs, context). Inactive
cells of the masked blocks get the features of the background image
(`SparseStage1.set_background`), which is what a dense pass computes there while the background
holds. Only past frames are used (unlike the benchmark's oracle mask, a median over the whole
clip). Limits: static cameras only; someone who stands still for longer than the buffer spans
becomes background; a moving camera makes everything active (the dense fallback then runs).
"""
from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import cv2
import numpy as np
import torch

from ..nn import dynconv
from ..nn.stage1 import STRIDE

# A motion mask needs no features, so every SelecSLS block after the stem runs sparse (block 2
# onwards, where a learned mask unit starts, was 1.92x on vtest vs 2.31x from block 0, same agreement).
FIRST_MASKED_BLOCK = 0


# Cells computed around the motion. On vtest.avi (README's table, `xnect-bench dynconv --margin
# 2,3,4,5`) 3 runs Stage I 2.3-2.7x faster and agrees with the dense pass at OKS 0.88-0.94 on the
# people both find (0.83-0.90 per frame, near the dense model's own 0.88 against a JPEG re-encode
# of the frame); 4: 1.9-2.2x, 0.94 (0.90).
DEFAULT_MARGIN = 3

# Background medians (~130-240 ms for 25 frames at 512x320) run here, off the inference thread;
# numpy releases the GIL while it sorts. One worker: the gates of several streams take turns.
_MEDIANS = ThreadPoolExecutor(max_workers=1, thread_name_prefix="motion-background")


class MotionGate:
    """Per-stream motion mask and background.

    Args:
        warmup: frames run dense while the first background forms.
        margin: dilation of the moving cells, in cells.
        threshold: grey-level difference from the background that counts as motion.
        cell_fraction: share of a cell's pixels that must move.
        sample_every: a frame enters the background buffer every this many frames.
        samples: frames in the buffer (the background's memory: samples * sample_every frames).
        refresh: most frames between background updates (each update costs one dense pass of the
            backbone for the features); updates come sooner at first (doubling intervals).
        lag: a new background, computed in a worker thread, is taken this many frames after its
            update began (waiting for it then if it is not done), so the result does not depend on
            timing. The first masks come after warmup + lag frames.
    """

    def __init__(self, warmup: int = 24, margin: int = DEFAULT_MARGIN, threshold: int = 25,
                 cell_fraction: float = 0.05, sample_every: int = 4, samples: int = 25, refresh: int = 200,
                 lag: int = 4):
        self.warmup, self.margin, self.threshold, self.cell_fraction = warmup, margin, threshold, cell_fraction
        self.sample_every, self.samples, self.refresh, self.lag = sample_every, samples, refresh, lag
        self.reset()

    @property
    def first_mask_frame(self) -> int:
        """0-based index of the first frame that gets a mask (the ones before run dense)."""
        return self.warmup + self.lag

    def reset(self) -> None:
        self._buffer: list[np.ndarray] = []
        self._seen = 0
        self._background: np.ndarray | None = None
        self._grey: np.ndarray | None = None
        self._next_update = self.warmup
        self._pending: Future | None = None
        self._pending_due = 0
        self._fresh = False  # a new background whose features the network has not taken yet
        self.network_background: torch.Tensor | None = None  # the image the network holds features of

    def update(self, image: np.ndarray) -> torch.Tensor | None:
        """Feed one letterboxed network-size BGR frame; its stride-8 mask (H/8 x W/8 float), or
        None while warming up (run that frame dense)."""
        if self._seen % self.sample_every == 0:
            self._buffer.append(image.copy())
            del self._buffer[:-self.samples]
        self._seen += 1
        if self._seen > self._next_update and self._pending is None:
            self._pending = _MEDIANS.submit(median_frame, list(self._buffer))
            self._pending_due = self._seen + self.lag
            interval = self._next_update
            self._next_update += min(self.refresh, max(interval, 1))
        if self._pending is not None and self._seen >= self._pending_due:
            self._background = self._pending.result()
            self._grey = blurred_grey(self._background)
            self._pending = None
            self._fresh = True
        if self._background is None:
            return None
        share = moving_share_per_cell(blurred_grey(image), self._grey, self.threshold)
        active = torch.from_numpy((share >= self.cell_fraction).astype(np.float32))
        return dynconv.dilate(active[None, None], self.margin)[0, 0]

    def background_due(self) -> bool:
        """A new background image is ready for the network (`background()`)."""
        return self._fresh

    def background(self) -> np.ndarray:
        """The current background image (network size, BGR)."""
        self._fresh = False
        return self._background

    def background_tensor(self, device: torch.device | str = "cpu") -> torch.Tensor:
        """`background()` as the 1 x 3 x H x W float image `Stage1Net.set_sparse` takes."""
        bg = np.ascontiguousarray(self.background().transpose(2, 0, 1))
        return torch.from_numpy(bg)[None].float().to(device)


def median_frame(frames: list[np.ndarray]) -> np.ndarray:
    """Per-pixel median of equally sized uint8 frames."""
    return np.median(np.stack(frames), 0).astype(np.uint8)


def blurred_grey(image: np.ndarray) -> np.ndarray:
    return cv2.GaussianBlur(cv2.cvtColor(image, cv2.COLOR_BGR2GRAY), (5, 5), 0)


def moving_share_per_cell(grey: np.ndarray, background_grey: np.ndarray, threshold: int) -> np.ndarray:
    """Share of each stride-8 cell's pixels that differ from the background by more than
    `threshold` grey levels (after a 3x3 opening that drops single-pixel noise): H/8 x W/8."""
    moving = (cv2.absdiff(grey, background_grey) > threshold).astype(np.uint8)
    moving = cv2.morphologyEx(moving, cv2.MORPH_OPEN, np.ones((3, 3), np.uint8))
    h, w = moving.shape
    cells = moving[: h // STRIDE * STRIDE, : w // STRIDE * STRIDE].reshape(h // STRIDE, STRIDE, w // STRIDE, STRIDE)
    return cells.mean((1, 3))
