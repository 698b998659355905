"""Test-time augmentation: Stage I maps combined over mirrored and rescaled copies of a frame.

Flip: a mirrored image shows every right joint as a left one and every horizontal vector reversed, so
its maps become the original's by mirroring them, swapping left/right channels and negating the
x parts of the PAFs and of the 3D encodings. Averaging the two is the usual flip test of
bottom-up pose estimators (one more Stage I pass per frame).

Scales: Stage I on the frame scaled by s (e.g. 0.75 and 0.5, which help large people most) gives
maps on a grid s times as coarse; resampled to the input's grid (cell centres onto cell centres:
both sizes are multiples of the stride) they are fused with the full-size maps: per cell the
strongest heatmap value and the longest PAF vector, so a person that one scale sees is kept
(averaging instead halves the peaks of small people that coarse scales cannot see: on vtest.avi
2.9 people per frame instead of 5.4, against 5.2 fused so).
"""
from __future__ import annotations

from typing import Hashable, Sequence

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .. import skeleton
from ..nn.stage1 import STRIDE
from .maps import MapRunner, StageOneMaps

__all__ = ["unmirror_maps", "average_with_mirror", "scaled_size", "resize_maps", "fuse_scales",
           "TestTimeAugmentation"]

_J2, _J3, _L = skeleton.NUM_JOINTS_2D, skeleton.NUM_JOINTS_3D, skeleton.NUM_LIMBS_2D
_FLIP_2D = np.array(skeleton.FLIP_2D)
_FLIP_3D = np.array(skeleton.FLIP_3D)
_LIMB_INDEX = {limb: i for i, limb in enumerate(skeleton.LIMBS_2D)}
# The limb a limb becomes in the mirror; (a, b) maps to (flip a, flip b) in the same direction.
_FLIP_LIMBS = np.array([_LIMB_INDEX[(skeleton.FLIP_2D[a], skeleton.FLIP_2D[b])] for a, b in skeleton.LIMBS_2D])


