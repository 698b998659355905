"""Heatmap peaks: 3x3 non-maximum suppression with sub-cell refinement."""
from __future__ import annotations

import numpy as np

__all__ = ["find_peaks", "find_peak_sets"]

_EPS = 1e-6


def find_peaks(heatmaps: np.ndarray, threshold: float = 0.1, max_peaks: int = 40) -> list[np.ndarray]:
    """Local maxima of each heatmap channel.

    A cell is a peak when it exceeds `threshold` and is >= its left/upper neighbours and
    > its right/lower ones (so a flat plateau gives one peak). The position is refined per
    axis by fitting a parabola to the log values of three cells around the peak (exact for a
    Gaussian blob; at the border the three cells are shifted inwards), clipped to +-1 cell.
    The score is the fitted blob's height at the refined position, between the peak cell's
    value and 1 (a rendered target joint scores 1 wherever it falls between cells).

    Args:
        heatmaps: (J, h, w).
        max_peaks: keep at most this many peaks per channel (bounds the grouping cost on
            noisy maps, e.g. from an untrained network).
    Returns:
        J arrays of shape (n_j, 3): x, y in map cells and the score, highest first.
    """
    return find_peak_sets(heatmaps, (threshold,), max_peaks)[0]


def find_peak_sets(heatmaps: np.ndarray, thresholds: tuple[float, ...], max_peaks: int = 40
                   ) -> list[list[np.ndarray]]:
    """`find_peaks` for several thresholds from one pass: one list of J arrays per threshold."""
    hm = np.asarray(heatmaps, dtype=np.float32)
    n_ch, h, w = hm.shape
    pad = np.pad(hm, ((0, 0), (1, 1), (1, 1)), constant_values=-np.inf)
    c = pad[:, 1:-1, 1:-1]
    is_peak = c > min(thresholds)
    for dy, dx, strict in ((-1, -1, False), (-1, 0, False), (-1, 1, False), (0, -1, False),
                           (0, 1, True), (1, -1, True), (1, 0, True), (1, 1, True)):
        nb = pad[:, 1 + dy:1 + dy + h, 1 + dx:1 + dx + w]
        is_peak &= (c > nb) if strict else (c >= nb)
    ch, ys, xs = np.nonzero(is_peak)
    cell32 = hm[ch, ys, xs]  # thresholds compare in float32, as `c > threshold` does
    cell = cell32.astype(np.float64)
    logm = np.log(np.maximum(hm, _EPS))
    logc = np.log(np.maximum(cell, _EPS))
    fx, lx = _refine(logm, ch, ys, xs, axis=2) if w >= 3 else (xs.astype(np.float64), logc)
    fy, ly = _refine(logm, ch, ys, xs, axis=1) if h >= 3 else (ys.astype(np.float64), logc)
    # log f is separable for a Gaussian: log f(x', y') = log f(x', y) + log f(x, y') - log f(x, y).
    scores = np.clip(np.exp(lx + ly - logc), cell, np.maximum(cell, 1.0))
    peaks = np.stack([fx, fy, scores], 1)
    bounds = np.searchsorted(ch, np.arange(n_ch + 1))
    sets = []
    for t in thresholds:
        out = []
        for j in range(n_ch):
            p = peaks[bounds[j]:bounds[j + 1]][cell32[bounds[j]:bounds[j + 1]] > t]
            out.append(p[np.argsort(-p[:, 2], kind="stable")[:max_peaks]])
        sets.append(out)
    return sets


def _refine(logm: np.ndarray, ch: np.ndarray, ys: np.ndarray, xs: np.ndarray, axis: int
            ) -> tuple[np.ndarray, np.ndarray]:
    """Vertex of the parabola through log values at three cells along `axis`, and its value."""
    pos = xs if axis == 2 else ys
    size = logm.shape[axis]
    mid = np.clip(pos, 1, size - 2)

    def at(offset: np.ndarray) -> np.ndarray:
        return logm[ch, ys, mid + offset] if axis == 2 else logm[ch, mid + offset, xs]

    lo, cen, hi = at(-1), at(0), at(1)
    curv = lo - 2 * cen + hi
    delta = np.where(curv < -1e-6, 0.5 * (lo - hi) / np.where(curv < -1e-6, curv, -1.0), 0.0)
    vertex = np.clip(mid + delta, pos - 1.0, pos + 1.0)
    d = vertex - mid
    return vertex.astype(np.float64), (cen + 0.5 * (hi - lo) * d + 0.5 * curv * d * d).astype(np.float64)
