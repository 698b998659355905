"""One xnect-process job: what to do (a video or a set of images), running it into its outputs,
and the manifest that says it is done. Shared by the local runner (process.py) and Ray (process_ray.py).
"""
from __future__ import annotations

import glob as globlib
import hashlib
import json
import logging
import os
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from ..estimator import DecodeConfig, TrackConfig
from ..io.bvh import BvhSink
from ..io.draw import Overlay
from ..io.sinks import TMP_MARK, CocoSink, CsvSink, JsonlSink, VideoSink, atomic_write_text, close_all
from ..io.sources import IMAGE_EXTS, VIDEO_EXTS, ImageSource, SourceError, VideoSource, is_glob, is_url, list_images
from ..options import build_estimator, tracker_signature
from ..pipeline import Pipeline
from ..pose.tracking import TrackerConfig
from ..runtime.config import ModelConfig
from ..weights import default_weights_path

PROG = "xnect-process"
MANIFEST_SUFFIX = ".done.json"
MANIFEST_VERSION = 1
LOG = logging.getLogger(__name__)


# --- what to do -------------------------------------------------------------------------------

@dataclass(frozen=True)
class Job:
    """One unit of work: a video, or a set of images, written under one output name."""
    name: str
    kind: str                   # "video" | "images"
    inputs: tuple[str, ...]
    label: str                  # what the user passed, for messages
    expected_frames: int | None = None


@dataclass(frozen=True)
class Options:
    out_dir: str
    video: bool = False
    coco: bool = False
    csv: bool = False
    bvh: bool = False
    overwrite: bool = False
    min_track_frames: int = 5
    model: ModelConfig = field(default_factory=ModelConfig)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tracker: TrackerConfig = field(default_factory=TrackerConfig)
    model_options: dict = field(default_factory=dict)   # options.model_signature: what the outputs depend on

    def signature(self) -> dict[str, Any]:
        """What the outputs depend on, stored in the manifest to decide about skipping."""
        return {"video": self.video, "coco": self.coco, "csv": self.csv, "bvh": self.bvh,
                "min_track_frames": self.min_track_frames, **({"tracker": tracker_signature(self.tracker)}
                                                               if tracker_signature(self.tracker) else {}),
                "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.model_options.items())},
                "weights_file": weights_fingerprint(self.model_options)}


def weights_fingerprint(model: dict[str, Any]) -> str | None:
    """Path, size and mtime of the weights (or ONNX) files the outputs come from: new weights,
    such as an updated bundled model, make a re-run redo the job instead of skipping it."""
    if model.get("random_init"):
        return None
    files = [Path(model.get("checkpoint") or model.get("weights") or default_weights_path())]
    if model.get("onnx_dir"):
        files = sorted(Path(model["onnx_dir"]).glob("*"))
    parts = []
    for f in files:
        try:
            st = f.stat()
        except OSError:
            continue
        parts.append(f"{os.path.realpath(f)}:{st.st_size}:{st.st_mtime_ns}")
    return "|".join(parts) or None


@dataclass
class JobReport:
    name: str
    label: str
    status: str                 # done | skipped | failed | interrupted
    frames: int = 0
    outputs: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    damaged: bool = False
    error: str = ""
    seconds: float = 0.0


def discover(inputs: list[str]) -> tuple[list[Job], list[str]]:
    """Jobs for the user's inputs (files, folders, quoted globs) and one error per unusable input.
    A folder gives one job per video in it plus one image-set job for its images; image files
    named directly are grouped by their folder."""
    jobs: list[Job] = []
    errors: list[str] = []
    loose_images: dict[Path, list[Path]] = {}

    def add_path(p: Path, label: str) -> None:
        if p.is_dir():
            videos = sorted(q for q in p.iterdir() if q.is_file() and q.suffix.lower() in VIDEO_EXTS)
            images = list_images(p)
            if not videos and not images:
                errors.append(f"{label}: no videos or images in this folder")
            for v in videos:
                jobs.append(Job(v.stem, "video", (str(v),), str(v)))
            if images:
                jobs.append(Job(p.resolve().name, "images", tuple(map(str, images)), label, len(images)))
        elif p.suffix.lower() in IMAGE_EXTS:
            loose_images.setdefault(p.parent, []).append(p)
        else:
            jobs.append(Job(p.stem, "video", (str(p),), label))

    for arg in inputs:
        if is_url(arg):
            errors.append(f"{arg}: streams are for xnect-demo --source; xnect-process reads files")
            continue
        p = Path(arg)
        if p.exists():
            add_path(p, arg)
        elif is_glob(arg):
            matches = sorted(globlib.glob(arg))
            if not matches:
                errors.append(f"{arg}: nothing matches this pattern")
            for m in matches:
                add_path(Path(m), m)
        else:
            errors.append(f"{arg}: no such file or folder")
    for folder, paths in loose_images.items():
        paths = sorted(set(paths))
        jobs.append(Job(folder.resolve().name or "images", "images", tuple(map(str, paths)),
                        str(folder), len(paths)))
    return _unique_names(_dedupe(jobs)), errors


