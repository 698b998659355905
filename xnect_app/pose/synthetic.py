"""Synthetic people: plausible random 3D skeletons, projected with a pinhole camera.

Used by the round-trip tests, the pose benchmark and training (Stage II can be trained on
synthetic 2D/3D pairs). Everything is in camera axes (x right, y down, z forward), millimetres
for 3D and input-frame pixels for 2D, joint orders from `skeleton`.

    rng = np.random.default_rng(0)
    scene = random_scene(rng, 5, image_size=(512, 320))
    scene.kp2d        # (5, 19, 3) x, y, visibility (1 labelled, 0 not)
    scene.kp3d_rel_mm # (5, 21, 3) pelvis-relative
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.spatial.transform import Rotation

from .. import skeleton
from ..types import Intrinsics
from .kinematics import DEFAULT_BONE_LENGTHS_MM, JOINT_RANGES_DEG, fk, rotvec_to_matrix

__all__ = ["SyntheticScene", "random_bone_lengths", "random_angles", "face_points", "project",
           "random_people", "random_scene", "place_people"]

J3 = skeleton.NUM_JOINTS_3D
ROOT = skeleton.ROOT_3D
HEAD = skeleton.JOINTS_3D.index("head")

# Typical resting pose the samples concentrate around (arms down, standing).
_NEUTRAL_DEG: dict[int, tuple[float, float, float]] = {
    2: (0, -10, -70), 5: (0, 10, 70), 3: (0, -30, 0), 6: (0, 30, 0), 9: (0, 0, 0), 12: (0, 0, 0),
    8: (-10, 0, 5), 11: (-10, 0, -5),
}

# Face points in the head frame (mm from the "head" joint; rest: up -y, face -z, right -x).
_FACE_LOCAL_MM = np.array([
    (0.0, 20.0, -100.0),    # nose
    (-32.0, -15.0, -85.0),  # r_eye
    (32.0, -15.0, -85.0),   # l_eye
    (-75.0, 0.0, 0.0),      # r_ear
    (75.0, 0.0, 0.0),       # l_ear
])
_FACE_NORMALS = np.array([(0, 0, -1), (0, 0, -1), (0, 0, -1), (-1, 0, 0), (1, 0, 0)], dtype=float)


@dataclass
class SyntheticScene:
    """People of one synthetic frame. P = number of people."""

    kp2d: np.ndarray          # (P, 19, 3) x, y in pixels, visibility 1/0 (0: outside or hidden)
    kp3d_rel_mm: np.ndarray   # (P, 21, 3) pelvis-relative
    kp3d_cam_mm: np.ndarray   # (P, 21, 3) camera space
    angles: np.ndarray        # (P, 21, 3) local rotation vectors (kinematics.fk convention)
    root_rot: np.ndarray      # (P, 3)
    bone_lengths: np.ndarray  # (P, 21) mm
    intrinsics: Intrinsics
    image_size: tuple[int, int]

    def __len__(self) -> int:
        return len(self.kp2d)


def random_bone_lengths(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, 21) bone lengths: a global scale (sd 7 %) times left/right-symmetric jitter (sd 5 %)."""
    scale = np.clip(rng.normal(1.0, 0.07, size=(n, 1)), 0.8, 1.2)
    jitter = np.clip(rng.normal(1.0, 0.05, size=(n, J3)), 0.85, 1.15)
    for r, l in ((2, 5), (3, 6), (4, 7), (8, 11), (9, 12), (10, 13), (17, 18), (19, 20)):
        jitter[:, l] = jitter[:, r]
    return DEFAULT_BONE_LENGTHS_MM * scale * jitter


