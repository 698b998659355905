"""Stage I and II with torch on whole frames (the default runtime)."""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import torch
from torch import nn

from .maps import StageOneMaps, images_to_tensor, maps_to_numpy

__all__ = ["TorchDense", "TorchLifter"]


class TorchDense:
    """Stage I on every cell of the frame, with the network as it is set up (BN folded NHWC
    snapshot on the CPU, bfloat16 when `stage1.bf16_inference`)."""

    def __init__(self, stage1: nn.Module, device: torch.device):
        self.stage1, self.device = stage1, device

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], streams: Sequence[Hashable] | None = None) -> StageOneMaps:
        return StageOneMaps(*maps_to_numpy(self.stage1(images_to_tensor(images, self.device))))

    def reset(self) -> None:
        pass

    def forget_stream(self, stream: Hashable) -> None:
        pass


class TorchLifter:
    """Stage II with torch."""

    def __init__(self, stage2: nn.Module, device: torch.device):
        self.stage2, self.device = stage2, device

    @torch.inference_mode()
    def __call__(self, joint_feats: np.ndarray, readout_m: np.ndarray, valid: np.ndarray) -> np.ndarray:
        lifted = self.stage2(torch.from_numpy(joint_feats).float().to(self.device),
                             torch.from_numpy(readout_m).float().to(self.device),
                             torch.from_numpy(valid).to(self.device))
        return lifted.cpu().numpy().astype(np.float64)
