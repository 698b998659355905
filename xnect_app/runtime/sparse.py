"""Stage I with DynConv: computed only on the cells a mask selects (torch, CPU).

TorchSparse takes the masks of the weights' mask unit; MotionSparse those of a motion gate per
stream (`runtime.motion`), for any weights on a static camera, with the skipped cells filled with
what a dense pass computes on the stream's background.
"""
from __future__ import annotations

from typing import Hashable, Sequence

import numpy as np
import torch

from ..nn.stage1 import STRIDE, Stage1Net
from .maps import StageOneMaps, images_to_tensor, maps_to_numpy
from .motion import FIRST_MASKED_BLOCK, MotionGate

__all__ = ["TorchSparse", "MotionSparse"]


class TorchSparse:
    """Learned masks: the mask unit of the weights picks the cells (budget: the largest share)."""

    def __init__(self, stage1: Stage1Net, device: torch.device, budget: float | None = None):
        self.stage1, self.device = stage1, device
        stage1.dynconv_max_active = None if budget is None else float(budget)
        stage1.set_sparse(True)

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], streams: Sequence[Hashable] | None = None) -> StageOneMaps:
        out = self.stage1(images_to_tensor(images, self.device))
        stats = self.stage1.sparse_stats
        mask = stats.mask if stats is not None else self.stage1.last_mask
        masks = None if mask is None else mask[:, 0].float().cpu().numpy()
        return StageOneMaps(*maps_to_numpy(out), masks=masks)

    def reset(self) -> None:
        pass

    def forget_stream(self, stream: Hashable) -> None:
        pass


class MotionSparse:
    """Motion masks: one `MotionGate` (and background) per stream; frames of a stream that is
    still warming up run dense."""

    def __init__(self, stage1: Stage1Net, device: torch.device, input_size: tuple[int, int],
                 margin: int | None = None):
        self.stage1, self.device, self.input_size = stage1, device, tuple(input_size)
        self._gate_kw = {} if margin is None else {"margin": int(margin)}
        self.gate = MotionGate(**self._gate_kw)  # the stream of calls without `streams`
        self._stream_gates: dict[Hashable, MotionGate] = {}

    @torch.inference_mode()
    def __call__(self, images: Sequence[np.ndarray], streams: Sequence[Hashable] | None = None) -> StageOneMaps:
        if streams is None:
            gated = self._gate_batch(images, self.gate)
            out = self.stage1(images_to_tensor(images, self.device))
            return StageOneMaps(*maps_to_numpy(out), masks=self._masks(gated, len(images)))
        # each frame is its own sparse pass with its stream's background
        maps, mask_rows = [], []
        for img, stream in zip(images, streams):
            gated = self._gate_batch([img], self.stream_gate(stream))
            maps.append(self.stage1(images_to_tensor([img], self.device)))
            mask_rows.append(self._masks(gated, 1))
        return StageOneMaps(*maps_to_numpy(torch.cat(m) for m in zip(*maps)), masks=np.concatenate(mask_rows))

    def _gate_batch(self, images: Sequence[np.ndarray], gate: MotionGate) -> bool:
        """Motion masks for consecutive frames of one stream set on the network; False when they
        must run dense (warm-up)."""
        masks = [gate.update(img) for img in images]
        if any(m is None for m in masks):
            self.stage1.set_sparse(False, mask_override=None, mask_unit=False)
            return False
        if gate.background_due():
            gate.network_background = gate.background_tensor(self.device)
        self.stage1.set_sparse(True, mask_override=torch.stack(masks)[:, None].to(self.device),
                               background=gate.network_background, first_block=FIRST_MASKED_BLOCK)
        return True

    def _masks(self, gated: bool, n: int) -> np.ndarray:
        """The stride-8 masks (N x H/8 x W/8) of the last pass; all cells while warming up."""
        if not gated:
            w, h = self.input_size
            return np.ones((n, h // STRIDE, w // STRIDE), np.float32)
        return self.stage1.sparse_stats.mask[:, 0].float().cpu().numpy()

    def stream_gate(self, stream: Hashable) -> MotionGate:
        gate = self._stream_gates.get(stream)
        if gate is None:
            gate = self._stream_gates[stream] = MotionGate(**self._gate_kw)
        return gate

    def reset(self) -> None:
        self.gate.reset()
        self._stream_gates = {}

    def forget_stream(self, stream: Hashable) -> None:
        self._stream_gates.pop(stream, None)