def unmirror_maps(heatmaps: np.ndarray, pafs: np.ndarray, enc3d: np.ndarray
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps (N, C, h, w) of horizontally mirrored images -> maps of the images themselves.

    Its own inverse. heatmaps (N, 19, h, w), pafs (N, 36, h, w) (x, y per limb),
    enc3d (N, 63, h, w) (x, y, z per 3D joint).
    """
    n, _, h, w = heatmaps.shape
    hm = heatmaps[:, _FLIP_2D, :, ::-1]
    paf = pafs.reshape(n, _L, 2, h, w)[:, _FLIP_LIMBS, :, :, ::-1].copy()
    paf[:, :, 0] *= -1
    enc = enc3d.reshape(n, _J3, 3, h, w)[:, _FLIP_3D, :, :, ::-1].copy()
    enc[:, :, 0] *= -1
    return np.ascontiguousarray(hm), paf.reshape(n, 2 * _L, h, w), enc.reshape(n, 3 * _J3, h, w)


def average_with_mirror(heatmaps: np.ndarray, pafs: np.ndarray, enc3d: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Maps of 2N images, N frames then the same N mirrored, -> the flip-averaged maps of the N."""
    n = len(heatmaps) // 2
    if len(heatmaps) != 2 * n:
        raise ValueError(f"{len(heatmaps)} maps: expected the frames and their mirrors (an even count)")
    back = unmirror_maps(heatmaps[n:], pafs[n:], enc3d[n:])
    return tuple((a[:n] + b) * 0.5 for a, b in zip((heatmaps, pafs, enc3d), back))


def scaled_size(size: tuple[int, int], scale: float, multiple: int = 16) -> tuple[int, int]:
    """(W, H) times `scale`, each rounded to a multiple of `multiple` (at least 2 of them)."""
    if not 0.0 < scale <= 4.0:
        raise ValueError(f"test scale {scale}: give a factor in (0, 4]")
    return tuple(max(2 * multiple, int(round(v * scale / multiple)) * multiple) for v in size)


def resize_maps(maps: tuple[np.ndarray, ...], size: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """Bilinear resampling of (N, C, h, w) maps to (N, C, H, W) for size (W, H); cell centres map
    onto cell centres ((x + 0.5) * W / w - 0.5), as image resizing maps pixel centres."""
    with torch.no_grad():
        return tuple(F.interpolate(torch.from_numpy(np.ascontiguousarray(m, dtype=np.float32)), size=size[::-1],
                                   mode="bilinear", align_corners=False).numpy() for m in maps)


def fuse_scales(maps: list[tuple[np.ndarray, np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(heatmaps, PAFs, encodings) of several scales on one grid -> one set: the largest heatmap
    value and the longest PAF vector of each limb per cell; the first scale's 3D encodings."""
    if len(maps) == 1:
        return maps[0]
    hm = np.max([m[0] for m in maps], axis=0)
    pafs = np.stack([m[1] for m in maps])                       # (S, N, 2L, h, w)
    s, n, c, h, w = pafs.shape
    vec = pafs.reshape(s, n, c // 2, 2, h, w)
    best = np.argmax(np.square(vec).sum(3), axis=0)               # (N, L, h, w)
    paf = np.take_along_axis(vec, best[None, :, :, None], axis=0)[0].reshape(n, c, h, w)
    return hm, paf, maps[0][2]


class TestTimeAugmentation:
    """Any dense runner over mirrored and rescaled copies of the images, its maps combined.

    Args:
        runner: the runner of single passes.
        input_size: (W, H) of the images and of the maps returned.
        scale_sizes: the sizes Stage I runs at (`scaled_size` of each test scale), input_size first
            when it is one of them.
        mirror_sizes: with the flip test, the size of the mirrored pass for each scale size (the
            same size, or `flip_scale` times it); empty without.
    """

    def __init__(self, runner: MapRunner, input_size: tuple[int, int], scale_sizes: Sequence[tuple[int, int]],
                 mirror_sizes: dict[tuple[int, int], tuple[int, int]]):
        self.runner, self.input_size = runner, tuple(input_size)
        self.scale_sizes, self.mirror_sizes = list(scale_sizes), dict(mirror_sizes)

    def _pass(self, images: list[np.ndarray]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return tuple(self.runner(images)[:3])

    def __call__(self, images: Sequence[np.ndarray], streams: Sequence[Hashable] | None = None) -> StageOneMaps:
        """Maps at the input size: with the flip test averaged over each image and its mirror (the
        mirror at flip_scale x the size), with test scales fused over the scales (`fuse_scales`)."""
        w, h = self.input_size
        images = list(images)
        per_scale = []
        for size in self.scale_sizes:
            batch = images if size == self.input_size else [
                cv2.resize(img, size, interpolation=cv2.INTER_AREA if size[0] < w else cv2.INTER_LINEAR)
                for img in images]
            mirror_size = self.mirror_sizes.get(size)
            if mirror_size == size:
                batch = batch + [np.ascontiguousarray(img[:, ::-1]) for img in batch]
            maps = self._pass(batch)
            if mirror_size == size:
                maps = average_with_mirror(*maps)
            elif mirror_size is not None:
                mirrored = [np.ascontiguousarray(cv2.resize(img, mirror_size, interpolation=cv2.INTER_AREA)[:, ::-1])
                            for img in batch]
                back = resize_maps(unmirror_maps(*self._pass(mirrored)), (size[0] // STRIDE, size[1] // STRIDE))
                maps = tuple((a + b) * 0.5 for a, b in zip(maps, back))
            if size != self.input_size:
                maps = resize_maps(maps, (w // STRIDE, h // STRIDE))
            per_scale.append(maps)
        return StageOneMaps(*fuse_scales(per_scale))

    def reset(self) -> None:
        self.runner.reset()

    def forget_stream(self, stream: Hashable) -> None:
        self.runner.forget_stream(stream)
