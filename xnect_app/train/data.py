"""Training datasets: LSPET, COCO person keypoints, backgrounds, teacher labels, and the builder.

Every dataset yields `Sample`s in one convention (skeleton.JOINTS_2D / JOINTS_3D order):
2D in image pixels with a label state per joint (0 unlabelled, 1 labelled but occluded,
2 visible), 3D root-relative in mm in camera axes (x right, y down, z forward), NaN if unknown.

Readers parse annotations into light `ImageRecord`s (labels, no pixels) and read the image only
in `load_sample`, so the whole index fits in memory. This module imports torch lazily-safe:
the teacher venv (mediapipe, no torch) uses the readers too.
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from .. import skeleton

try:  # torch is absent in the teacher venv; the readers do not need it
    from torch.utils.data import Dataset as _TorchDataset
except ImportError:  # pragma: no cover
    _TorchDataset = object  # type: ignore[misc,assignment]

LOG = logging.getLogger(__name__)

J2D = skeleton.NUM_JOINTS_2D
J3D = skeleton.NUM_JOINTS_3D
FACE_2D = tuple(range(14, 19))
HEAD_TOP = skeleton.JOINTS_2D.index("head_top")
R_SHOULDER = skeleton.JOINTS_2D.index("r_shoulder")
L_SHOULDER = skeleton.JOINTS_2D.index("l_shoulder")

# Evaluation-only sets: never part of training (coco_dev is the development/validation set).
EVAL_ONLY_SOURCES = ("coco_dev",)
TRAIN_SOURCES = ("lspet", "coco_train_extra")
# Unlabelled photos of people: trained on only through the MoveNet teacher's labels.
TEACHER_ONLY_SOURCES = ("extra_people",)


@dataclass
class Sample:
    """One training image and its people.

    image: (H, W, 3) uint8 BGR.
    kp2d: (P, 19, 3) float32 [x, y, vis] in image pixels; vis 0 unlabelled, 1 occluded, 2 visible.
    kp3d_mm: (P, 21, 3) float32 root-relative (pelvis = 0) camera-axes mm; NaN where unknown.
    labelled_2d: (19,) bool, joint types this sample labels at all (mask the other channels).
    ignore_mask: (H, W) uint8, 1 where unlabelled people are (don't punish detections there).
    source: where it came from ("lspet", "coco_train_extra", "composite:lspet", ...).
    weight_2d: (P, 19) float32 label confidence (1 for ground truth, teacher visibility for
        teacher-filled joints, 0 when unlabelled).
    conf_3d: (P,) float32 teacher confidence of kp3d_mm (0 where there is no 3D).
    """

    image: np.ndarray
    kp2d: np.ndarray
    kp3d_mm: np.ndarray
    labelled_2d: np.ndarray
    ignore_mask: np.ndarray
    source: str
    weight_2d: np.ndarray | None = None
    conf_3d: np.ndarray | None = None

    def __post_init__(self) -> None:
        p = len(self.kp2d)
        if self.weight_2d is None:
            self.weight_2d = (self.kp2d[..., 2] > 0).astype(np.float32) if p else np.zeros((0, J2D), np.float32)
        if self.conf_3d is None:
            self.conf_3d = np.zeros((p,), np.float32)

    @property
    def num_people(self) -> int:
        return len(self.kp2d)

    def to_dict(self) -> dict:
        """Plain dict (for DataLoader collate functions)."""
        return {k: getattr(self, k) for k in (
            "image", "kp2d", "kp3d_mm", "labelled_2d", "ignore_mask", "source", "weight_2d", "conf_3d")}


@dataclass
class ImageRecord:
    """Labels of one image, without its pixels.

    keys: one key per person, used to look up teacher labels ("im00001.jpg", "0000123.jpg#ann_id").
    masks: optional per-person soft masks as (box x0, y0, side, (m, m) uint8 mask of that square).
    ignore_polys: list of (K, 2) polygons in pixels covering unlabelled people / crowds.
    """

    path: str
    width: int
    height: int
    kp2d: np.ndarray
    labelled_2d: np.ndarray
    source: str
    keys: list[str]
    kp3d_mm: np.ndarray = None  # type: ignore[assignment]
    weight_2d: np.ndarray = None  # type: ignore[assignment]
    conf_3d: np.ndarray = None  # type: ignore[assignment]
    labelled_person: np.ndarray = None  # type: ignore[assignment]  # (P, 19) joint types known per person
    boxes: np.ndarray = None  # type: ignore[assignment]  # (P, 4) x, y, w, h of each person
    masks: list = field(default_factory=list)
    ignore_polys: list = field(default_factory=list)
    ignore_outside: tuple | None = None  # (x0, y0, x1, y1): everything outside is unlabelled
    original_name: str | None = None  # the image's file name in its dataset (packs re-encode them)

    def __post_init__(self) -> None:
        p = len(self.kp2d)
        if self.kp3d_mm is None:
            self.kp3d_mm = np.full((p, J3D, 3), np.nan, np.float32)
        if self.weight_2d is None:
            self.weight_2d = (self.kp2d[..., 2] > 0).astype(np.float32)
        if self.conf_3d is None:
            self.conf_3d = np.zeros((p,), np.float32)
        if self.labelled_person is None:
            self.labelled_person = np.repeat(self.labelled_2d[None], p, axis=0)
        if self.boxes is None:
            self.boxes = np.stack([joint_box(k) for k in self.kp2d]) if p else np.zeros((0, 4), np.float32)
        if not self.masks:
            self.masks = [None] * p


def joint_box(kp: np.ndarray) -> np.ndarray:
    """x, y, w, h around the labelled joints of one person (zeros if none)."""
    lab = kp[:, 2] > 0
    if not lab.any():
        return np.zeros(4, np.float32)
    lo, hi = kp[lab, :2].min(0), kp[lab, :2].max(0)
    return np.array([lo[0], lo[1], hi[0] - lo[0], hi[1] - lo[1]], np.float32)


def load_image(path: str) -> np.ndarray:
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        raise FileNotFoundError(f"cannot read image {path}")
    return img


def ignore_mask_of(record: ImageRecord, shape: tuple[int, int]) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    if record.ignore_outside is not None:
        x0, y0, x1, y1 = (int(round(v)) for v in record.ignore_outside)
        mask[:] = 1
        mask[max(y0, 0):max(y1, 0), max(x0, 0):max(x1, 0)] = 0
    for poly in record.ignore_polys:
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 1)
    return mask


def load_sample(record: ImageRecord) -> Sample:
    """Read the image of a record and return its (unaugmented) Sample."""
    img = load_image(record.path)
    if img.shape[:2] != (record.height, record.width):
        raise ValueError(f"{record.path}: image is {img.shape[1]}x{img.shape[0]}, "
                         f"annotations say {record.width}x{record.height}")
    return Sample(image=img, kp2d=record.kp2d.copy(), kp3d_mm=record.kp3d_mm.copy(),
                  labelled_2d=record.labelled_2d.copy(), ignore_mask=ignore_mask_of(record, img.shape[:2]),
                  source=record.source, weight_2d=record.weight_2d.copy(), conf_3d=record.conf_3d.copy())


# ---------------------------------------------------------------------------------------- readers

def lspet_to_ours(joints_lsp: np.ndarray, width: int, height: int) -> np.ndarray:
    """(14, 3) LSPET [x, y, visible] in LSP order -> (19, 3) ours.

    LSPET's flag is 1 for annotated joints and 0 for joints that were not annotated (almost all
    lie outside the image, some at (0, 0)); the crowd-sourced labels do not mark occlusion, so
    annotated joints become vis 2 and the rest vis 0.
    """
    out = np.zeros((J2D, 3), np.float32)
    j = np.asarray(joints_lsp, np.float32)
    for k, ours in enumerate(skeleton.LSP14_FROM_2D):
        x, y, flag = j[k]
        if flag > 0 and not (x == 0 and y == 0):
            out[ours] = (x, y, 2.0)
    return out


LSPET_HELDOUT = 500  # LSPET's last images (im09501 ... im10000): held apart from training, for PCK


def read_lspet(root: str | os.PathLike, ignore_context: bool = True, split: str = "train") -> list[ImageRecord]:
    """LSPET records. LSPET labels one person per image, but many images show other (unlabelled)
    people; with ignore_context the image outside the labelled person's box (grown by 25% of its
    size on each side) is an ignore region, so those people are not taught as background
    (teacher labels, teacher2d.attach_movenet, replace it). Backgrounds, composites and COCO supply
    the negatives. split: "train" (all but the last LSPET_HELDOUT images), "heldout" or "all"."""
    if split not in ("train", "heldout", "all"):
        raise ValueError(f"unknown LSPET split {split!r}")
    root = Path(root)
    ann = json.loads((root / "annotations.json").read_text())
    names = ann.get("joint_names")
    expected = ["right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
                "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
                "left_wrist", "neck", "head_top"]
    if names is not None and list(names) != expected:
        raise ValueError(f"{root}: unexpected LSPET joint order {names}")
    labelled = np.zeros(J2D, bool)
    labelled[list(skeleton.LSP14_FROM_2D)] = True
    recs = []
    images = ann["images"]
    if split != "all":  # by the original file names, so packs of a subset hold out the same images
        held = {f"im{i:05d}.jpg" for i in range(10001 - LSPET_HELDOUT, 10001)}
        images = [im for im in images
                  if (Path(im.get("original_file", im["file"])).name in held) == (split == "heldout")]
    for im in images:
        kp = lspet_to_ours(np.asarray(im["joints"]), im["width"], im["height"])
        rec = ImageRecord(path=str(root / im["file"]), width=im["width"], height=im["height"],
                          kp2d=kp[None], labelled_2d=labelled.copy(), source="lspet",
                          keys=[Path(im.get("original_file", im["file"])).name],
                          original_name=Path(im.get("original_file", im["file"])).name)
        if ignore_context:
            x, y, w, h = rec.boxes[0]
            m = 0.25 * max(w, h, 10.0)
            rec.ignore_outside = (x - m, y - m, x + w + m, y + h + m)
        recs.append(rec)
    return recs


def coco_to_ours(keypoints: list[float] | np.ndarray) -> np.ndarray:
    """COCO-17 flat [x, y, v] * 17 -> (19, 3) ours. Neck = shoulder midpoint (vis = min of the
    two) when both shoulders are labelled; head_top stays unlabelled."""
    k = np.asarray(keypoints, np.float32).reshape(17, 3)
    out = np.zeros((J2D, 3), np.float32)
    for c, ours in enumerate(skeleton.COCO17_FROM_2D):
        if k[c, 2] > 0:
            out[ours] = k[c]
    rs, ls = out[R_SHOULDER], out[L_SHOULDER]
    if rs[2] > 0 and ls[2] > 0:
        out[skeleton.NECK] = (0.5 * (rs[0] + ls[0]), 0.5 * (rs[1] + ls[1]), min(rs[2], ls[2]))
    return out


def _coco_ignore_polys(ann: dict) -> list[np.ndarray]:
    seg = ann.get("segmentation")
    if isinstance(seg, list) and seg:
        return [np.asarray(p, np.float32).reshape(-1, 2) for p in seg if len(p) >= 6]
    x, y, w, h = ann["bbox"]  # RLE or no segmentation: its box
    return [np.array([[x, y], [x + w, y], [x + w, y + h], [x, y + h]], np.float32)]


def read_coco(root_or_json: str | os.PathLike, source: str | None = None) -> list[ImageRecord]:
    """Any COCO person-keypoints folder (person_keypoints.json + images) or the json itself.

    Persons with keypoints become labelled people; crowd regions and persons with no keypoints
    become ignore regions (segmentation polygons, else their box).
    """
    p = Path(root_or_json)
    json_path = p if p.is_file() else p / "person_keypoints.json"
    if not json_path.is_file():
        raise FileNotFoundError(f"no COCO person keypoints json at {p}")
    root = json_path.parent
    source = source or root.name
    data = json.loads(json_path.read_text())
    by_image: dict[int, list[dict]] = {}
    for a in data["annotations"]:
        if a.get("category_id", 1) == 1:
            by_image.setdefault(a["image_id"], []).append(a)
    labelled = np.ones(J2D, bool)
    labelled[HEAD_TOP] = False
    recs = []
    for im in data["images"]:
        anns = by_image.get(im["id"], [])
        people = [a for a in anns if not a.get("iscrowd", 0) and a.get("num_keypoints", 1) > 0]
        ignore = [poly for a in anns if a.get("iscrowd", 0) or a.get("num_keypoints", 1) == 0
                  for poly in _coco_ignore_polys(a)]
        kp = (np.stack([coco_to_ours(a["keypoints"]) for a in people]) if people
              else np.zeros((0, J2D, 3), np.float32))
        name = Path(im.get("original_file", im["file_name"])).name  # packs re-encode, keys stay
        boxes = np.array([a["bbox"] for a in people], np.float32).reshape(-1, 4)
        recs.append(ImageRecord(path=str(root / im["file_name"]), width=im["width"], height=im["height"],
                                kp2d=kp, labelled_2d=labelled.copy(), source=source,
                                keys=[f"{name}#{a['id']}" for a in people], boxes=boxes,
                                ignore_polys=ignore, original_name=name))
    return recs


def list_images(folder: str | os.PathLike) -> list[str]:
    exts = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
    return sorted(str(f) for f in Path(folder).rglob("*") if f.suffix.lower() in exts)


# ------------------------------------------------------------------------------ teacher labels

def attach_teacher(records: list[ImageRecord], teacher, min_agree: float = 0.75) -> dict[str, int]:
    """Merge teacher labels (teacher.TeacherLabels) into records, in place.

    Ground truth wins for 2D: the teacher fills only joint types the source does not label
    (face points on LSPET) and adds 3D. People whose teacher 2D disagrees with ground truth
    (fewer than `min_agree` of the compared joints within 0.5 torso lengths; LSPET's crowd-sourced
    labels are too noisy for a tighter test) get nothing: that is a teacher failure.
    """
    n_people = n_3d = n_2d = 0
    for rec in records:
        for i, key in enumerate(rec.keys):
            n_people += 1
            lab = teacher.get(key)
            if lab is None or not (lab.agree05 >= min_agree):
                continue
            if np.isfinite(lab.kp3d_mm).all():
                rec.kp3d_mm[i] = lab.kp3d_mm
                rec.conf_3d[i] = lab.conf
                n_3d += 1
            fill = ~rec.labelled_2d & (lab.kp2d[:, 2] > 0)
            if fill.any():
                rec.kp2d[i, fill] = lab.kp2d[fill]
                rec.weight_2d[i, fill] = lab.weight[fill]
                rec.labelled_person[i] |= ~rec.labelled_2d & lab.known_2d
                n_2d += 1
            if lab.mask is not None:
                rec.masks[i] = lab.mask
        # a joint type counts as labelled for the image only if every person has it
        if len(rec.keys):
            rec.labelled_2d = rec.labelled_person.all(0)
    return {"people": n_people, "with_3d": n_3d, "with_teacher_2d": n_2d}


# ------------------------------------------------------------------------------ training dataset

def background_sample(path: str, ignore_polys: list[np.ndarray] | None = None) -> Sample:
    """A person-free image: every channel is labelled (as background), except in ignore_polys
    (what a teacher took for people there)."""
    img = load_image(path)
    ignore = np.zeros(img.shape[:2], np.uint8)
    for poly in ignore_polys or ():
        cv2.fillPoly(ignore, [np.round(poly).astype(np.int32)], 1)
    return Sample(image=img, kp2d=np.zeros((0, J2D, 3), np.float32),
                  kp3d_mm=np.zeros((0, J3D, 3), np.float32), labelled_2d=np.ones(J2D, bool),
                  ignore_mask=ignore, source="backgrounds")


def fit_to_size(s: Sample, size: tuple[int, int], zoom: float) -> Sample:
    """Resize a sample (and labels) so it just covers `size` (w, h) times `zoom`."""
    h, w = s.image.shape[:2]
    f = zoom * max(size[0] / w, size[1] / h)
    interp = cv2.INTER_AREA if f < 1 else cv2.INTER_LINEAR
    s.image = cv2.resize(s.image, None, fx=f, fy=f, interpolation=interp)
    s.ignore_mask = cv2.resize(s.ignore_mask, (s.image.shape[1], s.image.shape[0]), interpolation=cv2.INTER_NEAREST)
    s.kp2d = s.kp2d.copy()
    s.kp2d[..., :2] *= f
    return s


class TrainingDataset(_TorchDataset):
    """Augmented training samples from real images, composites and negatives.

    Index i < len(real) is real image i (COCO images repeated `coco_repeat` times so the few
    multi-person images are seen often); each item becomes a composite with `composite_prob`
    and a pure background (negative) with `negative_prob`. An item is drawn by an int index or
    an (index, draw) pair from `DrawSampler`; its randomness comes from (seed, index, draw), so
    every draw of the same image differs, in any worker. With a bare index it comes from
    (seed, epoch, index, torch's per-worker seed).
    """

    def __init__(self, real: list[ImageRecord], backgrounds: list[str], size: tuple[int, int] = (256, 256),
                 composite_prob: float = 0.5, negative_prob: float = 0.03, seed: int = 0,
                 max_composite_people: int = 5, as_dict: bool = False,
                 background_ignore: dict[str, list[np.ndarray]] | None = None):
        from .augment import AugmentConfig
        for r in real:
            if r.source in EVAL_ONLY_SOURCES:
                raise ValueError(f"{r.source} is evaluation data and must not be used for training")
        self.real = real
        self.backgrounds = backgrounds
        self.cfg = AugmentConfig(size=tuple(size))
        self.composite_prob = composite_prob if backgrounds else 0.0
        self.negative_prob = negative_prob if backgrounds else 0.0
        self.seed = seed
        self.epoch = 0
        self.max_people = max_composite_people
        self.as_dict = as_dict
        self.background_ignore = background_ignore or {}
        # people worth pasting: >= 8 labelled joints and >= 40 px tall, per source
        from .augment import person_height
        self.pool: dict[str, list[tuple[int, int]]] = {}
        seen: set[int] = set()
        for ri, r in enumerate(real):
            if id(r) in seen:  # repeated records are pasted no more often than others
                continue
            seen.add(id(r))
            for pi in range(len(r.keys)):
                k = r.kp2d[pi]
                if (k[:, 2] > 0).sum() >= 8 and person_height(k) >= 40:
                    self.pool.setdefault(r.source, []).append((ri, pi))
        self.pool_sources = sorted(self.pool)

    def __len__(self) -> int:
        return len(self.real)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _rng(self, index: int, draw: int | None = None) -> np.random.Generator:
        if draw is not None:
            return np.random.default_rng([self.seed, index, draw])
        try:
            import torch
            base = int(torch.initial_seed()) % (2 ** 32)
        except ImportError:  # pragma: no cover
            base = 0
        return np.random.default_rng([self.seed, self.epoch, index, base])

    def raw(self, index: int, rng: np.random.Generator) -> tuple[Sample, bool]:
        """The sample before augmentation (real image, composite or negative) and whether it was
        built at the output size (composites)."""
        u = rng.random()
        if u < self.negative_prob:
            return self._background(rng), False
        if u < self.negative_prob + self.composite_prob and self.pool:
            return self.make_composite(rng), True
        return load_sample(self.real[index]), False

    def make_composite(self, rng: np.random.Generator) -> Sample:
        from .composite import composite, cut_person
        # one source per composite so its labelled joint types stay whole
        src = self.pool_sources[rng.choice(len(self.pool_sources), p=self._source_weights())]
        pool = self.pool[src]
        if rng.random() < 0.75 or not self.real:
            canvas = self._background(rng)
        else:  # onto another training image of the same source
            same = [i for i, _ in pool]
            canvas = load_sample(self.real[same[rng.integers(len(same))]])
        # built at about the output size, so pasted heights are output pixels
        canvas = fit_to_size(canvas, self.cfg.size, rng.uniform(1.0, 1.5))
        n = int(rng.integers(1, self.max_people + 1))
        cuts = []
        for _ in range(4 * n):
            if len(cuts) == n:
                break
            ri, pi = pool[rng.integers(len(pool))]
            c = cut_person(self.real[ri], pi)
            if c is not None:
                cuts.append(c)
        from .augment import sample_target_height
        out = composite(canvas, cuts, rng, near_height=sample_target_height(rng, self.cfg))
        out.source = f"composite:{src}"
        return out

    def _background(self, rng: np.random.Generator) -> Sample:
        path = self.backgrounds[rng.integers(len(self.backgrounds))]
        return background_sample(path, self.background_ignore.get(path))

    def _source_weights(self) -> np.ndarray:
        # LSPET has far more people; COCO people are fewer but label the face and real crowds
        w = np.array([0.35 if s.startswith("coco") else 1.0 for s in self.pool_sources]) * \
            np.array([len(self.pool[s]) for s in self.pool_sources]) ** 0.5
        return w / w.sum()

    def __getitem__(self, index: int | tuple[int, int]):
        from .augment import augment
        index, draw = (int(index[0]), int(index[1])) if isinstance(index, tuple) else (int(index), None)
        rng = self._rng(index, draw)
        raw, fit = self.raw(index, rng)
        s = augment(raw, rng, self.cfg, fit=fit)
        return s.to_dict() if self.as_dict else s


class DrawSampler:
    """Random items with replacement, `num_samples` per epoch, each as (index, draw): the draw
    number never repeats within a run, so no two draws of an image get the same augmentation,
    whichever worker makes them and however many epochs pass (the dataset reads its randomness
    from the pair). `seed` should change with the rank and the step a run resumes at."""

    def __init__(self, n_items: int, num_samples: int, seed: int = 0):
        self.n_items, self.num_samples = n_items, num_samples
        self.rng = np.random.default_rng(seed)
        self.draws = int(seed) * 1_000_003 % (2 ** 62)

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        for i in self.rng.integers(self.n_items, size=self.num_samples):
            self.draws += 1
            yield int(i), self.draws


def load_teacher_cache(teacher_cache: str | os.PathLike | None, name: str):
    """TeacherLabels for dataset `name` from data_cache/teacher_<name>.npz, or None."""
    if not teacher_cache:
        return None
    path = Path(teacher_cache) / f"teacher_{name}.npz"
    if not path.is_file():
        LOG.info("no teacher labels at %s: training %s without 3D", path, name)
        return None
    from .teacher import TeacherLabels
    return TeacherLabels.load(path)


def read_training_source(folder: str | os.PathLike, name: str,
                         teacher_cache: str | os.PathLike | None = "data_cache") -> list[ImageRecord]:
    """Records of one training set (`name` "lspet" or a COCO folder's name) with its cached teacher
    labels merged in (`attach_teacher`)."""
    recs = read_lspet(folder) if name == "lspet" else read_coco(folder, source=name)
    teacher = load_teacher_cache(teacher_cache, name)
    if teacher is not None:
        stats = attach_teacher(recs, teacher)
        LOG.info("%s: teacher labels for %d of %d people", name, stats["with_3d"], stats["people"])
    return recs


def load_movenet_cache(teacher_cache: str | os.PathLike | None, name: str):
    """MoveNet teacher people of image set `name` (data_cache/movenet_<name>.npz), or None."""
    if not teacher_cache:
        return None
    from .movenet_labels import MoveNetLabels, cache_path
    path = cache_path(teacher_cache, name)
    return MoveNetLabels.load(path) if path.is_file() else None


def build_training_dataset(data_root: str | os.PathLike = "../shared/data", size: tuple[int, int] = (256, 256),
                           composite_prob: float = 0.5, teacher_cache: str | os.PathLike | None = "data_cache",
                           seed: int = 0, coco_repeat: int = 10, negative_prob: float = 0.03,
                           as_dict: bool = False, own_data: list[tuple[str, str]] = (),
                           own_repeat: int = 1) -> TrainingDataset:
    """LSPET + coco_train_extra (+ teacher labels) with compositing on backgrounds and augmentation.

    With MoveNet teacher labels in `teacher_cache` (`xnect-train label`), every person is
    labelled or ignored (teacher2d.attach_movenet), and extra_people's photos join the real images.
    own_data: (folder, cache name) of the user's own labelled footage, each image `own_repeat` times.
    coco_dev is evaluation data and is never read here. `size` is the output (width, height).
    """
    from .teacher2d import attach_movenet, background_ignore, teacher_only_records

    root = Path(data_root)
    real: list[ImageRecord] = []
    for name in TRAIN_SOURCES:
        folder = root / name
        if not folder.is_dir():
            LOG.warning("training set %s not found, skipped", folder)
            continue
        recs = read_training_source(folder, name, teacher_cache)
        movenet = load_movenet_cache(teacher_cache, name)
        if movenet is not None:
            stats = attach_movenet(recs, movenet, add_people=name == "lspet")
            LOG.info("%s: MoveNet labels %s", name, stats)
        real.extend(recs * (coco_repeat if name.startswith("coco") else 1))
    for name in TEACHER_ONLY_SOURCES:
        movenet = load_movenet_cache(teacher_cache, name)
        if movenet is not None and (root / name).is_dir():
            recs = teacher_only_records(root / name / "images", movenet, name)
            LOG.info("%s: %d images with %d MoveNet people", name, len(recs), sum(len(r.keys) for r in recs))
            real.extend(recs * coco_repeat)
    for folder, name in own_data:
        movenet = load_movenet_cache(teacher_cache, name)
        if movenet is None:
            raise FileNotFoundError(f"no teacher labels for {folder} in {teacher_cache}: "
                                    f"run `xnect-train label {folder} --name {name}` first")
        recs = teacher_only_records(folder, movenet, f"own:{name}")
        LOG.info("%s: %d images with %d MoveNet people", folder, len(recs), sum(len(r.keys) for r in recs))
        real.extend(recs * own_repeat)
    if not real:
        raise FileNotFoundError(f"no training data under {root} (expected {', '.join(TRAIN_SOURCES)})")
    bg = list_images(root / "backgrounds") if (root / "backgrounds").is_dir() else []
    bg_movenet = load_movenet_cache(teacher_cache, "backgrounds")
    ignore = background_ignore(bg_movenet, root / "backgrounds") if bg_movenet is not None else {}
    return TrainingDataset(real, bg, size=size, composite_prob=composite_prob, negative_prob=negative_prob,
                           seed=seed, as_dict=as_dict, background_ignore=ignore)


# ------------------------------------------------------------------------------ visual check

def draw_sample(s: Sample) -> np.ndarray:
    """The sample's image with its skeletons: filled dots visible, hollow dots occluded, red tint
    on the ignore mask, a "3D" tag on people with teacher 3D."""
    img = s.image.copy()
    if s.ignore_mask.any():
        red = np.zeros_like(img)
        red[..., 2] = 255
        m = s.ignore_mask.astype(bool)
        img[m] = (0.6 * img[m] + 0.4 * red[m]).astype(np.uint8)
    for p in range(s.num_people):
        kp = s.kp2d[p]
        for (a, b), col in zip(skeleton.LIMBS_2D, skeleton.LIMB_COLORS_BGR):
            if kp[a, 2] > 0 and kp[b, 2] > 0:
                cv2.line(img, (int(kp[a, 0]), int(kp[a, 1])), (int(kp[b, 0]), int(kp[b, 1])), col, 1, cv2.LINE_AA)
        for j in range(J2D):
            if kp[j, 2] > 0:
                cv2.circle(img, (int(kp[j, 0]), int(kp[j, 1])), 2, (255, 255, 255), -1 if kp[j, 2] >= 2 else 1)
        if np.isfinite(s.kp3d_mm[p]).all() and kp[skeleton.NECK, 2] > 0:
            cv2.putText(img, "3D", (int(kp[skeleton.NECK, 0]) + 3, int(kp[skeleton.NECK, 1])),
                        cv2.FONT_HERSHEY_PLAIN, 0.8, (0, 255, 255), 1)
    cv2.putText(img, s.source[:24], (2, 10), cv2.FONT_HERSHEY_PLAIN, 0.8, (255, 255, 255), 1)
    return img


def save_preview_grid(dataset, path: str | os.PathLike, n: int = 16, cols: int = 4, start: int = 0,
                      stride: int = 613) -> str:
    """Save a PNG grid of n augmented samples with their labels drawn (a visual label check)."""
    tiles = []
    for k in range(n):
        s = dataset[(start + k * stride) % len(dataset)]
        if isinstance(s, dict):
            s = Sample(**s)
        tiles.append(draw_sample(s))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    tiles += [np.zeros((h, w, 3), np.uint8)] * (-len(tiles) % cols)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0] + 2, 0, w - t.shape[1] + 2, cv2.BORDER_CONSTANT) for t in tiles]
    rows = [np.hstack(tiles[i:i + cols]) for i in range(0, len(tiles), cols)]
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    tmp = path + ".tmp.png"
    cv2.imwrite(tmp, np.vstack(rows))
    os.replace(tmp, path)
    return path


def main(argv: list[str] | None = None) -> int:
    import argparse
    import sys
    ap = argparse.ArgumentParser(description="Save a PNG grid of augmented training samples with labels drawn.")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--teacher-cache", default="data_cache")
    ap.add_argument("--size", type=int, nargs=2, default=(256, 256), metavar=("W", "H"))
    ap.add_argument("--composite-prob", type=float, default=0.5)
    ap.add_argument("-n", type=int, default=16)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", default="runs/train_data_preview.png")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        ds = build_training_dataset(args.data_root, size=tuple(args.size), composite_prob=args.composite_prob,
                                    teacher_cache=args.teacher_cache, seed=args.seed)
    except (FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(save_preview_grid(ds, args.out, n=args.n))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
