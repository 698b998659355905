"""Rest pose and forward kinematics of the 21-joint XNect skeleton (skeleton.JOINTS_3D).

Conventions (shared by the skeleton fit, the synthetic pose generator and the BVH writer):
- Axes are camera axes: x right, y down, z forward (away from the camera), millimetres.
- The rest pose is a T-pose facing the camera (looking along -z): arms straight out sideways,
  legs straight down, spine and head straight up, feet pointing forward and slightly down.
  The person's right side is on the image's left (-x).
- Joint i's rotation (a rotation vector, radians) is *local*: it turns every bone that hangs
  below joint i, in the frame of i's parent. Global orientation G_i = G_parent(i) @ R(angles[i]);
  position p_i = p_parent(i) + G_parent(i) @ offset_i, offset_i = bone_lengths[i] * REST_DIRS[i].
- Leaf joints (head top, hands, feet) have no children, so their rotation has no effect.
- The root (pelvis, skeleton.ROOT_3D) takes its global orientation from `root_rot`;
  angles[ROOT_3D] is ignored by `fk` (the fit stores the root rotation there for output).
"""
from __future__ import annotations

import numpy as np

from .. import skeleton

__all__ = ["REST_DIRS", "DEFAULT_BONE_LENGTHS_MM", "JOINT_RANGES_DEG", "LEAF_JOINTS", "FK_ORDER", "rest_offsets", "fk",
           "bone_lengths_of", "rotvec_to_matrix"]

PARENTS = np.array(skeleton.PARENTS_3D)
ROOT = skeleton.ROOT_3D

_UP, _DOWN, _RIGHT, _LEFT = (0.0, -1.0, 0.0), (0.0, 1.0, 0.0), (-1.0, 0.0, 0.0), (1.0, 0.0, 0.0)
_FOOT = tuple(np.array([0.0, 0.45, -0.9]) / np.linalg.norm([0.0, 0.45, -0.9]))

# Unit direction of each bone (parent -> joint) in the rest pose; the root has none.
REST_DIRS = np.array([
    _UP,                    # 0 head_top  (from head)
    _UP,                    # 1 neck      (from spine)
    _RIGHT, _RIGHT, _RIGHT,  # 2-4 right shoulder, elbow, wrist
    _LEFT, _LEFT, _LEFT,     # 5-7 left shoulder, elbow, wrist
    _RIGHT, _DOWN, _DOWN,    # 8-10 right hip, knee, ankle
    _LEFT, _DOWN, _DOWN,     # 11-13 left hip, knee, ankle
    (0.0, 0.0, 0.0),         # 14 pelvis (root)
    _UP,                     # 15 spine   (from pelvis)
    _UP,                     # 16 head    (from neck)
    _RIGHT, _LEFT,           # 17-18 hands (from wrists)
    _FOOT, _FOOT,            # 19-20 feet  (from ankles)
])

# Average adult bone lengths (mm), indexed by the child joint; about 1.7 m tall.
DEFAULT_BONE_LENGTHS_MM = np.array([
    110.0, 250.0,            # head->head_top, spine->neck
    170.0, 290.0, 255.0,     # neck->r_shoulder, upper arm, forearm
    170.0, 290.0, 255.0,
    120.0, 430.0, 420.0,     # pelvis->r_hip, thigh, shank
    120.0, 430.0, 420.0,
    0.0, 250.0, 120.0,       # root, pelvis->spine, neck->head
    85.0, 85.0,              # wrist->hand
    150.0, 150.0,            # ankle->foot
])

# Human-ish ranges of each joint's local rotation, as extrinsic x, y, z Euler angles (degrees)
# from the T-pose (e.g. r_shoulder z < 0 lowers the right arm). The synthetic pose generator
# samples from them; the skeleton fit uses them as soft limits.
JOINT_RANGES_DEG: dict[int, tuple[tuple[float, float], ...]] = {
    15: ((-15, 35), (-30, 30), (-15, 15)),    # spine: bend forward/back, twist, side bend
    1: ((-15, 25), (-30, 30), (-15, 15)),     # neck (carries the shoulders)
    16: ((-30, 40), (-60, 60), (-20, 20)),    # head
    2: ((-60, 60), (-90, 40), (-85, 60)),     # r_shoulder: twist, swing forward (<0), lower (<0)
    5: ((-60, 60), (-40, 90), (-60, 85)),     # l_shoulder: swing forward (>0), lower (>0)
    3: ((-20, 20), (-140, 0), (-10, 10)),     # r_elbow flexes forward
    6: ((-20, 20), (0, 140), (-10, 10)),      # l_elbow
    4: ((-30, 30), (-30, 30), (-30, 30)),     # wrists (move the hands only)
    7: ((-30, 30), (-30, 30), (-30, 30)),
    8: ((-100, 25), (-30, 30), (-15, 45)),    # r_hip: flex forward (<0), twist, abduct (>0)
    11: ((-100, 25), (-30, 30), (-45, 15)),   # l_hip: abduct (<0)
    9: ((0, 130), (-5, 5), (-5, 5)),          # knees flex backwards
    12: ((0, 130), (-5, 5), (-5, 5)),
    10: ((-25, 25), (-15, 15), (-15, 15)),    # ankles (move the feet only)
    13: ((-25, 25), (-15, 15), (-15, 15)),
}
LEAF_JOINTS = tuple(j for j in range(skeleton.NUM_JOINTS_3D) if j not in skeleton.PARENTS_3D)


