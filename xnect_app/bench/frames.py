"""Decoding the frames a benchmark runs on."""
from __future__ import annotations

import argparse
from pathlib import Path

import cv2
import numpy as np

from ..options import UserError

DEFAULT_VIDEO = Path(__file__).resolve().parents[2] / "demo_videos" / "vtest.avi"


def add_video_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--video", type=Path, default=DEFAULT_VIDEO,
                   help="video to run on (default: demo_videos/vtest.avi; demo_videos/fetch_vtest.sh fetches it)")


def require_video(video: str | Path) -> None:
    """The one-line error of every bench for a video that is not there (checked before loading a model)."""
    if not Path(video).is_file():
        raise UserError(f"{video}: no such video (demo_videos/fetch_vtest.sh fetches vtest.avi)")


def read_frames(video: str | Path, count: int, start: int = 0, stride: int = 1) -> list[np.ndarray]:
    """Up to `count` frames, every `stride`-th from frame `start`; an error if none can be read."""
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise UserError(f"{video}: cannot open the video")
    frames: list[np.ndarray] = []
    try:
        if start:
            cap.set(cv2.CAP_PROP_POS_FRAMES, start)
        i = 0
        while len(frames) < count:
            ok, frame = cap.read()
            if not ok:
                break
            if i % stride == 0:
                frames.append(frame)
            i += 1
    finally:
        cap.release()
    if not frames and count > 0:
        raise UserError(f"{video}: no frames could be read from frame {start} on")
    return frames