def random_angles(rng: np.random.Generator, n: int, spread: float = 1.0,
                  yaw_range_deg: float = 180.0) -> tuple[np.ndarray, np.ndarray]:
    """Random local joint rotations (n, 21, 3) and root rotations (n, 3), rotation vectors.

    Each Euler angle is drawn between its neutral value and a random point of its range
    (Beta(2,2) mixture), so poses are varied but mostly human-looking. `spread` in [0, 1]
    scales the distance from neutral; the root turns about the vertical axis within
    +-yaw_range_deg and tilts by up to 10 degrees.
    """
    angles = np.zeros((n, J3, 3))
    for j, ranges in JOINT_RANGES_DEG.items():
        lo = np.array([r[0] for r in ranges])
        hi = np.array([r[1] for r in ranges])
        neutral = np.clip(np.array(_NEUTRAL_DEG.get(j, (0.0, 0.0, 0.0))), lo, hi)
        target = lo + (hi - lo) * rng.beta(2.0, 2.0, size=(n, 3))
        euler = neutral + spread * rng.uniform(0.0, 1.0, size=(n, 1)) * (target - neutral)
        angles[:, j] = Rotation.from_euler("xyz", euler, degrees=True).as_rotvec()
    tilt = rng.uniform(-10, 10, size=(n, 2))
    yaw = rng.uniform(-yaw_range_deg, yaw_range_deg, size=n)
    root_rot = Rotation.from_euler("xyz", np.stack([tilt[:, 0], yaw, tilt[:, 1]], 1), degrees=True).as_rotvec()
    return angles, root_rot


def _global_head_rotation(angles: np.ndarray, root_rot: np.ndarray) -> np.ndarray:
    """(n, 3, 3) global orientation of the head joint (root -> spine -> neck -> head)."""
    g = rotvec_to_matrix(root_rot)
    for j in (15, 1, HEAD):
        g = g @ rotvec_to_matrix(angles[:, j])
    return g