def _topological_order() -> tuple[int, ...]:
    order, todo = [ROOT], [j for j in range(len(PARENTS)) if j != ROOT]
    while todo:
        for j in list(todo):
            if PARENTS[j] in order:
                order.append(j)
                todo.remove(j)
    return tuple(order)


FK_ORDER = _topological_order()  # parents before children


def rest_offsets(bone_lengths: np.ndarray) -> np.ndarray:
    """(..., 21) bone lengths (mm) -> (..., 21, 3) rest-pose offsets from each joint's parent."""
    return np.asarray(bone_lengths, dtype=np.float64)[..., None] * REST_DIRS


def rotvec_to_matrix(rotvec: np.ndarray) -> np.ndarray:
    """(..., 3) rotation vectors -> (..., 3, 3) matrices (Rodrigues, vectorised)."""
    rotvec = np.asarray(rotvec, dtype=np.float64)
    theta = np.linalg.norm(rotvec, axis=-1)[..., None, None]
    k = np.zeros(rotvec.shape + (3,))
    x, y, z = rotvec[..., 0], rotvec[..., 1], rotvec[..., 2]
    k[..., 0, 1], k[..., 0, 2], k[..., 1, 2] = -z, y, -x
    k[..., 1, 0], k[..., 2, 0], k[..., 2, 1] = z, -y, x
    small = theta < 1e-8
    t = np.where(small, 1.0, theta)
    a = np.where(small, 1.0 - theta**2 / 6, np.sin(t) / t)
    b = np.where(small, 0.5 - theta**2 / 24, (1 - np.cos(t)) / t**2)
    return np.eye(3) + a * k + b * (k @ k)


def fk(angles: np.ndarray, root_rot: np.ndarray, root_pos: np.ndarray,
       bone_lengths: np.ndarray) -> np.ndarray:
    """Forward kinematics, batched over any leading dims.

    Args:
        angles: (..., 21, 3) local rotation vectors (angles[ROOT] ignored).
        root_rot: (..., 3) global rotation vector of the pelvis.
        root_pos: (..., 3) pelvis position (mm).
        bone_lengths: (..., 21) or (21,) bone lengths (mm), indexed by child joint.
    Returns:
        (..., 21, 3) joint positions (mm).
    """
    angles = np.asarray(angles, dtype=np.float64)
    lead = angles.shape[:-2]
    local = rotvec_to_matrix(angles)
    offsets = np.broadcast_to(rest_offsets(bone_lengths), lead + (len(PARENTS), 3))
    glob = np.empty(lead + (len(PARENTS), 3, 3))
    pos = np.empty(lead + (len(PARENTS), 3))
    glob[..., ROOT, :, :] = rotvec_to_matrix(np.broadcast_to(root_rot, lead + (3,)))
    pos[..., ROOT, :] = np.broadcast_to(root_pos, lead + (3,))
    for j in FK_ORDER[1:]:
        p = PARENTS[j]
        pos[..., j, :] = pos[..., p, :] + np.einsum("...ij,...j->...i", glob[..., p, :, :], offsets[..., j, :])
        glob[..., j, :, :] = glob[..., p, :, :] @ local[..., j, :, :]
    return pos


def bone_lengths_of(kp3d: np.ndarray) -> np.ndarray:
    """(..., 21, 3) joint positions -> (..., 21) parent-to-joint distances (0 at the root)."""
    kp3d = np.asarray(kp3d, dtype=np.float64)
    parents = np.where(PARENTS < 0, ROOT, PARENTS)
    return np.linalg.norm(kp3d - kp3d[..., parents, :], axis=-1)
