"""Joint sets, limbs, parents and maps to other skeletons. Data only; indices are 0-based.

2D set (19 joints): XNect's 14 body joints (head top ... left ankle, spec §2.3) followed by the
five COCO face points, so results convert to COCO-17 and LSP-14 without guessing.

3D set (21 joints): XNect's 21 joints; the first 17 are the MuPoTS-3D / MPI-INF-3DHP order.
The first 14 joints of both sets are the same body joints in the same order.
"""
from __future__ import annotations

JOINTS_2D: tuple[str, ...] = (
    "head_top", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "nose", "r_eye", "l_eye", "r_ear", "l_ear",
)
NUM_JOINTS_2D = len(JOINTS_2D)

JOINTS_3D: tuple[str, ...] = (
    "head_top", "neck",
    "r_shoulder", "r_elbow", "r_wrist",
    "l_shoulder", "l_elbow", "l_wrist",
    "r_hip", "r_knee", "r_ankle",
    "l_hip", "l_knee", "l_ankle",
    "pelvis", "spine", "head",
    "r_hand", "l_hand", "r_foot", "l_foot",
)
NUM_JOINTS_3D = len(JOINTS_3D)
ROOT_3D = JOINTS_3D.index("pelvis")
NECK = JOINTS_2D.index("neck")

# Parent of each 3D joint (-1 for the root); spec §2.3, identical to VNect's table.
PARENTS_3D: tuple[int, ...] = (16, 15, 1, 2, 3, 1, 5, 6, 14, 8, 9, 14, 11, 12, -1, 14, 1, 4, 7, 10, 13)

# Limbs of the 2D tree; one part affinity field (x, y channels) per limb, in this order.
LIMBS_2D: tuple[tuple[int, int], ...] = (
    (1, 0),                       # neck -> head top
    (1, 2), (2, 3), (3, 4),       # right arm
    (1, 5), (5, 6), (6, 7),       # left arm
    (1, 8), (8, 9), (9, 10),      # right leg
    (1, 11), (11, 12), (12, 13),  # left leg
    (1, 14),                      # neck -> nose
    (14, 15), (15, 17),           # right eye, right ear
    (14, 16), (16, 18),           # left eye, left ear
)
NUM_LIMBS_2D = len(LIMBS_2D)
NUM_PAF_CHANNELS = 2 * NUM_LIMBS_2D

# 3D joint index of each 2D joint, -1 where the 3D set has no such joint (face points).
JOINT_3D_OF_2D: tuple[int, ...] = tuple(range(14)) + (-1, -1, -1, -1, -1)


def _flip_map(names: tuple[str, ...]) -> tuple[int, ...]:
    def mirror(n: str) -> str:
        if n.startswith("r_"):
            return "l_" + n[2:]
        if n.startswith("l_"):
            return "r_" + n[2:]
        return n
    return tuple(names.index(mirror(n)) for n in names)


# Index of the mirrored joint, for horizontal-flip augmentation.
FLIP_2D: tuple[int, ...] = _flip_map(JOINTS_2D)
FLIP_3D: tuple[int, ...] = _flip_map(JOINTS_3D)

# COCO-17 keypoint order and where each comes from in our 2D set.
COCO17: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_ear", "right_ear",
    "left_shoulder", "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
    "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle",
)
COCO17_FROM_2D: tuple[int, ...] = (14, 16, 15, 18, 17, 5, 2, 6, 3, 7, 4, 11, 8, 12, 9, 13, 10)
COCO17_BODY: tuple[int, ...] = tuple(range(5, 17))  # the 12 body joints in COCO-17 indices
COCO_SIGMAS: tuple[float, ...] = (
    0.026, 0.025, 0.025, 0.035, 0.035, 0.079, 0.079, 0.072, 0.072, 0.062, 0.062,
    0.107, 0.107, 0.087, 0.087, 0.089, 0.089,
)
COCO_SKELETON_1BASED: tuple[tuple[int, int], ...] = (
    (16, 14), (14, 12), (17, 15), (15, 13), (12, 13), (6, 12), (7, 13), (6, 7), (6, 8), (7, 9),
    (8, 10), (9, 11), (2, 3), (1, 2), (1, 3), (2, 4), (3, 5), (4, 6), (5, 7),
)

# LSP-14 order (r ankle ... neck, head top) and where each comes from in our 2D set.
LSP14: tuple[str, ...] = (
    "r_ankle", "r_knee", "r_hip", "l_hip", "l_knee", "l_ankle",
    "r_wrist", "r_elbow", "r_shoulder", "l_shoulder", "l_elbow", "l_wrist", "neck", "head_top",
)
LSP14_FROM_2D: tuple[int, ...] = tuple(JOINTS_2D.index(n) for n in LSP14)
LSP14_FROM_3D: tuple[int, ...] = tuple(JOINTS_3D.index(n) for n in LSP14)

# MuPoTS-3D / MPI-INF-3DHP 17-joint order: the first 17 of our 3D set.
MUPOTS17_FROM_3D: tuple[int, ...] = tuple(range(17))

# Drawing colours per limb (BGR), left side cool, right side warm.
LIMB_COLORS_BGR: tuple[tuple[int, int, int], ...] = tuple(
    (0, 128, 255) if ("r_" in JOINTS_2D[b]) else (255, 128, 0) if ("l_" in JOINTS_2D[b]) else (0, 220, 0)
    for _, b in LIMBS_2D
)
# Distinct colours per track id (BGR); index with track_id % len.
TRACK_COLORS_BGR: tuple[tuple[int, int, int], ...] = (
    (75, 25, 230), (75, 180, 60), (25, 225, 255), (200, 130, 0), (48, 130, 245), (180, 30, 145),
    (240, 240, 70), (230, 50, 240), (60, 245, 210), (190, 190, 250), (128, 128, 0), (255, 190, 230),
)
