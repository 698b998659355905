"""The runtime's one interface: letterboxed images in, Stage I maps out.

    maps = runner(images)              # images: N letterboxed H x W x 3 uint8 BGR frames
    maps.heatmaps, maps.pafs, maps.enc3d   # float32 N x C x H/8 x W/8
    maps.masks                         # N x H/8 x W/8 cells computed (DynConv), or None

`streams` (one key per image) tells runners that keep per-stream state (motion masks) which
stream each image belongs to; without it the images are consecutive frames of one stream.
"""
from __future__ import annotations

from typing import Hashable, NamedTuple, Protocol, Sequence

import numpy as np
import torch

__all__ = ["StageOneMaps", "MapRunner", "Lifter", "images_to_tensor", "maps_to_numpy"]


class StageOneMaps(NamedTuple):
    heatmaps: np.ndarray
    pafs: np.ndarray
    enc3d: np.ndarray
    masks: np.ndarray | None = None


class MapRunner(Protocol):
    def __call__(self, images: Sequence[np.ndarray],
                 streams: Sequence[Hashable] | None = None) -> StageOneMaps: ...

    def reset(self) -> None:
        """Forget per-stream state (a new sequence)."""

    def forget_stream(self, stream: Hashable) -> None:
        """Forget one stream's state."""


class Lifter(Protocol):
    def __call__(self, joint_feats: np.ndarray, readout_m: np.ndarray, valid: np.ndarray) -> np.ndarray:
        """Stage II on P people -> P x 21 x 3 root-relative metres (float64)."""


def images_to_tensor(images: Sequence[np.ndarray], device: torch.device) -> torch.Tensor:
    """N x H x W x 3 uint8 -> N x 3 x H x W float32 on `device`."""
    return torch.from_numpy(np.stack(images)).to(device).permute(0, 3, 1, 2).float()


def maps_to_numpy(maps) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stage I output (tensors) -> float32 numpy heatmaps, PAFs, encodings."""
    return tuple(t.float().cpu().numpy() for t in maps)