def _dedupe(jobs: list[Job]) -> list[Job]:
    seen, out = set(), []
    for j in jobs:
        key = (j.kind, tuple(os.path.realpath(i) for i in j.inputs))
        if key not in seen:
            seen.add(key)
            out.append(j)
    return out


def _unique_names(jobs: list[Job]) -> list[Job]:
    """Give jobs whose names collide their parent folder's name as a prefix, then a number."""
    counts = Counter(j.name for j in jobs)
    renamed = []
    for j in jobs:
        name = j.name
        if counts[j.name] > 1 and j.kind == "video":
            name = f"{Path(j.inputs[0]).resolve().parent.name}_{j.name}"
        renamed.append(Job(name, j.kind, j.inputs, j.label, j.expected_frames))
    taken: set[str] = set()
    out = []
    for j in renamed:
        name, k = j.name, 2
        while name in taken:
            name, k = f"{j.name}-{k}", k + 1
        taken.add(name)
        out.append(Job(name, j.kind, j.inputs, j.label, j.expected_frames))
    return out


# --- outputs and manifests ----------------------------------------------------------------

def manifest_path(out_dir: Path, job: Job) -> Path:
    return out_dir / f"{job.name}{MANIFEST_SUFFIX}"


def input_fingerprint(job: Job) -> str:
    h = hashlib.sha1()
    for p in job.inputs:
        st = os.stat(p)
        h.update(f"{os.path.realpath(p)}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def read_manifest(path: Path) -> dict | None:
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) and doc.get("version") == MANIFEST_VERSION else None


def is_complete(out_dir: Path, job: Job, opts: Options) -> dict | None:
    """The manifest when this job's outputs are complete for these inputs and options."""
    doc = read_manifest(manifest_path(out_dir, job))
    if doc is None or doc.get("options") != json.loads(json.dumps(opts.signature())):
        return None
    try:
        if doc.get("input_fingerprint") != input_fingerprint(job):
            return None
    except OSError:
        return None
    if not all((out_dir / name).is_file() for name in doc.get("outputs", [])):
        return None
    return doc


def _remove_previous(out_dir: Path, job: Job) -> None:
    """Before redoing a job: drop its manifest first (so nothing looks complete), then the
    files it listed and temporaries left by killed runs."""
    mpath = manifest_path(out_dir, job)
    doc = read_manifest(mpath)
    mpath.unlink(missing_ok=True)
    for name in (doc or {}).get("outputs", []):
        (out_dir / name).unlink(missing_ok=True)
    for stale in out_dir.glob(f".{job.name}.*{TMP_MARK}*"):
        stale.unlink(missing_ok=True)


# --- running one job ------------------------------------------------------------------------

