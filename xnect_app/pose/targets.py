"""Stage I training targets: heatmaps, part affinity fields and 3D pose encodings.

This module is the contract between the network, the trainer and the decoder
(`peaks.py`, `paf.py`, `readout.py`). Maps have stride s (default 8): an input of W x H pixels
gives maps of (H // s, W // s) cells, and the centre of cell (i, j) is input pixel
((j + 0.5) * s - 0.5, (i + 0.5) * s - 0.5). `to_map` / `to_input` convert between the two.

Channels, all float32, shape (C, h, w):
- heatmaps (19, skeleton.JOINTS_2D): exp(-d^2 / (2 sigma^2)), d and sigma in cells, max over
  people. Only joints with visibility > 0 are drawn (joints outside the crop are drawn too,
  their tails fall inside).
- pafs (36 = 2 per skeleton.LIMBS_2D limb, x then y): the unit vector from limb joint a to b,
  on cells within `paf_width` cells of the segment's line whose projection t along the limb
  lies in [-0.5, length + 0.5] cells (the segment's extent plus half a cell at each end, so
  that limbs shorter than a cell, e.g. nose-eye of a far person, still get cells). Averaged
  over people where they overlap, 0 elsewhere. A limb is drawn only when both its joints are
  labelled.
- enc3d (63 = 3 per skeleton.JOINTS_3D joint, x y z): root-relative 3D position in METRES
  (mm / 1000), camera axes (x right, y down, z forward). Supervised regions ("ORPM-style, plus
  per-joint"): in the disc of radius `enc_radius` cells around person k's neck, all 21 triplets
  hold person k's full pose; in the disc around each other labelled 2D body joint j
  (0..13, j != neck) of person k, triplet j holds k's joint j. Where several people's discs
  cover a cell for triplet j, the person whose (neck or joint j) is nearest owns it.
- enc3d_weight (63, h, w) in {0, 1}: 1 on the cells and triplets supervised above, 0 elsewhere.
  People without 3D labels (kp3d_mm None or all-NaN for that person) still own cells (so a
  labelled person's value is never written where an unlabelled one is nearer) but give weight 0;
  so do joints whose 3D is NaN.
"""
from __future__ import annotations

import numpy as np

from .. import skeleton

__all__ = ["render_targets", "to_map", "to_input", "map_size"]

NECK = skeleton.NECK
NUM_BODY = 14  # 2D joints 0..13 are 3D joints 0..13
_PAF_END_MARGIN = 0.5  # cells beyond each end of a limb that still carry its PAF
_LIMB_A = np.array([a for a, _ in skeleton.LIMBS_2D])
_LIMB_B = np.array([b for _, b in skeleton.LIMBS_2D])


def to_map(xy_px: np.ndarray, stride: int = 8) -> np.ndarray:
    """Input pixels -> map cell coordinates (any shape, last axis x, y)."""
    return (np.asarray(xy_px, dtype=np.float64) + 0.5) / stride - 0.5


def to_input(xy_map: np.ndarray, stride: int = 8) -> np.ndarray:
    """Map cell coordinates -> input pixels."""
    return (np.asarray(xy_map, dtype=np.float64) + 0.5) * stride - 0.5


def map_size(in_size: tuple[int, int], stride: int = 8) -> tuple[int, int]:
    """(W, H) input -> (w, h) map."""
    return in_size[0] // stride, in_size[1] // stride


def render_targets(kp2d: np.ndarray, kp3d_mm: np.ndarray | None, in_size: tuple[int, int] = (512, 320),
                   stride: int = 8, sigma: float = 1.0, paf_width: float = 1.0,
                   enc_radius: float = 2.0) -> dict[str, np.ndarray]:
    """Render the Stage I targets of one image.

    Args:
        kp2d: (P, 19, 3) x, y in input pixels and visibility (0 = unlabelled).
        kp3d_mm: (P, 21, 3) root-relative 3D in mm (NaN = unknown), or None (no 3D labels).
        in_size: network input (W, H).
    Returns:
        dict heatmaps (19, h, w), pafs (36, h, w), enc3d (63, h, w), enc3d_weight (63, h, w).
    """
    w, h = map_size(in_size, stride)
    kp2d = np.asarray(kp2d, dtype=np.float64).reshape(-1, skeleton.NUM_JOINTS_2D, 3)
    n = len(kp2d)
    labelled = (kp2d[..., 2] > 0) & np.isfinite(kp2d[..., :2]).all(-1)
    xy = np.where(labelled[..., None], to_map(kp2d[..., :2], stride), 0.0).astype(np.float32)
    gx = np.arange(w, dtype=np.float32)
    gy = np.arange(h, dtype=np.float32)[:, None]
    out = {
        "heatmaps": np.zeros((skeleton.NUM_JOINTS_2D, h, w), np.float32),
        "pafs": np.zeros((skeleton.NUM_PAF_CHANNELS, h, w), np.float32),
        "enc3d": np.zeros((3 * skeleton.NUM_JOINTS_3D, h, w), np.float32),
        "enc3d_weight": np.zeros((3 * skeleton.NUM_JOINTS_3D, h, w), np.float32),
    }
    if n == 0 or w == 0 or h == 0:
        return out

    # Squared distance of every cell to every joint, (P, 19, h, w); inf for unlabelled joints.
    dx2 = (gx - xy[..., 0, None]) ** 2
    dy2 = (gy[None, None] - xy[..., 1, None, None]) ** 2
    d2 = dx2[:, :, None, :] + dy2
    d2[~labelled] = np.inf
    out["heatmaps"] = np.exp(-d2.min(0) / np.float32(2 * sigma * sigma))

    _render_pafs(out["pafs"], xy, labelled, gx, gy, paf_width)
    _render_enc3d(out["enc3d"], out["enc3d_weight"], d2, kp3d_mm, n, enc_radius)
    return out


