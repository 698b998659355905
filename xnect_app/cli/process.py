"""Batch-process videos and image folders into 3D poses.

examples:
  xnect-process demo_videos/vtest.avi --out-dir out/ --video
  xnect-process clips/ more/*.mp4 --out-dir poses/ --csv --bvh --workers 2
  xnect-process photos/ --out-dir poses/ --coco
  xnect-process /data/videos --out-dir /data/poses --shard 2/4     (machine 2 of 4)
  xnect-process /shared/videos --out-dir /shared/poses --ray 10.0.0.5:6379 --ray-cpus 4

For every input (a video, or the images of one folder as a set) the output folder gets:
  NAME.jsonl            always: a meta record, then one frame record per frame (architecture guide)
  NAME.mp4              --video: the frames with skeletons drawn
  NAME.coco.json        --coco: COCO keypoint results (image_id from numeric file names)
  NAME.csv              --csv: one row per person per frame
  NAME.trackID.bvh      --bvh: one BVH skeleton per track (videos; needs the skeleton fit)
  NAME.done.json        written last: what was made from which input; its presence means done

Files appear only when complete. A re-run skips inputs whose outputs are complete and made with
the same options (--overwrite redoes them). Exit status: 0 all done, 1 some input failed,
2 usage error, 3 some input was damaged (truncated video or unreadable images; everything
readable was processed), 130 interrupted (finished inputs stay complete).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import signal
import socket
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

from .model_args import OneLineParser, positive_int, UserError, add_model_args, build_estimator, estimator_kwargs, fail

PROG = "xnect-process"
EXIT_FAILED, EXIT_DAMAGED, EXIT_INTERRUPTED = 1, 3, 130
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
    model: dict = field(default_factory=dict)   # PoseEstimator kwargs (without tracking)

    def signature(self) -> dict[str, Any]:
        """What the outputs depend on, stored in the manifest to decide about skipping."""
        return {"video": self.video, "coco": self.coco, "csv": self.csv, "bvh": self.bvh,
                "min_track_frames": self.min_track_frames,
                "model": {k: (list(v) if isinstance(v, tuple) else v) for k, v in sorted(self.model.items())},
                "weights_file": weights_fingerprint(self.model)}


def weights_fingerprint(model: dict[str, Any]) -> str | None:
    """Path, size and mtime of the weights (or ONNX) files the outputs come from: new weights,
    such as an updated bundled model, make a re-run redo the job instead of skipping it."""
    if model.get("random_init"):
        return None
    from ..estimator import default_weights_path
    files = [Path(model.get("weights") or default_weights_path())]
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
    from ..io.sources import IMAGE_EXTS, VIDEO_EXTS, is_glob, is_url, list_images
    import glob as globlib

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
    from collections import Counter
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


def parse_shard(text: str) -> tuple[int, int]:
    """argparse type for I/N (1-based)."""
    try:
        i, n = (int(v) for v in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not I/N (e.g. 1/4)") from None
    if n < 1 or not 1 <= i <= n:
        raise argparse.ArgumentTypeError(f"{text}: need 1 <= I <= N")
    return i, n


def select_shard(jobs: list[Job], shard: tuple[int, int] | None) -> list[Job]:
    """Jobs of shard I of N: every N-th job, sorted by output name, so every machine agrees."""
    jobs = sorted(jobs, key=lambda j: j.name)
    if shard is None:
        return jobs
    i, n = shard
    return jobs[i - 1::n]


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
    from ..io.sinks import TMP_MARK
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
    from ..io.bvh import BvhSink
    from ..io.draw import Overlay
    from ..io.sinks import CocoSink, CsvSink, JsonlSink, VideoSink, close_all
    from ..io.sources import ImageSource, SourceError, VideoSource
    from ..pipeline import Pipeline

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
    from ..io.sinks import atomic_write_text
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


def _estimator_for(job: Job, opts: Options):
    """One estimator per kind and process: videos are tracked sequences, images independent."""
    key = json.dumps([job.kind, opts.signature()["model"]], sort_keys=True)
    if key not in _ESTIMATORS:
        _ESTIMATORS[key] = build_estimator(**opts.model, tracking=job.kind == "video")
    return _ESTIMATORS[key]


# worker-process state
_PROGRESS = None
_CANCEL = None


def _worker_init(progress_queue, cancel_event, torch_threads: int) -> None:
    global _PROGRESS, _CANCEL
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent decides; workers watch _CANCEL
    _PROGRESS, _CANCEL = progress_queue, cancel_event
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        import torch
        torch.set_num_threads(max(1, torch_threads))
    except ImportError:
        pass


def _worker_job(job: Job, opts: Options) -> JobReport:
    try:
        est = _estimator_for(job, opts)
    except UserError as e:
        return JobReport(job.name, job.label, "failed", error=str(e))
    return run_job(job, opts, est, on_frame=lambda: _PROGRESS.put((job.name, 1)),
                   cancelled=_CANCEL.is_set)


# --- the batch ---------------------------------------------------------------------------

class _Bars:
    """An overall frame bar plus one bar per running file (tqdm, on stderr)."""

    def __init__(self, jobs: list[Job], enabled: bool | None) -> None:
        from tqdm import tqdm
        self._tqdm = tqdm
        total = sum(j.expected_frames or 0 for j in jobs) or None
        self.overall = tqdm(total=total, desc=f"{len(jobs)} inputs", unit="frame", position=0,
                            disable=None if enabled is None else not enabled,
                            dynamic_ncols=True)
        self.disabled = self.overall.disable
        self._bars: dict[str, Any] = {}
        self._free: list[int] = []
        self._next_pos = 1
        self._jobs = {j.name: j for j in jobs}

    def advance(self, name: str, n: int = 1) -> None:
        self.overall.update(n)
        bar = self._bars.get(name)
        if bar is None:
            pos = self._free.pop(0) if self._free else self._next_pos
            self._next_pos = max(self._next_pos, pos + 1)
            job = self._jobs[name]
            bar = self._tqdm(total=job.expected_frames, desc=name[:30], unit="frame", position=pos,
                             leave=False, disable=self.disabled, dynamic_ncols=True)
            bar.pos_ = pos
            self._bars[name] = bar
        bar.update(n)

    def finish(self, name: str) -> None:
        bar = self._bars.pop(name, None)
        if bar is not None:
            self._free.append(bar.pos_)
            bar.close()

    def write(self, text: str) -> None:
        self._tqdm.write(text, file=sys.stderr)

    def close(self) -> None:
        for name in list(self._bars):
            self.finish(name)
        self.overall.close()


def _expected_frames(job: Job) -> Job:
    if job.kind != "video" or job.expected_frames is not None:
        return job
    from ..io.sources import cv2  # imported there after quieting FFmpeg's logging
    cap = cv2.VideoCapture(job.inputs[0], cv2.CAP_FFMPEG)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return Job(job.name, job.kind, job.inputs, job.label, n if n > 0 else None)


def _describe(report: JobReport, out_dir: Path) -> str:
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


def run_batch(jobs: list[Job], opts: Options, *, workers: int = 1, progress: bool | None = None,
              log: Callable[[str], None] | None = None, ray_cpus: int | None = None) -> list[JobReport]:
    """Run the jobs (skipping complete ones unless opts.overwrite); returns one report per job.
    With `ray_cpus`, the jobs run on `workers` Ray actors of that many CPUs each (Ray already
    connected, see process_ray.connect).
    Raises KeyboardInterrupt after cleaning up when interrupted; the reports so far are then in
    the exception's `reports` attribute."""
    out_dir = Path(opts.out_dir)
    reports: list[JobReport] = []
    todo: list[Job] = []
    for job in jobs:
        doc = None if opts.overwrite else is_complete(out_dir, job, opts)
        if doc is not None:
            reports.append(JobReport(job.name, job.label, "skipped", frames=int(doc.get("frames", 0)),
                                     outputs=list(doc.get("outputs", [])),
                                     problems=list(doc.get("problems", [])),
                                     damaged=bool(doc.get("damaged_input"))))
        else:
            todo.append(_expected_frames(job))
    if todo:
        _estimator_for(todo[0], opts)  # fail fast on a bad model, before any work
        if ray_cpus or (workers > 1 and len(todo) > 1):
            _ESTIMATORS.clear()  # the workers build their own
    bars = _Bars(todo, progress)
    say = log or bars.write
    for r in reports:
        say(_describe(r, out_dir))
    try:
        if ray_cpus:
            from .process_ray import run_on_ray
            run_on_ray(todo, opts, workers, ray_cpus, bars, say, reports)
        elif workers <= 1 or len(todo) <= 1:
            _run_here(todo, opts, bars, say, reports)
        else:
            _run_pool(todo, opts, workers, bars, say, reports)
    finally:
        bars.close()
    return reports


