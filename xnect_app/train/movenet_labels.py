"""MoveNet teacher labels for every person of a set of images (or video frames), cached and resumable.

``xnect-train label lspet`` labels a training set under the data root, ``xnect-train label
DIR`` a folder of the user's images or videos (frames are sampled and kept as JPEGs beside the
labels). The cache is ``<out>/movenet_<name>.npz``: one row per person, with the image key, the
COCO-17 keypoints (x, y, confidence in image pixels), the box and the person score; images
without people are listed too, so a re-run skips every image already done.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

LOG = logging.getLogger(__name__)

VIDEO_EXTS = {".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v"}
IMAGE_EXTS = {".jpg", ".jpeg", ".png", ".bmp", ".webp"}
# Sources under the data root and the folder of their images.
DATA_SOURCES = {
    "lspet": "lspet/images",
    "coco_train_extra": "coco_train_extra/images",
    "extra_people": "extra_people/images",
    "backgrounds": "backgrounds",
}
# Images whose licence does not allow training a model others may use commercially.
EXCLUDED_PREFIXES = {"extra_people": ("openpose_",)}
FORMAT = 1


@dataclass
class LabelSettings:
    size: int = 384
    expand: float = 1.5
    min_score: float = 0.05
    refine: bool = True

    def describe(self) -> dict:
        return {"format": FORMAT, "multipose_size": self.size, "thunder_expand": self.expand,
                "min_score": self.min_score, "thunder": self.refine}


def cache_path(out_dir: str | os.PathLike, name: str) -> Path:
    return Path(out_dir) / f"movenet_{name}.npz"


class MoveNetLabels:
    """Cached teacher people of one image set, by image key."""

    def __init__(self, keys: list[str], sizes: np.ndarray, person_image: np.ndarray, keypoints: np.ndarray,
                 boxes: np.ndarray, scores: np.ndarray, meta: dict):
        self.keys = list(keys)
        self.sizes = sizes
        self.person_image = person_image
        self.keypoints = keypoints
        self.boxes = boxes
        self.scores = scores
        self.meta = meta
        self._index = {k: i for i, k in enumerate(self.keys)}
        order = np.argsort(person_image, kind="stable")
        starts = np.searchsorted(person_image[order], np.arange(len(self.keys) + 1))
        self._rows = [order[starts[i]:starts[i + 1]] for i in range(len(self.keys))]

    def __contains__(self, key: str) -> bool:
        return key in self._index

    def __len__(self) -> int:
        return len(self.keys)

    def people(self, key: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(P, 17, 3) keypoints, (P, 4) boxes x0, y0, x1, y1, (P,) scores of an image."""
        rows = self._rows[self._index[key]]
        return self.keypoints[rows], self.boxes[rows], self.scores[rows]

    @classmethod
    def empty(cls, meta: dict) -> "MoveNetLabels":
        return cls([], np.zeros((0, 2), np.int32), np.zeros(0, np.int32), np.zeros((0, 17, 3), np.float32),
                   np.zeros((0, 4), np.float32), np.zeros(0, np.float32), meta)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "MoveNetLabels":
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta"]))
            return cls([str(k) for k in z["keys"]], z["sizes"], z["person_image"], z["keypoints"],
                       z["boxes"], z["scores"], meta)

    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, keys=np.array(self.keys, dtype=str), sizes=self.sizes.astype(np.int32),
                            person_image=self.person_image.astype(np.int32),
                            keypoints=self.keypoints.astype(np.float32), boxes=self.boxes.astype(np.float32),
                            scores=self.scores.astype(np.float32), meta=np.array(json.dumps(self.meta)))
        os.replace(tmp, path)

    def extended(self, new: list[tuple[str, tuple[int, int], list]]) -> "MoveNetLabels":
        """A copy with more images: (key, (width, height), [TeacherPerson, ...])."""
        keys, sizes = list(self.keys), [self.sizes]
        pi, kp, bx, sc = [self.person_image], [self.keypoints], [self.boxes], [self.scores]
        for key, size, people in new:
            idx = len(keys)
            keys.append(key)
            sizes.append(np.array([size], np.int32))
            for p in people:
                pi.append(np.array([idx], np.int32))
                kp.append(p.keypoints[None])
                bx.append(p.box[None])
                sc.append(np.array([p.score], np.float32))
        return MoveNetLabels(keys, np.concatenate(sizes).reshape(-1, 2), np.concatenate(pi),
                             np.concatenate(kp).reshape(-1, 17, 3), np.concatenate(bx).reshape(-1, 4),
                             np.concatenate(sc), self.meta)


# --------------------------------------------------------------------------------------- inputs