def _render_pafs(pafs: np.ndarray, xy: np.ndarray, labelled: np.ndarray, gx: np.ndarray,
                 gy: np.ndarray, width: float) -> None:
    a, b = xy[:, _LIMB_A], xy[:, _LIMB_B]                    # (P, L, 2)
    ok = labelled[:, _LIMB_A] & labelled[:, _LIMB_B]
    vec = b - a
    length = np.linalg.norm(vec, axis=-1)
    ok &= length > 1e-6
    unit = np.where(ok[..., None], vec / np.maximum(length, 1e-6)[..., None], 0.0)
    # Along-limb coordinate t and perpendicular distance of every cell, (P, L, h, w).
    rx = gx - a[..., 0, None, None]
    ry = gy - a[..., 1, None, None]
    t = rx * unit[..., 0, None, None] + ry * unit[..., 1, None, None]
    perp = np.abs(rx * unit[..., 1, None, None] - ry * unit[..., 0, None, None])
    on = (perp <= width) & (t >= -_PAF_END_MARGIN) & (t <= length[..., None, None] + _PAF_END_MARGIN)
    on &= ok[..., None, None]
    count = on.sum(0, dtype=np.float32)                      # (L, h, w)
    onf = on.astype(np.float32)
    denom = np.maximum(count, 1.0)
    pafs[0::2] = np.einsum("plhw,pl->lhw", onf, unit[..., 0]) / denom
    pafs[1::2] = np.einsum("plhw,pl->lhw", onf, unit[..., 1]) / denom


def _render_enc3d(enc: np.ndarray, weight: np.ndarray, d2: np.ndarray, kp3d_mm: np.ndarray | None,
                  n: int, radius: float) -> None:
    # Triplet j of a cell belongs to the person whose neck or joint j (body joints only) is
    # nearest; triplets of the other joints follow the nearest neck alone.
    neck = d2[:, NECK]                                        # (P, h, w)
    body = np.minimum(neck[:, None], d2[:, :NUM_BODY])       # (P, 14, h, w)
    owner_body = body.argmin(0)                               # (14, h, w)
    owner_neck = neck.argmin(0)                               # (h, w)
    r2 = radius * radius
    covered_body = np.take_along_axis(body, owner_body[None], 0)[0] <= r2
    covered_neck = np.take_along_axis(neck, owner_neck[None], 0)[0] <= r2
    if kp3d_mm is None:
        return
    rest = skeleton.NUM_JOINTS_3D - NUM_BODY
    owner = np.concatenate([owner_body, np.broadcast_to(owner_neck, (rest,) + owner_neck.shape)])
    covered = np.concatenate([covered_body, np.broadcast_to(covered_neck, (rest,) + covered_neck.shape)])
    pose_m = (np.asarray(kp3d_mm, dtype=np.float64).reshape(n, skeleton.NUM_JOINTS_3D, 3) / 1000.0)
    known = np.isfinite(pose_m).all(-1).reshape(-1)           # (P * 21,)
    flat = owner * skeleton.NUM_JOINTS_3D + np.arange(skeleton.NUM_JOINTS_3D)[:, None, None]
    sup = covered & known[flat]                               # (21, h, w)
    values = np.nan_to_num(pose_m).astype(np.float32).reshape(-1, 3)
    for c in range(3):
        enc[c::3] = np.where(sup, values[flat, c], 0.0)
    weight[:] = np.repeat(sup.astype(np.float32), 3, axis=0)