def run_job(job: Job, opts: Options, estimator, *, on_frame: Callable[[], None] | None = None,
            cancelled: Callable[[], bool] | None = None) -> JobReport:
    """Process one job with `estimator`; outputs are committed only if the input was read to
    its end. Never raises for bad input: failures are in the report."""
    t0 = time.perf_counter()
    out_dir = Path(opts.out_dir)
    report = JobReport(job.name, job.label, "failed")
    if cancelled is not None and cancelled():
        report.status = "interrupted"
        return report
    _remove_previous(out_dir, job)
    if job.kind == "video":
        source = VideoSource(job.inputs[0])
    else:
        source = ImageSource([Path(p) for p in job.inputs], job.label)
    try:
        source.open()
    except SourceError as e:
        report.error = str(e)
        return report

    sinks = []
    pipeline = None
    try:
        base = out_dir / job.name
        sinks.append(JsonlSink(f"{base}.jsonl", model=estimator.model_name, source=job.label,
                               fps=source.fps, intrinsics_for=estimator.intrinsics_for,
                               per_frame_camera=job.kind == "images", inference=estimator.settings()))
        if opts.video:
            sinks.append(VideoSink(f"{base}.mp4", source.fps or 2.0))
        if opts.coco:
            sinks.append(CocoSink(f"{base}.coco.json"))
        if opts.csv:
            sinks.append(CsvSink(f"{base}.csv"))
        if opts.bvh and job.kind == "video":
            sinks.append(BvhSink(out_dir, job.name, source.fps, min_track_frames=opts.min_track_frames))
        elif opts.bvh:
            report.problems.append(f"{job.label}: no BVH for an image set (BVH needs a video)")
        if hasattr(estimator, "reset"):
            estimator.reset()

        def on_result(frame, result) -> None:
            if on_frame is not None:
                on_frame()
            if cancelled is not None and cancelled():
                pipeline.stop("interrupt")

        pipeline = Pipeline(source, estimator, sinks, overlay=Overlay() if opts.video else None,
                            on_result=on_result)
        stats = pipeline.run()
    except SourceError as e:
        close_all(sinks, complete=False)
        report.error = str(e)
        return report
    except KeyboardInterrupt:
        close_all(sinks, complete=False)
        report.status = "interrupted"
        raise
    except Exception as e:  # noqa: BLE001 - one bad input must not end the batch
        close_all(sinks, complete=False)
        report.error = f"{job.label}: {type(e).__name__}: {e}"
        LOG.debug("job %s failed", job.name, exc_info=True)
        return report
    finally:
        source.close()
    report.frames = stats.frames
    report.problems += stats.problems
    report.damaged = stats.truncated or bool(getattr(source, "skipped", None))
    if stats.stopped_by == "interrupt":
        close_all(sinks, complete=False)
        report.status = "interrupted"
        return report
    errors = close_all(sinks, complete=True)
    if errors:
        report.error = f"{job.label}: could not save outputs: {errors[0]}"
        return report
    report.outputs = [p.name for s in sinks for p in s.paths]
    manifest = {
        "version": MANIFEST_VERSION, "tool": PROG, "job": job.name, "kind": job.kind,
        "inputs": list(job.inputs) if len(job.inputs) <= 50 else f"{len(job.inputs)} images from {job.label}",
        "input_fingerprint": input_fingerprint(job), "options": opts.signature(),
        "model": estimator.model_name, "frames": stats.frames, "outputs": report.outputs,
        "worker": f"{socket.gethostname()}:{os.getpid()}",
        "damaged_input": report.damaged, "problems": report.problems,
        "seconds": round(time.perf_counter() - t0, 2),
    }
    atomic_write_text(manifest_path(out_dir, job), json.dumps(manifest, indent=1) + "\n")
    report.status = "done"
    report.seconds = time.perf_counter() - t0
    return report


# --- estimators per process -------------------------------------------------------------------

_ESTIMATORS: dict[str, Any] = {}


def estimator_for(job: Job, opts: Options):
    """One estimator per kind and process: videos are tracked sequences, images independent."""
    key = json.dumps([job.kind, opts.signature()["model"], tracker_signature(opts.tracker)], sort_keys=True)
    if key not in _ESTIMATORS:
        track = TrackConfig(tracking=job.kind == "video", tracker=opts.tracker)
        _ESTIMATORS[key] = build_estimator(opts.model, opts.decode, track)
    return _ESTIMATORS[key]


def forget_estimators() -> None:
    """Drop this process's estimators (workers build their own)."""
    _ESTIMATORS.clear()


# worker-process state
def describe(report: JobReport, out_dir: Path) -> str:
    """One line about a finished job."""
    if report.status == "done":
        outs = ", ".join(report.outputs)
        text = f"done {report.label}: {report.frames} frames in {report.seconds:.1f} s -> {outs}"
        if report.damaged:
            text += " (damaged input, see warnings)"
        return text
    if report.status == "skipped":
        return f"skipped {report.label}: already done in {out_dir} (--overwrite to redo)"
    if report.status == "interrupted":
        return f"interrupted {report.label}: no output kept for it"
    return f"failed {report.error or report.label}"
