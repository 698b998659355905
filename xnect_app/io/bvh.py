"""BVH motion files from the Stage III skeleton fit, one skeleton per track.

Rest pose, offsets and joint-angle conventions come from `pose.kinematics`: joint i's local
rotation turns the bones below it, G_i = G_parent @ R_i, p_child = p_i + G_i @ offset_child, which
is exactly BVH's rule. The root (pelvis) carries the global rotation stored in
joint_angles[ROOT_3D] and the camera-space pelvis position.

Axes: BVH tools expect y up, so camera space (x right, y down, z forward) is turned 180 degrees
about x: (x, y, z) -> (x, -y, -z). Units are centimetres. Rotations are written as
"Zrotation Xrotation Yrotation" (R = Rz @ Rx @ Ry, degrees), the common BVH order. Leaf joints
(head top, hands, feet) become End Sites.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
from scipy.spatial.transform import Rotation

from .. import skeleton
from ..pose import kinematics
from ..types import FrameResult
from .sinks import Sink, commit, temp_path_for
from .sources import Frame

LOG = logging.getLogger(__name__)

ROOT = skeleton.ROOT_3D
PARENTS = skeleton.PARENTS_3D
NAMES = skeleton.JOINTS_3D
CHILDREN: tuple[tuple[int, ...], ...] = tuple(
    tuple(c for c, p in enumerate(PARENTS) if p == j) for j in range(len(PARENTS)))
LEAVES = frozenset(j for j in range(len(PARENTS)) if not CHILDREN[j])
# Camera axes -> y-up BVH axes (a proper rotation: 180 degrees about x).
FLIP = np.diag([1.0, -1.0, -1.0])
EULER = "ZXY"  # intrinsic, matches the channel order below
ROT_CHANNELS = "Zrotation Xrotation Yrotation"


def bvh_joint_order() -> list[int]:
    """Joints that get channels, in the depth-first order they appear in the file."""
    order: list[int] = []

    def visit(j: int) -> None:
        order.append(j)
        for c in CHILDREN[j]:
            if c not in LEAVES:
                visit(c)
    visit(ROOT)
    return order


def hierarchy_text(bone_lengths_mm: np.ndarray, scale: float = 0.1) -> str:
    """The HIERARCHY section for a skeleton with these bone lengths (mm, indexed by child joint)."""
    offsets = kinematics.rest_offsets(np.asarray(bone_lengths_mm, dtype=np.float64)) @ FLIP.T * scale
    lines = ["HIERARCHY"]

    def fmt(v: np.ndarray) -> str:
        return " ".join(f"{x:.4f}" for x in v)

    def visit(j: int, depth: int) -> None:
        ind = "  " * depth
        if j == ROOT:
            lines.append(f"ROOT {NAMES[j]}")
            lines.append("{")
            lines.append(f"  OFFSET {fmt(np.zeros(3))}")
            lines.append(f"  CHANNELS 6 Xposition Yposition Zposition {ROT_CHANNELS}")
        else:
            lines.append(f"{ind}JOINT {NAMES[j]}")
            lines.append(f"{ind}{{")
            lines.append(f"{ind}  OFFSET {fmt(offsets[j])}")
            lines.append(f"{ind}  CHANNELS 3 {ROT_CHANNELS}")
        for c in CHILDREN[j]:
            if c in LEAVES:
                lines.append(f"{ind}  End Site")
                lines.append(f"{ind}  {{")
                lines.append(f"{ind}    OFFSET {fmt(offsets[c])}")
                lines.append(f"{ind}  }}")
            else:
                visit(c, depth + 1)
        lines.append(f"{ind}}}")
    visit(ROOT, 0)
    return "\n".join(lines) + "\n"


def motion_rows(root_pos_mm: np.ndarray, angles: np.ndarray, scale: float = 0.1) -> np.ndarray:
    """(T, 3) camera-space pelvis positions and (T, 21, 3) rotation vectors (angles[:, ROOT] is
    the global root rotation) -> (T, 3 + 3 * joints) BVH channel values."""
    order = bvh_joint_order()
    pos = np.asarray(root_pos_mm, dtype=np.float64) @ FLIP.T * scale
    rv = np.asarray(angles, dtype=np.float64)[:, order] @ FLIP.T  # C R C^T has rotvec C r
    eul = Rotation.from_rotvec(rv.reshape(-1, 3)).as_euler(EULER, degrees=True).reshape(len(pos), -1)
    return np.concatenate([pos, eul], axis=1)


def write_bvh(path: str | os.PathLike, bone_lengths_mm: np.ndarray, root_pos_mm: np.ndarray,
              angles: np.ndarray, fps: float, scale: float = 0.1) -> Path:
    """Write one skeleton's motion atomically; returns the path."""
    path = Path(path)
    rows = motion_rows(root_pos_mm, angles, scale)
    tmp = temp_path_for(path)
    try:
        with open(tmp, "w", encoding="ascii") as f:
            f.write(hierarchy_text(bone_lengths_mm, scale))
            f.write(f"MOTION\nFrames: {len(rows)}\nFrame Time: {1.0 / fps:.6f}\n")
            for row in rows:
                f.write(" ".join(f"{v:.4f}" for v in row) + "\n")
        commit(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@dataclass
class _Track:
    frames: list[int] = field(default_factory=list)
    root: list[np.ndarray] = field(default_factory=list)
    angles: list[np.ndarray] = field(default_factory=list)
    bones: list[np.ndarray] = field(default_factory=list)


class BvhSink(Sink):
    """Collects each track's fitted joint angles and writes ``<stem>.track<ID>.bvh`` per track on
    a complete close. Every file spans the whole input (frame i of the BVH is input frame i):
    before a track appears its first pose is held, during gaps its last one.

    min_track_frames: tracks seen in fewer frames (flickers) get no file.
    """

    def __init__(self, folder: str | os.PathLike, stem: str, fps: float | None, *,
                 min_track_frames: int = 5, scale: float = 0.1) -> None:
        super().__init__()
        self.folder, self.stem = Path(folder), stem
        self.fps = fps if fps and fps > 0 else 10.0
        self.min_track_frames = min_track_frames
        self.scale = scale
        self.frames_seen = 0
        self.missing_angles = 0
        self._tracks: dict[int, _Track] = {}

    def write(self, frame: Frame, result: FrameResult, rendered: np.ndarray | None = None) -> None:
        self.frames_seen = result.frame_index + 1
        for p in result.people:
            if p.joint_angles is None:
                self.missing_angles += 1
                continue
            angles = np.asarray(p.joint_angles, dtype=np.float64)
            root = np.asarray(p.kp3d_cam_mm[ROOT], dtype=np.float64)
            if not (np.isfinite(angles).all() and np.isfinite(root).all()):
                continue
            bones = (np.asarray(p.bone_lengths_mm, dtype=np.float64) if p.bone_lengths_mm is not None
                     else kinematics.bone_lengths_of(p.kp3d_rel_mm))
            t = self._tracks.setdefault(int(p.track_id), _Track())
            t.frames.append(result.frame_index)
            t.root.append(root)
            t.angles.append(angles)
            t.bones.append(bones)

    def track_ids(self) -> list[int]:
        """Tracks long enough to get a file."""
        need = min(self.min_track_frames, max(1, self.frames_seen))
        return sorted(i for i, t in self._tracks.items() if len(t.frames) >= need)

    def path_for(self, track_id: int) -> Path:
        return self.folder / f"{self.stem}.track{track_id}.bvh"

    def close(self, complete: bool = True) -> None:
        if self.closed:
            return
        self.closed = True
        if not complete:
            return
        if self.missing_angles and not self._tracks:
            LOG.warning("%s: no joint angles in the results (skeleton fitting off?); no BVH written",
                        self.stem)
        ids = self.track_ids()
        if not ids and self._tracks:
            LOG.warning("%s: no track lasted %d frames; no BVH written", self.stem, self.min_track_frames)
        for tid in ids:
            t = self._tracks[tid]
            # index of the sample to show at each input frame: nearest earlier, else the first
            idx = np.searchsorted(np.asarray(t.frames), np.arange(self.frames_seen), side="right") - 1
            idx = np.clip(idx, 0, len(t.frames) - 1)
            bones = np.nanmedian(np.stack(t.bones), axis=0)
            self.paths.append(write_bvh(self.path_for(tid), bones, np.stack(t.root)[idx],
                                        np.stack(t.angles)[idx], self.fps, self.scale))


# --- reading (for checks and for users who want the numbers back) ---------------------------

@dataclass
class BvhJoint:
    name: str
    parent: int
    offset: np.ndarray
    channels: list[str]
    end_site: np.ndarray | None = None  # offset of an End Site child, if any


@dataclass
class Bvh:
    joints: list[BvhJoint]
    frame_time: float
    motion: np.ndarray  # (frames, channels)

    def local_transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames, joints, 3) local translations (offset + position channels) and
        (frames, joints, 3, 3) local rotations from the channels."""
        n, k = len(self.motion), len(self.joints)
        trans = np.zeros((n, k, 3))
        rots = np.broadcast_to(np.eye(3), (n, k, 3, 3)).copy()
        col = 0
        for j, joint in enumerate(self.joints):
            trans[:, j] = joint.offset
            axes, angles = "", []
            for ch in joint.channels:
                axis = "XYZ".index(ch[0].upper())
                if ch.lower().endswith("position"):
                    trans[:, j, axis] += self.motion[:, col]
                else:
                    axes += ch[0].upper()
                    angles.append(self.motion[:, col])
                col += 1
            if axes:
                rots[:, j] = Rotation.from_euler(axes, np.stack(angles, 1), degrees=True).as_matrix()
        return trans, rots

    def global_transforms(self) -> tuple[np.ndarray, np.ndarray]:
        """(frames, joints, 3) world positions and (frames, joints, 3, 3) world rotations."""
        trans, rots = self.local_transforms()
        pos, glob = np.zeros_like(trans), np.zeros_like(rots)
        for j, joint in enumerate(self.joints):  # parents come before children in a BVH
            if joint.parent < 0:
                pos[:, j], glob[:, j] = trans[:, j], rots[:, j]
            else:
                gp = glob[:, joint.parent]
                pos[:, j] = pos[:, joint.parent] + np.einsum("nij,nj->ni", gp, trans[:, j])
                glob[:, j] = gp @ rots[:, j]
        return pos, glob


def read_bvh(path: str | os.PathLike) -> Bvh:
    """Parse a BVH file (raises ValueError naming the file and line on malformed input)."""
    path = Path(path)
    tokens = path.read_text(encoding="ascii").split()
    pos = 0

    def take(expected: str | None = None) -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise ValueError(f"{path}: unexpected end of file")
        tok = tokens[pos]
        pos += 1
        if expected is not None and tok != expected:
            raise ValueError(f"{path}: expected {expected!r}, found {tok!r}")
        return tok

    def floats(k: int) -> np.ndarray:
        return np.array([float(take()) for _ in range(k)])

    joints: list[BvhJoint] = []
    take("HIERARCHY")

    def parse_joint(parent: int) -> None:
        name = take()
        take("{")
        take("OFFSET")
        joint = BvhJoint(name, parent, floats(3), [])
        idx = len(joints)
        joints.append(joint)
        while True:
            tok = take()
            if tok == "CHANNELS":
                joint.channels = [take() for _ in range(int(take()))]
            elif tok == "JOINT":
                parse_joint(idx)
            elif tok == "End":
                take("Site")
                take("{")
                take("OFFSET")
                joint.end_site = floats(3)
                take("}")
            elif tok == "}":
                return
            else:
                raise ValueError(f"{path}: unexpected token {tok!r} in joint {name}")

    take("ROOT")
    parse_joint(-1)
    take("MOTION")
    take("Frames:")
    n = int(take())
    take("Frame")
    take("Time:")
    frame_time = float(take())
    n_ch = sum(len(j.channels) for j in joints)
    values = tokens[pos:]
    if len(values) != n * n_ch:
        raise ValueError(f"{path}: expected {n} frames x {n_ch} channels, found {len(values)} values")
    motion = np.array(values, dtype=np.float64).reshape(n, n_ch)
    return Bvh(joints, frame_time, motion)


def joint_positions_cam_mm(bvh: Bvh, names: Sequence[str] = NAMES, scale: float = 0.1) -> np.ndarray:
    """(frames, len(names), 3) joint positions of a BVH written by `write_bvh`, back in camera
    axes and mm. End Sites stand for the one leaf joint below their parent."""
    world, glob = bvh.global_transforms()
    out = np.full((len(bvh.motion), len(names), 3), np.nan)
    for i, joint in enumerate(bvh.joints):
        if joint.name in names:
            out[:, names.index(joint.name)] = world[:, i]
        if joint.end_site is not None and joint.name in NAMES:
            leaf = [c for c in CHILDREN[NAMES.index(joint.name)] if c in LEAVES]
            if len(leaf) == 1 and NAMES[leaf[0]] in names:
                out[:, names.index(NAMES[leaf[0]])] = world[:, i] + np.einsum(
                    "nij,j->ni", glob[:, i], joint.end_site)
    return out @ FLIP.T / scale
