"""Merge the MoveNet teacher's people (``movenet_labels``) into training records.

- Ground truth wins for its joints; the teacher fills the joints a labelled person lacks, as
  labels where it is confident, as uncertain joints (masked around them, never taught as
  background) where it is not.
- People the ground truth does not label (LSPET's bystanders, all people of unlabelled images)
  become labelled people when the teacher is sure of them.
- Doubtful people become ignore regions (their box), never negatives.

Teacher people are mapped to our 19 joints: COCO-17 directly, the neck at the shoulders'
midpoint, the head top (not in COCO-17) estimated above the face as an uncertain joint.
"""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np

from .. import skeleton
from .data import HEAD_TOP, J2D, ImageRecord, joint_box

LOG = logging.getLogger(__name__)

CONFIDENT_JOINT = 0.3    # Thunder keypoint confidence of a labelled joint
FILL_JOINT = 0.5         # ... of a joint filled into a ground-truth person
UNCERTAIN_JOINT = 0.05   # below this a teacher joint is dropped
LABEL_PERSON = 0.08      # teacher person score (MultiPose score x mean Thunder confidence)
IGNORE_PERSON = 0.02     # doubtful people from here up become ignore regions
MIN_CONFIDENT_JOINTS = 5
MULTIPOSE_MAX_PEOPLE = 6  # MultiPose returns at most this many: an image with as many may hold more
# weight_2d of an uncertain joint: below 0.5, which the trainer reads as "mask, don't teach"
UNCERTAIN_WEIGHT = 0.25
FACE = tuple(skeleton.JOINTS_2D.index(n) for n in ("nose", "r_eye", "l_eye", "r_ear", "l_ear"))
# Teacher people matched to ground truth: this share of the compared joints within
# MATCH_DIST x the person's size.
MATCH_SHARE = 0.5
MATCH_DIST = 0.2


