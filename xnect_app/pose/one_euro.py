"""One Euro filter (Casiez et al. 2012), vectorised over arrays of any shape.

    alpha(cutoff) = 1 / (1 + tau / Te),  tau = 1 / (2 pi cutoff),  Te = 1 / freq
    dx_hat = lowpass(d_cutoff)((x - x_hat_prev) / Te)
    cutoff = min_cutoff + beta * |dx_hat| / speed_scale
    x_hat  = lowpass(cutoff)(x)

Speeds are divided by `speed_scale` before `beta` applies, so one set of parameters works
whatever the units. The presets below (VNect's values: 2D min_cutoff 1.7, beta 0.3; 3D
min_cutoff 0.8, beta 0.4; d_cutoff 1.0) assume speeds in decimetres per second, which is
what VNect's raw 3D units were: the 3D preset uses speed_scale = 100 (mm), and for 2D the
tracker passes the number of pixels that 100 mm spans at the person's distance.

NaN-aware: an element that is NaN outputs NaN and forgets its state; when it comes back
the filter restarts from that value.
"""
from __future__ import annotations

import math

import numpy as np

__all__ = ["OneEuroFilter", "filter_many", "ONE_EURO_2D", "ONE_EURO_3D"]

ONE_EURO_2D = {"min_cutoff": 1.7, "beta": 0.3, "d_cutoff": 1.0}
ONE_EURO_3D = {"min_cutoff": 0.8, "beta": 0.4, "d_cutoff": 1.0, "speed_scale": 100.0}


def _alpha(cutoff: np.ndarray | float, dt: float) -> np.ndarray | float:
    tau = 1.0 / (2.0 * math.pi * cutoff)
    return 1.0 / (1.0 + tau / dt)


class OneEuroFilter:
    """Stateful smoother: `y = f(x, t)` for arrays of a fixed shape.

    Args:
        min_cutoff: cutoff (Hz) at rest; lower = smoother and more lag.
        beta: how fast the cutoff rises with speed; higher = less lag when moving.
        d_cutoff: cutoff (Hz) of the speed estimate.
        freq: sample rate (Hz) used when no timestamps are given.
        speed_scale: speeds are measured in units of speed_scale per second (an array
            broadcastable to x is fine, or pass `speed_scale=` per call).
    """

    def __init__(self, min_cutoff: float = 1.0, beta: float = 0.0, d_cutoff: float = 1.0,
                 freq: float = 30.0, speed_scale: float | np.ndarray = 1.0):
        if min_cutoff <= 0 or d_cutoff <= 0 or freq <= 0:
            raise ValueError("min_cutoff, d_cutoff and freq must be positive")
        self.min_cutoff, self.beta, self.d_cutoff = min_cutoff, beta, d_cutoff
        self.freq, self.speed_scale = freq, speed_scale
        self.x_prev: np.ndarray | None = None
        self.dx_prev: np.ndarray | None = None
        self.t_prev: float | None = None

    def reset(self) -> None:
        self.x_prev = self.dx_prev = None
        self.t_prev = None

    def __call__(self, x: np.ndarray, t: float | None = None,
                 speed_scale: float | np.ndarray | None = None) -> np.ndarray:
        return filter_many([self], np.asarray(x, dtype=np.float64)[None], t,
                           None if speed_scale is None else np.asarray(speed_scale)[None])[0]

    def _advance_clock(self, t: float | None) -> float:
        dt = 1.0 / self.freq
        if t is not None and self.t_prev is not None and t > self.t_prev:
            dt = t - self.t_prev
        if t is not None:
            self.t_prev = t
        return dt


def filter_many(filters: list[OneEuroFilter], xs: np.ndarray, t: float | None = None,
                speed_scale: np.ndarray | None = None) -> np.ndarray:
    """One sample for each of several filters with the same settings, in one vectorised step.

    Args:
        xs: (F, ...) one sample per filter, all of one shape.
        speed_scale: (F, ...) broadcastable per-filter speed units (each filter's own if None).
    """
    xs = np.asarray(xs, dtype=np.float64)
    if not filters:
        return xs.copy()
    first = filters[0]
    if any((f.min_cutoff, f.beta, f.d_cutoff) != (first.min_cutoff, first.beta, first.d_cutoff) for f in filters):
        raise ValueError("filter_many needs filters with the same settings")
    lead = (len(filters),) + (1,) * (xs.ndim - 1)
    dt = np.array([f._advance_clock(t) for f in filters]).reshape(lead)
    for f, x in zip(filters, xs):
        if f.x_prev is None or f.x_prev.shape != x.shape:
            f.x_prev = np.full(x.shape, np.nan)
            f.dx_prev = np.zeros(x.shape)
    x_prev = np.stack([f.x_prev for f in filters])
    dx_prev = np.stack([f.dx_prev for f in filters])
    if speed_scale is None:
        speed_scale = np.array([np.broadcast_to(f.speed_scale, xs.shape[1:]) for f in filters])
    fresh = np.isnan(x_prev)
    dx = np.where(fresh, 0.0, (xs - x_prev) / dt)
    dx_hat = np.where(fresh, 0.0, dx_prev + _alpha(first.d_cutoff, dt) * (dx - dx_prev))
    cutoff = first.min_cutoff + first.beta * np.abs(dx_hat) / speed_scale
    x_hat = np.where(fresh, xs, x_prev + _alpha(cutoff, dt) * (xs - x_prev))
    gone = np.isnan(xs)
    new_x = np.where(gone, np.nan, x_hat)
    new_dx = np.where(gone, 0.0, dx_hat)
    for k, f in enumerate(filters):
        f.x_prev, f.dx_prev = new_x[k], new_dx[k]
    return x_hat