def _run_here(todo: list[Job], opts: Options, bars: _Bars, say, reports: list[JobReport]) -> None:
    for job in todo:
        try:
            est = _estimator_for(job, opts)
            report = run_job(job, opts, est, on_frame=lambda name=job.name: bars.advance(name))
        except KeyboardInterrupt as e:
            bars.finish(job.name)
            doc = is_complete(Path(opts.out_dir), job, opts)  # Ctrl-C just after it finished?
            reports.append(JobReport(job.name, job.label, "interrupted") if doc is None else
                           JobReport(job.name, job.label, "done", frames=int(doc.get("frames", 0)),
                                     outputs=list(doc.get("outputs", [])),
                                     problems=list(doc.get("problems", [])),
                                     damaged=bool(doc.get("damaged_input"))))
            say(_describe(reports[-1], Path(opts.out_dir)))
            e.reports = reports  # type: ignore[attr-defined]
            raise
        bars.finish(job.name)
        reports.append(report)
        say(_describe(report, Path(opts.out_dir)))
        if report.status == "interrupted":
            e = KeyboardInterrupt()
            e.reports = reports  # type: ignore[attr-defined]
            raise e


def _run_pool(todo: list[Job], opts: Options, workers: int, bars: _Bars, say,
              reports: list[JobReport]) -> None:
    import multiprocessing as mp
    import queue as queue_mod
    from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait

    ctx = mp.get_context("spawn")
    progress_q, cancel = ctx.Queue(), ctx.Event()
    threads = max(1, (os.cpu_count() or 1) // workers)
    interrupted = False
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_worker_init,
                             initargs=(progress_q, cancel, threads)) as ex:
        pending = {ex.submit(_worker_job, job, opts): job for job in todo}
        while pending:
            try:
                done, _ = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                while True:
                    try:
                        name, n = progress_q.get_nowait()
                    except queue_mod.Empty:
                        break
                    bars.advance(name, n)
                for fut in done:
                    job = pending.pop(fut)
                    bars.finish(job.name)
                    if fut.cancelled():
                        report = JobReport(job.name, job.label, "interrupted")
                        reports.append(report)
                        say(_describe(report, Path(opts.out_dir)))
                        continue
                    try:
                        report = fut.result()
                    except Exception as e:  # noqa: BLE001 - a crashed worker fails its job only
                        report = JobReport(job.name, job.label, "failed", error=f"{job.label}: worker died ({e})")
                    reports.append(report)
                    say(_describe(report, Path(opts.out_dir)))
            except KeyboardInterrupt:
                if interrupted:  # second Ctrl-C: stop waiting
                    break
                interrupted = True
                cancel.set()
                for fut in pending:
                    fut.cancel()
                say(f"{PROG}: interrupted; finishing cleanly (Ctrl-C again to quit at once)")
    if interrupted:
        e = KeyboardInterrupt()
        e.reports = reports  # type: ignore[attr-defined]
        raise e