def list_inputs(paths: list[str | os.PathLike]) -> list[Path]:
    """Image and video files among the paths (folders are searched recursively), sorted."""
    found: list[Path] = []
    for p in map(Path, paths):
        if p.is_dir():
            found += sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTS | VIDEO_EXTS)
        elif p.is_file():
            found.append(p)
        else:
            raise FileNotFoundError(f"no such file or folder: {p}")
    return found


def sample_video_frames(video: Path, frames_dir: Path, every_s: float, root: Path) -> list[tuple[str, Path]]:
    """Every ``every_s`` seconds of a video written once as a JPEG under frames_dir: (key, path)."""
    rel = video.relative_to(root) if video.is_relative_to(root) else Path(video.name)
    out_dir = frames_dir / rel
    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise ValueError(f"cannot open video {video}")
    fps = cap.get(cv2.CAP_PROP_FPS) or 10.0
    step = max(1, round(every_s * fps))
    out: list[tuple[str, Path]] = []
    i = 0
    while True:
        ok = cap.grab()
        if not ok:
            break
        if i % step == 0:
            ok, frame = cap.retrieve()
            if ok:
                path = out_dir / f"{i:06d}.jpg"
                if not path.is_file():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.with_name(path.stem + ".tmp.jpg")
                    cv2.imwrite(str(tmp), frame, [cv2.IMWRITE_JPEG_QUALITY, 92])
                    os.replace(tmp, path)
                out.append((f"{rel.as_posix()}#{i}", path))
        i += 1
    cap.release()
    return out


def image_items(paths: list[str | os.PathLike], frames_dir: Path, every_s: float = 1.0,
                exclude_prefixes: tuple[str, ...] = ()) -> list[tuple[str, Path]]:
    """(key, image path) of every image, and of the sampled frames of every video."""
    items: list[tuple[str, Path]] = []
    for p in map(Path, paths):
        root = p if p.is_dir() else p.parent
        for f in list_inputs([p]):
            if f.name.startswith(exclude_prefixes):
                continue
            if f.suffix.lower() in VIDEO_EXTS:
                items += sample_video_frames(f, frames_dir, every_s, root)
            else:
                items.append((f.relative_to(root).as_posix(), f))
    return items


# --------------------------------------------------------------------------------------- labelling

_TEACHER = None


def _init_worker(models: str | None, settings: LabelSettings, threads: int) -> None:
    global _TEACHER
    import torch

    from ..teachers.movenet import MoveNetTeacher
    torch.set_num_threads(threads)
    _TEACHER = MoveNetTeacher(models, size=settings.size, refine=settings.refine, expand=settings.expand,
                              min_score=settings.min_score)


def _label_one(item: tuple[str, str]):
    key, path = item
    img = cv2.imread(path, cv2.IMREAD_COLOR)
    if img is None:
        return key, None, f"cannot read {path}"
    return key, (img.shape[1], img.shape[0]), _TEACHER(img)


def models_fingerprint(models: str | os.PathLike | None) -> dict:
    from ..teachers.movenet import models_dir
    d = models_dir(models)
    return {f: hashlib.sha256((d / f).read_bytes()).hexdigest()[:16]
            for f in ("movenet-multipose.bin", "movenet-thunder.bin")}


