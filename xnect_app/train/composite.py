"""Multi-person composites in the spirit of MuCo-3DHP: labelled people cut out and pasted.

People are cut out with a soft mask: the teacher's BlazePose segmentation where it exists
(restricted to a dilated pose silhouette, so other people in the crop stay out), else a pose
silhouette (limb capsules + torso hull + head disc) with feathered edges. 1-5 people are pasted
on a background (or on another training image) at varied depths and sorted far -> near, so
nearer people occlude farther ones; joints of a farther person that end up under a nearer
person's mask become vis 1 (labelled, occluded).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .. import skeleton
from .augment import flip_labels, person_height
from .data import ImageRecord, Sample, load_image

_J = skeleton.JOINTS_2D.index
_TORSO = [_J(n) for n in ("r_shoulder", "l_shoulder", "l_hip", "r_hip", "neck")]
_HEAD = [_J(n) for n in ("head_top", "nose", "r_eye", "l_eye", "r_ear", "l_ear")]


@dataclass
class Cutout:
    """One person cut out of its image: patch, soft alpha mask and labels in patch pixels."""

    image: np.ndarray      # (h, w, 3) uint8
    alpha: np.ndarray      # (h, w) float32 in [0, 1]
    kp2d: np.ndarray       # (19, 3)
    kp3d_mm: np.ndarray    # (21, 3)
    weight_2d: np.ndarray  # (19,)
    conf_3d: float
    labelled: np.ndarray   # (19,) bool: joint types labelled for this person
    source: str


def pose_mask(kp: np.ndarray, shape: tuple[int, int], height: float) -> np.ndarray:
    """Soft silhouette from the labelled joints: limb capsules, torso hull, head disc."""
    m = np.zeros(shape, np.uint8)
    t = max(2, int(round(0.09 * height)))
    lab = kp[:, 2] > 0
    pts = np.round(kp[:, :2]).astype(np.int32)
    for a, b in skeleton.LIMBS_2D:
        if lab[a] and lab[b]:
            cv2.line(m, tuple(pts[a]), tuple(pts[b]), 255, t, cv2.LINE_AA)
    torso = [j for j in _TORSO if lab[j]]
    if len(torso) >= 3:
        cv2.fillConvexPoly(m, cv2.convexHull(pts[torso]), 255)
    head = [j for j in _HEAD if lab[j]]
    if head:
        c = kp[head, :2].mean(0)
        r = max(2, int(round(0.08 * height)))
        if lab[_J("neck")] and lab[_J("head_top")]:
            c = 0.5 * (kp[_J("neck"), :2] + kp[_J("head_top"), :2])
            r = int(max(r, 0.45 * np.linalg.norm(kp[_J("neck"), :2] - kp[_J("head_top"), :2])))
        cv2.circle(m, tuple(int(v) for v in np.round(c)), r, 255, -1, cv2.LINE_AA)
    for j in np.flatnonzero(lab):
        cv2.circle(m, tuple(pts[j]), t // 2 + 1, 255, -1, cv2.LINE_AA)
    return m


def _feather(m: np.ndarray, px: float) -> np.ndarray:
    k = int(2 * round(px) + 1)
    return cv2.GaussianBlur(m.astype(np.float32) / 255.0, (k, k), 0) if k > 1 else m.astype(np.float32) / 255.0


def person_alpha(image_shape: tuple[int, int], kp: np.ndarray, seg: tuple | None = None) -> np.ndarray:
    """Soft alpha (H, W) of one person in its image."""
    h = max(person_height(kp), 10.0)
    pm = pose_mask(kp, image_shape, h)
    if seg is not None:
        x0, y0, side, m = seg
        if m.max() > 127:
            # segmentation square -> image, kept only near the pose (other people in the crop)
            s = m.shape[0] / side
            M = np.array([[1 / s, 0, x0], [0, 1 / s, y0]], np.float32)
            segm = cv2.warpAffine(m, M, (image_shape[1], image_shape[0]), flags=cv2.INTER_LINEAR)
            near = cv2.dilate(pm, np.ones((3, 3), np.uint8), iterations=max(1, int(0.12 * h)))
            fused = np.minimum(segm, near)
            if (fused > 127).sum() > 0.3 * (pm > 127).sum():
                return _feather(fused, max(1.0, 0.01 * h))
    pm = cv2.dilate(pm, np.ones((3, 3), np.uint8), iterations=max(1, int(0.03 * h)))
    return _feather(pm, max(1.0, 0.025 * h))


def cut_person(rec: ImageRecord, i: int, image: np.ndarray | None = None) -> Cutout | None:
    """Cut person i of a record out of its image (None if too few labelled joints)."""
    kp = rec.kp2d[i]
    if (kp[:, 2] > 0).sum() < 6:
        return None
    img = load_image(rec.path) if image is None else image
    H, W = img.shape[:2]
    alpha = person_alpha((H, W), kp, rec.masks[i] if rec.masks else None)
    ys, xs = np.nonzero(alpha > 0.02)
    if len(xs) == 0:
        return None
    x0, x1, y0, y1 = xs.min(), xs.max() + 1, ys.min(), ys.max() + 1
    k = kp.copy()
    k[:, 0] -= x0
    k[:, 1] -= y0
    ph, pw = y1 - y0, x1 - x0
    outside = (k[:, 0] < 0) | (k[:, 1] < 0) | (k[:, 0] > pw - 1) | (k[:, 1] > ph - 1)
    k[outside] = 0.0  # labels that fall off the cut-out are unlabelled
    wt = rec.weight_2d[i].copy()
    wt[outside] = 0.0
    return Cutout(image=img[y0:y1, x0:x1].copy(), alpha=alpha[y0:y1, x0:x1].copy(), kp2d=k,
                  kp3d_mm=rec.kp3d_mm[i].copy(), weight_2d=wt, conf_3d=float(rec.conf_3d[i]),
                  labelled=rec.labelled_person[i].copy(), source=rec.source)


def paste(canvas: Sample, cut: Cutout, scale: float, foot_xy: tuple[float, float], flip: bool,
          labelled: np.ndarray) -> Sample:
    """Paste a cut-out person into a sample (in place on the canvas arrays), nearer than all
    people already there: their joints under the new person's mask become occluded (vis 1)."""
    img, alpha, kp, k3, wt = cut.image, cut.alpha, cut.kp2d.copy(), cut.kp3d_mm.copy(), cut.weight_2d.copy()
    if flip:
        img, alpha = img[:, ::-1], alpha[:, ::-1]
        kp, k3, wt = (a[0] for a in flip_labels(kp[None], k3[None], wt[None], img.shape[1]))
    ph, pw = img.shape[:2]
    nw, nh = max(1, int(round(pw * scale))), max(1, int(round(ph * scale)))
    interp = cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR
    img = cv2.resize(np.ascontiguousarray(img), (nw, nh), interpolation=interp)
    alpha = cv2.resize(np.ascontiguousarray(alpha), (nw, nh), interpolation=cv2.INTER_LINEAR)
    # place so the patch's bottom centre lands on foot_xy
    ox = int(round(foot_xy[0] - nw / 2))
    oy = int(round(foot_xy[1] - nh))
    kp[:, :2] = kp[:, :2] * scale + (ox, oy)
    kp[kp[:, 2] <= 0, :2] = 0.0
    H, W = canvas.image.shape[:2]
    x0, y0, x1, y1 = max(ox, 0), max(oy, 0), min(ox + nw, W), min(oy + nh, H)
    if x1 <= x0 or y1 <= y0:
        return canvas
    a = alpha[y0 - oy:y1 - oy, x0 - ox:x1 - ox, None]
    region = canvas.image[y0:y1, x0:x1].astype(np.float32)
    canvas.image[y0:y1, x0:x1] = np.round(region * (1 - a) + img[y0 - oy:y1 - oy, x0 - ox:x1 - ox] * a).astype(np.uint8)
    full = np.zeros((H, W), np.float32)
    full[y0:y1, x0:x1] = a[..., 0]
    # occlusion of people already on the canvas
    old = canvas.kp2d
    if len(old):
        xi = np.clip(np.round(old[..., 0]).astype(int), 0, W - 1)
        yi = np.clip(np.round(old[..., 1]).astype(int), 0, H - 1)
        inside = (old[..., 0] >= 0) & (old[..., 0] <= W - 1) & (old[..., 1] >= 0) & (old[..., 1] <= H - 1)
        covered = inside & (old[..., 2] == 2) & (full[yi, xi] > 0.5)
        old[..., 2][covered] = 1.0
    canvas.ignore_mask[full > 0.5] = 0  # a labelled person now covers what was ignored there
    canvas.kp2d = np.concatenate([old, kp[None]]) if len(old) else kp[None].astype(np.float32)
    canvas.kp3d_mm = np.concatenate([canvas.kp3d_mm, k3[None]]).astype(np.float32)
    canvas.weight_2d = np.concatenate([canvas.weight_2d, wt[None]]).astype(np.float32)
    canvas.conf_3d = np.concatenate([canvas.conf_3d, [cut.conf_3d]]).astype(np.float32)
    canvas.labelled_2d = canvas.labelled_2d & labelled
    return canvas