# --- command line -----------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="video files, image files, folders or quoted globs")
    p.add_argument("--out-dir", required=True, metavar="DIR", help="output folder (created if missing)")
    p.add_argument("--video", action="store_true", help="also write the annotated video (NAME.mp4)")
    p.add_argument("--coco", action="store_true", help="also write COCO keypoint results (NAME.coco.json)")
    p.add_argument("--csv", action="store_true", help="also write a CSV table (NAME.csv)")
    p.add_argument("--bvh", action="store_true", help="also write one BVH per track (NAME.trackID.bvh)")
    p.add_argument("--min-track-frames", type=int, default=5, metavar="N",
                   help="--bvh: tracks seen in fewer frames get no file")
    p.add_argument("--overwrite", action="store_true", help="redo inputs whose outputs are already complete")
    p.add_argument("--workers", type=positive_int, default=None, metavar="N",
                   help="process N inputs at once (separate processes; with --ray: Ray actors, default "
                        "as many as the cluster's CPUs allow)")
    p.add_argument("--shard", type=parse_shard, metavar="I/N",
                   help="process only shard I of N (1-based), to split a job across machines")
    p.add_argument("--ray", nargs="?", const="", default=None, metavar="ADDRESS",
                   help="run the inputs on a Ray cluster (ADDRESS, e.g. 10.0.0.5:6379 or auto); without "
                        "ADDRESS a local Ray instance. Inputs and --out-dir must be on storage every node "
                        "sees at the same paths. Needs the [ray] extra")
    p.add_argument("--ray-cpus", type=positive_int, default=1, metavar="N",
                   help="with --ray: CPUs (and torch threads) per worker actor (default 1)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    add_model_args(p)
    return p


def prepare_out_dir(path: str) -> Path:
    out = Path(path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except FileExistsError:
        raise UserError(f"--out-dir {path}: exists and is not a folder") from None
    except OSError as e:
        raise UserError(f"--out-dir {path}: cannot create it ({e.strerror})") from None
    probe = out / f".xnect-write-test-{os.getpid()}"
    try:
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(f"--out-dir {path}: cannot write there ({e.strerror})") from None
    return out


def _exit_leaving_busy_threads(code: int) -> None:
    """After Ctrl-C every output is already closed (complete or removed), but a worker thread may
    still be inside a native call (torch, OpenCV); a normal interpreter exit would then abort
    ("terminate called without an active exception"). Leave at once instead."""
    import threading

    if threading.active_count() > 1:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse_args(argv)
    try:
        opts = Options(out_dir=str(args.out_dir), video=args.video, coco=args.coco, csv=args.csv,
                       bvh=args.bvh, overwrite=args.overwrite, min_track_frames=args.min_track_frames,
                       model=estimator_kwargs(args))
        jobs, errors = discover(args.inputs)
        for err in errors:
            print(f"{PROG}: error: {err}", file=sys.stderr)
        if not jobs:
            fail(PROG, "nothing to process" if errors else "no inputs")
        prepare_out_dir(args.out_dir)
        jobs = select_shard(jobs, args.shard)
        if not jobs:
            print(f"{PROG}: shard {args.shard[0]}/{args.shard[1]} has no inputs", file=sys.stderr)
            return 1 if errors else 0
        if args.shard and args.ray is not None:
            raise UserError("--shard and --ray exclude each other (Ray spreads the inputs itself)")
        workers = args.workers
        if args.ray is not None:
            from . import process_ray
            workers = process_ray.connect(args.ray or None, args.workers, args.ray_cpus)
        interrupted = False
        try:
            reports = run_batch(jobs, opts, workers=workers or 1, progress=False if args.no_progress else None,
                                ray_cpus=args.ray_cpus if args.ray is not None else None)
        except KeyboardInterrupt as e:
            reports = getattr(e, "reports", [])
            interrupted = True
        finally:
            if args.ray is not None:
                process_ray.shutdown()
    except UserError as e:
        fail(PROG, str(e))
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted before any input was finished", file=sys.stderr)
        _exit_leaving_busy_threads(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED

    counts = {s: sum(r.status == s for r in reports) for s in ("done", "skipped", "failed", "interrupted")}
    damaged = sum(r.damaged for r in reports if r.status in ("done", "skipped"))
    for r in reports:
        if r.status == "failed":
            print(f"{PROG}: error: {r.error}", file=sys.stderr)
        for problem in r.problems if r.status == "done" else []:
            print(f"{PROG}: warning: {problem}", file=sys.stderr)
    summary = (f"{counts['done']} done, {counts['skipped']} skipped, {counts['failed'] + len(errors)} failed"
               + (f", {damaged} with damaged input" if damaged else "")
               + (", interrupted" if interrupted else "") + f"; outputs in {args.out_dir}")
    print(summary)
    if interrupted:
        _exit_leaving_busy_threads(EXIT_INTERRUPTED)
        return EXIT_INTERRUPTED
    if counts["failed"] or errors:
        return EXIT_FAILED
    if damaged:
        return EXIT_DAMAGED
    return 0


if __name__ == "__main__":
    sys.exit(main())