def face_points(kp3d_cam_mm: np.ndarray, angles: np.ndarray, root_rot: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Nose, eyes, ears (n, 5, 3) in camera mm, and whether each faces the camera (n, 5)."""
    g = _global_head_rotation(angles, root_rot)
    pts = kp3d_cam_mm[:, HEAD, None, :] + np.einsum("nij,kj->nki", g, _FACE_LOCAL_MM)
    normals = np.einsum("nij,kj->nki", g, _FACE_NORMALS)
    to_cam = -pts / np.linalg.norm(pts, axis=-1, keepdims=True)
    facing = np.einsum("nki,nki->nk", normals, to_cam) > np.array([-0.1, -0.1, -0.1, -0.3, -0.3])
    return pts, facing


def project(points_mm: np.ndarray, intrinsics: Intrinsics) -> np.ndarray:
    """(..., 3) camera-space points -> (..., 2) pixels (pinhole)."""
    z = points_mm[..., 2]
    return np.stack([intrinsics.fx * points_mm[..., 0] / z + intrinsics.cx,
                     intrinsics.fy * points_mm[..., 1] / z + intrinsics.cy], axis=-1)


def random_people(rng: np.random.Generator, n: int, spread: float = 1.0,
                  yaw_range_deg: float = 180.0) -> dict[str, np.ndarray]:
    """n random root-relative poses: angles, root_rot, bone_lengths, kp3d_rel_mm (n, 21, 3)."""
    bones = random_bone_lengths(rng, n)
    angles, root_rot = random_angles(rng, n, spread=spread, yaw_range_deg=yaw_range_deg)
    kp3d = fk(angles, root_rot, np.zeros(3), bones)
    return {"angles": angles, "root_rot": root_rot, "bone_lengths": bones, "kp3d_rel_mm": kp3d}


def _standing_height_mm(bones: np.ndarray) -> np.ndarray:
    return bones[:, [0, 1, 9, 10, 15, 16]].sum(1) + 80.0


def place_people(people: dict[str, np.ndarray], centers_px: np.ndarray, depths_mm: np.ndarray,
                 intrinsics: Intrinsics, image_size: tuple[int, int]) -> SyntheticScene:
    """Put root-relative people so their pelvis projects to `centers_px` at `depths_mm`."""
    centers_px = np.asarray(centers_px, dtype=np.float64)
    z = np.asarray(depths_mm, dtype=np.float64)
    root = np.stack([(centers_px[:, 0] - intrinsics.cx) * z / intrinsics.fx,
                     (centers_px[:, 1] - intrinsics.cy) * z / intrinsics.fy, z], 1)
    cam = people["kp3d_rel_mm"] + root[:, None]
    face, facing = face_points(cam, people["angles"], people["root_rot"])
    xy = project(np.concatenate([cam[:, :14], face], 1), intrinsics)
    w, h = image_size
    inside = (xy[..., 0] >= 0) & (xy[..., 0] <= w - 1) & (xy[..., 1] >= 0) & (xy[..., 1] <= h - 1)
    vis = inside & np.concatenate([np.ones((len(z), 14), bool), facing], 1)
    kp2d = np.concatenate([xy, vis[..., None].astype(np.float64)], -1)
    return SyntheticScene(kp2d=kp2d, kp3d_rel_mm=people["kp3d_rel_mm"], kp3d_cam_mm=cam,
                          angles=people["angles"], root_rot=people["root_rot"],
                          bone_lengths=people["bone_lengths"], intrinsics=intrinsics,
                          image_size=image_size)


def random_scene(rng: np.random.Generator, n_people: int, image_size: tuple[int, int] = (512, 320),
                 intrinsics: Intrinsics | None = None, fov_deg: float = 60.0,
                 height_px: tuple[float, float] = (60.0, 250.0),
                 depth_mm: tuple[float, float] = (3000.0, 10000.0),
                 layout: str = "spread", cut_prob: float = 0.0, occlude_prob: float = 0.0,
                 spread: float = 1.0, yaw_range_deg: float = 180.0) -> SyntheticScene:
    """A frame with `n_people` random people.

    Args:
        height_px: range of standing heights in pixels (sets the depth, clipped to depth_mm).
        layout: "spread" gives each person its own horizontal slot (little overlap);
            "grid" gives each a cell of a rows x cols grid (people shrink to their row's
            height; crowds with little overlap); "random" puts them anywhere (overlaps and
            crossings happen).
        cut_prob: chance that a person is pushed partly out of the left/right border.
        occlude_prob: chance that each labelled joint is marked unlabelled (vis 0).
    """
    w, h = image_size
    intrinsics = intrinsics or Intrinsics.from_fov(w, h, fov_deg)
    people = random_people(rng, n_people, spread=spread, yaw_range_deg=yaw_range_deg)
    tall_mm = _standing_height_mm(people["bone_lengths"])
    tall_px = rng.uniform(*height_px, size=n_people)
    z = np.clip(intrinsics.fy * tall_mm / tall_px, *depth_mm)
    tall_px = intrinsics.fy * tall_mm / z
    # Pelvis about 45 % of the height above the feet; keep the body inside vertically if it fits.
    top, bottom = np.zeros(n_people), np.full(n_people, float(h))
    if layout == "spread":
        slot = w / max(n_people, 1)
        u = (rng.permutation(n_people) + rng.uniform(0.3, 0.7, size=n_people)) * slot
    elif layout == "random":
        u = rng.uniform(0.1 * w, 0.9 * w, size=n_people)
    elif layout == "grid":
        cols = int(np.ceil(np.sqrt(n_people * w / h)))
        rows = int(np.ceil(n_people / cols))
        cell = rng.permutation(rows * cols)[:n_people]
        slot_w, slot_h = w / cols, h / rows
        u = (cell % cols + rng.uniform(0.4, 0.6, size=n_people)) * slot_w
        top, bottom = (cell // cols) * slot_h, (cell // cols + 1) * slot_h
        z = np.maximum(z, intrinsics.fy * tall_mm / slot_h)   # shrink people to fit their row
        tall_px = intrinsics.fy * tall_mm / z
    else:
        raise ValueError(f"unknown layout {layout!r}; use 'spread', 'grid' or 'random'")
    cut = rng.uniform(size=n_people) < cut_prob
    u = np.where(cut, np.where(rng.uniform(size=n_people) < 0.5, 0.0, w) + rng.uniform(-0.1, 0.1, n_people) * tall_px, u)
    lo, hi = top + 0.55 * tall_px, bottom - 0.45 * tall_px
    v = np.where(lo < hi, rng.uniform(np.minimum(lo, hi), np.maximum(lo, hi)), (top + bottom) / 2)
    scene = place_people(people, np.stack([u, v], 1), z, intrinsics, image_size)
    if occlude_prob > 0:
        hidden = rng.uniform(size=scene.kp2d.shape[:2]) < occlude_prob
        scene.kp2d[..., 2] = np.where(hidden, 0.0, scene.kp2d[..., 2])
    return scene