def teacher_to_ours(kp17: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """COCO-17 x, y, confidence -> (19, 3) ours with vis 2 (confident) / 1 (uncertain) / 0, and
    the (19,) weight_2d: 1 for confident joints, UNCERTAIN_WEIGHT for uncertain ones."""
    conf = np.zeros(J2D, np.float32)
    xy = np.zeros((J2D, 2), np.float32)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        xy[ours], conf[ours] = kp17[c, :2], kp17[c, 2]
    rs, ls = skeleton.JOINTS_2D.index("r_shoulder"), skeleton.JOINTS_2D.index("l_shoulder")
    xy[skeleton.NECK] = 0.5 * (xy[rs] + xy[ls])
    conf[skeleton.NECK] = min(conf[rs], conf[ls])
    face = [j for j in FACE if conf[j] >= CONFIDENT_JOINT]
    if face and conf[skeleton.NECK] >= CONFIDENT_JOINT:
        centre = xy[face].mean(0)
        xy[HEAD_TOP] = centre + 0.6 * (centre - xy[skeleton.NECK])
        conf[HEAD_TOP] = UNCERTAIN_JOINT  # a guess: masked around, never taught
    vis = np.where(conf >= CONFIDENT_JOINT, 2.0, np.where(conf >= UNCERTAIN_JOINT, 1.0, 0.0)).astype(np.float32)
    weight = np.where(vis == 2, 1.0, np.where(vis == 1, UNCERTAIN_WEIGHT, 0.0)).astype(np.float32)
    return np.concatenate([np.where(vis[:, None] > 0, xy, 0.0), vis[:, None]], 1), weight


def person_size(kp: np.ndarray) -> float:
    b = joint_box(kp)
    return float(max(b[2], b[3], 1.0))


def match_people(gt: np.ndarray, teacher: np.ndarray) -> dict[int, int]:
    """Greedy one-to-one match of teacher people (T, 19, 3) to ground-truth people (P, 19, 3):
    {teacher index: gt index} for pairs agreeing on MATCH_SHARE of the joints both label."""
    pairs = []
    for g in range(len(gt)):
        size = person_size(gt[g])
        for t in range(len(teacher)):
            both = (gt[g, :, 2] > 0) & (teacher[t, :, 2] >= 2)
            if both.sum() < 3:
                continue
            d = np.linalg.norm(gt[g, both, :2] - teacher[t, both, :2], axis=1)
            share = float((d < MATCH_DIST * size).mean())
            if share >= MATCH_SHARE:
                pairs.append((share, g, t))
    out: dict[int, int] = {}
    used: set[int] = set()
    for share, g, t in sorted(pairs, reverse=True):
        if g not in used and t not in out:
            out[t] = g
            used.add(g)
    return out


def _box_poly(box: np.ndarray, grow: float = 0.1) -> np.ndarray:
    x0, y0, x1, y1 = box
    m = grow * max(x1 - x0, y1 - y0)
    return np.array([[x0 - m, y0 - m], [x1 + m, y0 - m], [x1 + m, y1 + m], [x0 - m, y1 + m]], np.float32)


def attach_movenet(records: list[ImageRecord], labels, add_people: bool, key_of=None,
                   teacher_only: bool = False) -> dict[str, int]:
    """Merge the teacher people of `labels` (movenet_labels.MoveNetLabels, keyed by file name) into
    records, in place. add_people: the ground truth leaves people unlabelled (LSPET), so sure
    teacher people become labelled people; otherwise (COCO, which labels everyone it can) they
    only become ignore regions. key_of(record): its key in labels (default: the image's file
    name in its dataset, which packs of re-encoded images keep).
    Crowds: MultiPose finds at most MULTIPOSE_MAX_PEOPLE people, so where it finds that many,
    LSPET keeps its ignore region around the labelled person (no bystanders are added), and
    an unlabelled image (teacher_only) is ignored outside the people found."""
    stats = {"images": 0, "matched": 0, "added": 0, "ignored": 0, "filled_joints": 0, "crowded": 0}
    for rec in records:
        key = key_of(rec) if key_of else (rec.original_name or Path(rec.path).name)
        if key not in labels:
            continue
        stats["images"] += 1
        kp17, boxes, scores = labels.people(key)
        crowded = len(scores) >= MULTIPOSE_MAX_PEOPLE
        stats["crowded"] += int(crowded)
        keep = scores >= IGNORE_PERSON
        kp17, boxes, scores = kp17[keep], boxes[keep], scores[keep]
        ours = [teacher_to_ours(k) for k in kp17]
        t_kp = np.stack([o[0] for o in ours]) if ours else np.zeros((0, J2D, 3), np.float32)
        matched = match_people(rec.kp2d, t_kp)
        for t, g in matched.items():
            stats["matched"] += 1
            stats["filled_joints"] += _fill(rec, g, t_kp[t], kp17[t])
        new = []
        for t in range(len(t_kp)):
            if t in matched:
                continue
            sure = scores[t] >= LABEL_PERSON and (t_kp[t, :, 2] >= 2).sum() >= MIN_CONFIDENT_JOINTS
            if add_people and sure and (teacher_only or not crowded):
                new.append(t)
            else:
                rec.ignore_polys.append(_box_poly(boxes[t]))
                stats["ignored"] += 1
        if new:
            _add_people(rec, [ours[t] for t in new], [f"{key}#movenet{t}" for t in new])
            stats["added"] += len(new)
        if teacher_only and crowded and new:
            sure_boxes = boxes[new]
            lo, hi = sure_boxes[:, :2].min(0), sure_boxes[:, 2:].max(0)
            m = 0.1 * (hi - lo).max()
            rec.ignore_outside = (lo[0] - m, lo[1] - m, hi[0] + m, hi[1] + m)
        elif add_people and not crowded:
            rec.ignore_outside = None  # the bystanders are labelled or ignored now
        if len(rec.keys):
            rec.labelled_2d = rec.labelled_person.all(0)
    return stats


def _fill(rec: ImageRecord, g: int, t_kp: np.ndarray, kp17: np.ndarray) -> int:
    """Teacher joints where ground-truth person g has none: labelled if the teacher is confident
    (and the source does not label that joint type at all, or FILL_JOINT), else uncertain."""
    filled = 0
    conf = np.zeros(J2D, np.float32)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        conf[ours] = kp17[c, 2]
    for j in range(J2D):
        if rec.kp2d[g, j, 2] > 0 or t_kp[j, 2] <= 0:
            continue
        typed = rec.labelled_2d[j]  # the source labels this joint type: its absence means something
        threshold = FILL_JOINT if typed else CONFIDENT_JOINT
        if t_kp[j, 2] >= 2 and conf[j] >= threshold and j != HEAD_TOP:
            rec.kp2d[g, j] = t_kp[j]
            rec.weight_2d[g, j] = 1.0
            filled += 1
        else:
            rec.kp2d[g, j] = (t_kp[j, 0], t_kp[j, 1], 1.0)
            rec.weight_2d[g, j] = UNCERTAIN_WEIGHT
        rec.labelled_person[g, j] = True
    return filled


def _add_people(rec: ImageRecord, people: list[tuple[np.ndarray, np.ndarray]], keys: list[str]) -> None:
    kp = np.stack([p[0] for p in people]).astype(np.float32)
    wt = np.stack([p[1] for p in people]).astype(np.float32)
    n = len(people)
    rec.kp2d = np.concatenate([rec.kp2d, kp])
    rec.weight_2d = np.concatenate([rec.weight_2d, wt])
    rec.kp3d_mm = np.concatenate([rec.kp3d_mm, np.full((n, skeleton.NUM_JOINTS_3D, 3), np.nan, np.float32)])
    rec.conf_3d = np.concatenate([rec.conf_3d, np.zeros(n, np.float32)])
    # a teacher person's joints are confident, uncertain (masked) or absent (not in view)
    known = np.ones((n, J2D), bool)
    known[:, HEAD_TOP] = kp[:, HEAD_TOP, 2] > 0  # no estimate: the image's head-top channel is masked
    rec.labelled_person = np.concatenate([rec.labelled_person, known])
    rec.boxes = np.concatenate([rec.boxes, np.stack([joint_box(k) for k in kp])])
    rec.masks = list(rec.masks) + [None] * n
    rec.keys = list(rec.keys) + keys


def teacher_only_records(folder: str | Path, labels, source: str) -> list[ImageRecord]:
    """Records of unlabelled images (a folder of the user's, extra_people): the teacher's people
    are the labels. Keys of video frames ('clip.mp4#120') resolve to the sampled JPEGs."""
    folder = Path(folder)
    recs = []
    frames = Path(labels.meta.get("frames", "")) if labels.meta.get("frames") else None
    for i, key in enumerate(labels.keys):
        if "#" in key and frames is not None:
            name, frame = key.rsplit("#", 1)
            path = frames / name / f"{int(frame):06d}.jpg"
        else:
            path = folder / key
        w, h = (int(v) for v in labels.sizes[i])
        rec = ImageRecord(path=str(path), width=w, height=h, kp2d=np.zeros((0, J2D, 3), np.float32),
                          labelled_2d=np.ones(J2D, bool), source=source, keys=[])
        recs.append(rec)
    keys = {r.path: k for r, k in zip(recs, labels.keys)}
    attach_movenet(recs, labels, add_people=True, key_of=lambda r: keys[r.path], teacher_only=True)
    # an image of people where the teacher is sure of no one would teach them as background
    return [r for r in recs if len(r.keys)]


def background_ignore(labels, folder: str | Path) -> dict[str, list[np.ndarray]]:
    """Ignore polygons of the people the teacher finds in person-free images, by image path."""
    out: dict[str, list[np.ndarray]] = {}
    for key in labels.keys:
        _, boxes, scores = labels.people(key)
        polys = [_box_poly(b) for b, s in zip(boxes, scores) if s >= IGNORE_PERSON]
        if polys:
            out[str(Path(folder) / key)] = polys
    return out