def composite(canvas: Sample, cuts: list[Cutout], rng: np.random.Generator,
              near_height: float | None = None) -> Sample:
    """Paste cut-outs onto `canvas` (modified) at random depths, far -> near.

    Depth sets the size: a person at relative depth z is drawn 1/z as tall as the nearest one,
    who is `near_height` px tall (default 0.35-0.9 of the canvas height). Feet lie lower in the
    image for nearer people (a ground plane seen from about eye height).
    """
    H, W = canvas.image.shape[:2]
    if not cuts:
        return canvas
    depths = np.sort(rng.uniform(1.0, 3.0, len(cuts)))[::-1]  # far first
    near_h = near_height if near_height is not None else rng.uniform(0.35, 0.9) * H
    horizon = rng.uniform(0.2, 0.5) * H
    for z, cut in zip(depths, cuts):
        h_src = max(person_height(cut.kp2d), 1.0)
        target = near_h * depths.min() / z
        scale = min(target / h_src, 3.0)  # never blow a small person up more than 3x
        # feet: further people closer to the horizon
        foot_y = horizon + (H - horizon) * (depths.min() / z) * rng.uniform(0.8, 1.0)
        margin = cut.kp2d[cut.kp2d[:, 2] > 0, 1].max() * scale
        foot_y = float(np.clip(foot_y + (cut.image.shape[0] * scale - margin), 0, H * 1.1))
        foot_x = rng.uniform(0.05, 0.95) * W
        canvas = paste(canvas, cut, scale, (foot_x, foot_y), bool(rng.random() < 0.5), cut.labelled)
    return canvas
