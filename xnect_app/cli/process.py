"""Batch-process videos and image folders into 3D poses.

examples:
  xnect-process demo_videos/vtest.avi --out-dir out/ --write-video
  xnect-process clips/ more/*.mp4 --out-dir poses/ --csv --bvh --workers 2
  xnect-process photos/ --out-dir poses/ --coco
  xnect-process /data/videos --out-dir /data/poses --shard 2/4     (machine 2 of 4)
  xnect-process /shared/videos --out-dir /shared/poses --ray 10.0.0.5:6379 --ray-cpus 4

For every input (a video, or the images of one folder as a set) the output folder gets:
  NAME.jsonl            always: a meta record, then one frame record per frame (architecture guide)
  NAME.mp4              --write-video: the frames with skeletons drawn
  NAME.coco.json        --coco: COCO keypoint results (image_id from numeric file names)
  NAME.csv              --csv: one row per person per frame
  NAME.trackID.bvh      --bvh: one BVH skeleton per track (videos; needs the skeleton fit)
  NAME.done.json        written last: what was made from which input; its presence means done

Files appear only when complete. A re-run skips inputs whose outputs are complete and made with
the same options (--overwrite redoes them). Exit status (docs/cli.md): 0 all done, 1 some input
failed, 2 usage error, 3 some input was damaged (truncated video or unreadable images; everything
readable was processed), 130 interrupted (finished inputs stay complete).
"""
from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from typing import Any, Callable

from ..io.sources import cv2  # imported there after quieting FFmpeg's logging
from ..options import (OneLineParser, UsageError, UserError, add_model_args, add_track_args, decode_config, exit_code,
                       fail, model_config, model_signature, positive_int, tracker_config)
from . import process_ray
from .jobs import (PROG, Job, JobReport, Options, describe, discover, estimator_for, forget_estimators,  # noqa: F401
                   is_complete, run_job)

EXIT_FAILED, EXIT_DAMAGED, EXIT_INTERRUPTED = 1, 3, 130


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
        est = estimator_for(job, opts)
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
    cap = cv2.VideoCapture(job.inputs[0], cv2.CAP_FFMPEG)
    n = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) if cap.isOpened() else 0
    cap.release()
    return Job(job.name, job.kind, job.inputs, job.label, n if n > 0 else None)


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
        estimator_for(todo[0], opts)  # fail fast on a bad model, before any work
        if ray_cpus or (workers > 1 and len(todo) > 1):
            forget_estimators()  # the workers build their own
    bars = _Bars(todo, progress)
    say = log or bars.write
    for r in reports:
        say(describe(r, out_dir))
    try:
        if ray_cpus:
            process_ray.run_on_ray(todo, opts, workers, ray_cpus, bars, say, reports)
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
            est = estimator_for(job, opts)
            report = run_job(job, opts, est, on_frame=lambda name=job.name: bars.advance(name))
        except KeyboardInterrupt as e:
            bars.finish(job.name)
            doc = is_complete(Path(opts.out_dir), job, opts)  # Ctrl-C just after it finished?
            reports.append(JobReport(job.name, job.label, "interrupted") if doc is None else
                           JobReport(job.name, job.label, "done", frames=int(doc.get("frames", 0)),
                                     outputs=list(doc.get("outputs", [])),
                                     problems=list(doc.get("problems", [])),
                                     damaged=bool(doc.get("damaged_input"))))
            say(describe(reports[-1], Path(opts.out_dir)))
            e.reports = reports  # type: ignore[attr-defined]
            raise
        bars.finish(job.name)
        reports.append(report)
        say(describe(report, Path(opts.out_dir)))
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
                        say(describe(report, Path(opts.out_dir)))
                        continue
                    try:
                        report = fut.result()
                    except Exception as e:  # noqa: BLE001 - a crashed worker fails its job only
                        report = JobReport(job.name, job.label, "failed", error=f"{job.label}: worker died ({e})")
                    reports.append(report)
                    say(describe(report, Path(opts.out_dir)))
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
    p.add_argument("--write-video", action="store_true", help="also write the annotated video (NAME.mp4)")
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
    add_track_args(p)
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
        opts = Options(out_dir=str(args.out_dir), video=args.write_video, coco=args.coco, csv=args.csv,
                       bvh=args.bvh, overwrite=args.overwrite, min_track_frames=args.min_track_frames,
                       model=model_config(args), decode=decode_config(args), tracker=tracker_config(args),
                       model_options=model_signature(args))
        jobs, errors = discover(args.inputs)
        if not jobs:  # one line: the one unusable input, or all of them
            fail(PROG, (errors[0] if len(errors) == 1 else f"nothing to process: {'; '.join(errors)}")
                 if errors else "no inputs")
        for err in errors:
            print(f"{PROG}: error: {err}", file=sys.stderr)
        prepare_out_dir(args.out_dir)
        jobs = select_shard(jobs, args.shard)
        if not jobs:
            print(f"{PROG}: shard {args.shard[0]}/{args.shard[1]} has no inputs", file=sys.stderr)
            return 1 if errors else 0
        if args.shard and args.ray is not None:
            raise UsageError("--shard and --ray exclude each other (Ray spreads the inputs itself)")
        workers = args.workers
        if args.ray is not None:
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
        fail(PROG, str(e), exit_code(e))
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
