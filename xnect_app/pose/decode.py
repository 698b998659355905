"""Stage I maps -> people: peaks, PAF grouping, 3D read-out and Stage II inputs, in one call."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import skeleton
from .paf import GroupingConfig, complete_people, group_people
from .peaks import find_peak_sets, find_peaks
from .readout import read_3d, stage2_inputs
from .targets import to_input

__all__ = ["DecodedPeople", "decode"]


@dataclass
class DecodedPeople:
    """People found in one frame, P = len(self), sorted by score (highest first).

    kp2d: (P, 19, 3) x, y in input pixels and confidence (NaN, NaN, 0 when missing).
    kp2d_map: (P, 19, 3) the same in map cells.
    scores: (P,) grouping score (paf.group_people).
    kp3d_rel_mm: (P, 21, 3) ORPM-style read-out, root-relative mm (NaN where invalid).
    kp3d_valid: (P, 21) bool.
    stage2_in: (P, 19, 66) float32 Stage II input (readout.stage2_inputs).
    """

    kp2d: np.ndarray
    kp2d_map: np.ndarray
    scores: np.ndarray
    kp3d_rel_mm: np.ndarray
    kp3d_valid: np.ndarray
    stage2_in: np.ndarray

    def __len__(self) -> int:
        return len(self.scores)


def decode(heatmaps: np.ndarray, pafs: np.ndarray, enc3d: np.ndarray | None = None, stride: int = 8,
           peak_threshold: float = 0.1, grouping: GroupingConfig = GroupingConfig(),
           max_peaks: int = 40, completion_threshold: float | None = 0.05) -> DecodedPeople:
    """Decode one frame's Stage I output (arrays (19|36|63, h, w), numpy, any float dtype).

    Without enc3d the 3D fields are NaN / False / zero-filled encodings. At most `max_peaks`
    candidates per joint are grouped (the decoder's cost stays bounded on noisy maps). Joints the
    grouping leaves missing are then filled from peaks above `completion_threshold` that a PAF
    joins to the person (`paf.complete_people`; None: off).
    """
    heatmaps = np.asarray(heatmaps, dtype=np.float32)
    pafs = np.asarray(pafs, dtype=np.float32)
    if completion_threshold is None:
        peaks, weak = find_peaks(heatmaps, peak_threshold, max_peaks), None
    else:
        peaks, weak = find_peak_sets(heatmaps, (peak_threshold, completion_threshold), max_peaks)
    kp_map, scores = group_people(peaks, pafs, grouping)
    if weak is not None and len(kp_map):
        kp_map = complete_people(kp_map, weak, pafs)
    kp = kp_map.copy()
    kp[..., :2] = to_input(kp_map[..., :2], stride)
    n = len(kp_map)
    if enc3d is None:
        enc3d = np.zeros((3 * skeleton.NUM_JOINTS_3D,) + heatmaps.shape[1:], np.float32)
        kp3d = np.full((n, skeleton.NUM_JOINTS_3D, 3), np.nan)
        valid = np.zeros((n, skeleton.NUM_JOINTS_3D), dtype=bool)
    else:
        enc3d = np.asarray(enc3d, dtype=np.float32)
        kp3d, valid = read_3d(enc3d, kp_map)
    return DecodedPeople(kp2d=kp, kp2d_map=kp_map, scores=scores, kp3d_rel_mm=kp3d, kp3d_valid=valid,
                         stage2_in=stage2_inputs(enc3d, kp_map))