def label_items(items: list[tuple[str, Path]], out: Path, settings: LabelSettings, models: str | None = None,
                workers: int = 1, threads: int | None = None, save_every: int = 200,
                command: str | None = None, progress: bool = True, extra_meta: dict | None = None) -> MoveNetLabels:
    """Label the items not yet in the cache at ``out``; saves every ``save_every`` images."""
    meta = {**settings.describe(), "models": models_fingerprint(models), "command": command or "",
            **(extra_meta or {})}
    if out.is_file():
        labels = MoveNetLabels.load(out)
        old = {k: v for k, v in labels.meta.items() if k not in ("command",)}
        new = {k: v for k, v in meta.items() if k not in ("command",)}
        if old != new:
            raise ValueError(f"{out} was made with other settings ({old}); remove it or use the same settings")
    else:
        labels = MoveNetLabels.empty(meta)
    todo = [(k, str(p)) for k, p in items if k not in labels]
    if not todo:
        return labels
    threads = threads or max(1, (os.cpu_count() or 1) // max(workers, 1))
    pending: list = []
    failed = 0
    t0 = time.monotonic()
    bar = _progress(len(todo), out.name, progress)

    def results():
        if workers <= 1:
            _init_worker(models, settings, threads)
            yield from map(_label_one, todo)
            return
        import multiprocessing as mp
        with mp.get_context("spawn").Pool(workers, _init_worker, (models, settings, threads)) as pool:
            yield from pool.imap(_label_one, todo, chunksize=4)

    for key, size, people in results():
        if size is None:
            LOG.warning("%s", people)
            failed += 1
        else:
            pending.append((key, size, people))
        bar.update(1)
        if len(pending) >= save_every:
            labels = labels.extended(pending)
            labels.save(out)
            pending = []
    labels = labels.extended(pending)
    labels.save(out)
    bar.close()
    LOG.info("%s: %d images labelled in %.0f s (%d unreadable), %d images, %d people in the cache",
             out, len(todo) - failed, time.monotonic() - t0, failed, len(labels), len(labels.scores))
    return labels


def _progress(total: int, desc: str, enabled: bool):
    try:
        from tqdm import tqdm
        return tqdm(total=total, desc=desc, unit="img", disable=not enabled, mininterval=5)
    except ImportError:  # pragma: no cover
        class _Null:
            def update(self, n): pass
            def close(self): pass
        return _Null()


def source_items(data_root: Path, name: str) -> list[tuple[str, Path]]:
    folder = data_root / DATA_SOURCES[name]
    if not folder.is_dir():
        raise FileNotFoundError(f"{folder} is not a folder")
    return [(p.name, p) for p in sorted(folder.iterdir()) if p.suffix.lower() in IMAGE_EXTS
            and not p.name.startswith(EXCLUDED_PREFIXES.get(name, ()))]


LABEL_DESCRIPTION = ("Label every person in a set of images or videos with the MoveNet teacher "
                     "(MultiPose + Thunder), cached and resumable.")
LABEL_EXAMPLES = ("examples:\n"
                  "  xnect-train label lspet coco_train_extra extra_people backgrounds --workers 2 --threads 1\n"
                  "  xnect-train label ~/gym_footage --every 0.5\n"
                  "  xnect-train stage1 --out runs/gym --init models/xnect_selecsls60.pt --own-data ~/gym_footage\n")


def add_label_arguments(ap) -> None:
    ap.add_argument("inputs", nargs="+", help=f"training sets under --data-root ({', '.join(DATA_SOURCES)}) "
                                              "or folders / files of images and videos")
    ap.add_argument("--data-root", default="../shared/data")
    ap.add_argument("--out", default="data_cache", help="cache folder (default data_cache)")
    ap.add_argument("--name", help="cache name for a folder of your own (default: the folder's name)")
    ap.add_argument("--every", type=float, default=1.0, help="seconds between sampled video frames (default 1)")
    ap.add_argument("--models", help="folder of the MoveNet models (default $XNECT_TEACHERS or "
                                     "~/.cache/xnect/teachers; scripts/fetch_teachers.sh fetches them)")
    ap.add_argument("--size", type=int, default=384, help="MultiPose input size, a multiple of 32 (default 384)")
    ap.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    ap.add_argument("--threads", type=int, help="torch threads per process")
    ap.add_argument("--no-progress", action="store_true")


def run_label(a, command: str = "") -> int:
    """Label each input; 0 on success, 1 (with a one-line error) on a missing or bad input, 2 on
    bad option values."""
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    for bad, why in ((a.every <= 0, f"--every {a.every}: give a positive number of seconds"),
                     (a.workers < 1, f"--workers {a.workers}: give 1 or more"),
                     (a.size <= 0 or a.size % 32, f"--size {a.size}: give a positive multiple of 32")):
        if bad:
            print(f"xnect-train label: error: {why}", file=sys.stderr)
            return 2
    settings = LabelSettings(size=a.size)
    try:
        for inp in a.inputs:
            if inp in DATA_SOURCES and not Path(inp).exists():
                name, items, extra = inp, source_items(Path(a.data_root), inp), {}
            else:
                name = a.name or Path(inp).resolve().name
                frames = Path(a.out) / "frames" / name
                items = image_items([inp], frames, a.every)
                extra = {"root": str(Path(inp).resolve()), "frames": str(frames.resolve())}
            if not items:
                raise FileNotFoundError(f"no images or videos in {inp}")
            labels = label_items(items, cache_path(a.out, name), settings, a.models, a.workers, a.threads,
                                 command=command, progress=not a.no_progress, extra_meta=extra)
            print(f"{name}: {len(labels)} images, {len(labels.scores)} people "
                  f"({int((labels.scores >= 0.08).sum())} sure enough to label) -> {cache_path(a.out, name)}")
    except (FileNotFoundError, ValueError) as e:
        print(f"xnect-train label: error: {e}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    import argparse
    ap = argparse.ArgumentParser(prog="xnect-train label", description=LABEL_DESCRIPTION, epilog=LABEL_EXAMPLES,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    add_label_arguments(ap)
    argv = sys.argv[1:] if argv is None else argv
    return run_label(ap.parse_args(argv), "xnect-train label " + " ".join(argv))


if __name__ == "__main__":
    raise SystemExit(main())
