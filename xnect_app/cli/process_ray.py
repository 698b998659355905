"""`xnect-process --ray`: the same jobs, spread over a Ray cluster.

One actor per worker holds the models (built once) and runs whole jobs with `jobs.run_job`, so
outputs are written by the same atomic sinks and manifests as a local run. Inputs and --out-dir must
be at the same paths on every node (shared storage); xnect_app must be installed on every node.

The driver hands each idle actor the next job (longest videos first), polls the actors for frame
counts (progress bars), and treats a dead actor as a failed job: a replacement actor takes over
and the batch goes on. Ctrl-C asks the actors to stop; unfinished jobs leave no outputs.
"""
from __future__ import annotations

import logging
import socket
import threading
from pathlib import Path
from typing import Any

import torch

from ..options import UserError
from .jobs import JobReport, describe, estimator_for, run_job

POLL_S = 0.25


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("--ray needs Ray: pip install 'xnect_app[ray]'") from None
    return ray


def connect(address: str | None, workers: int | None, cpus_per_worker: int) -> int:
    """Start or join Ray; returns the number of worker actors to run."""
    ray = _import_ray()
    if not ray.is_initialized():
        kw: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, configure_logging=False)
        try:
            if address:
                ray.init(address=address, **kw)
            else:  # a private local cluster sized for the workers asked for
                ray.init(num_cpus=max(1, (workers or 1) * cpus_per_worker), **kw)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = f"the Ray cluster at {address}" if address else "a local Ray instance"
            raise UserError(f"--ray: cannot connect to {where} ({str(e).splitlines()[0]})") from None
    cpus = int(ray.cluster_resources().get("CPU", 1))
    if workers is None:
        workers = max(1, cpus // cpus_per_worker)
    if workers * cpus_per_worker > cpus:
        raise UserError(f"--ray: {workers} workers x {cpus_per_worker} CPUs do not fit the cluster's {cpus} CPUs")
    return workers


class _Worker:
    """Ray actor body (wrapped with ray.remote in `run_on_ray`)."""

    def __init__(self, threads: int) -> None:
        logging.basicConfig(level=logging.WARNING)
        torch.set_num_threads(max(1, threads))
        self._frames = 0
        self._cancel = threading.Event()

    def run(self, job, opts):
        self._frames = 0
        missing = [p for p in job.inputs if not Path(p).exists()]
        if missing:
            return JobReport(job.name, job.label, "failed",
                             error=f"{missing[0]}: not found on this Ray node (inputs need shared storage)")
        try:
            est = estimator_for(job, opts)
        except UserError as e:
            return JobReport(job.name, job.label, "failed", error=str(e))
        return run_job(job, opts, est, on_frame=self._count, cancelled=self._cancel.is_set)

    def _count(self) -> None:
        self._frames += 1

    def frames(self) -> int:
        return self._frames

    def cancel(self) -> None:
        self._cancel.set()

    def node(self) -> str:
        return socket.gethostname()


def run_on_ray(todo, opts, workers: int, cpus_per_worker: int, bars, say, reports) -> None:
    """Run `todo` on `workers` actors; appends one report per job (process.run_batch contract)."""
    ray = _import_ray()
    from ray.exceptions import RayActorError, RayError

    actor_cls = ray.remote(num_cpus=cpus_per_worker, max_concurrency=2, max_restarts=0)(_Worker)
    out_dir = Path(opts.out_dir)
    queue = sorted(todo, key=lambda j: -(j.expected_frames or 0))
    idle = [actor_cls.remote(cpus_per_worker) for _ in range(min(workers, len(todo)))]
    running: dict[Any, tuple[Any, Any, int]] = {}  # result ref -> (job, actor, frames reported)
    replacements = len(idle)  # at most this many actors may be replaced after crashes
    interrupted = False

    def submit() -> None:
        while idle and queue and not interrupted:
            actor, job = idle.pop(), queue.pop(0)
            running[actor.run.remote(job, opts)] = (job, actor, 0)

    def finish(report: JobReport) -> None:
        bars.finish(report.name)
        reports.append(report)
        say(describe(report, out_dir))

    try:
        submit()
        while running:
            try:
                done, _ = ray.wait(list(running), num_returns=1, timeout=POLL_S)
                for ref in done:
                    job, actor, _ = running.pop(ref)
                    try:
                        report = ray.get(ref)
                        idle.append(actor)
                    except RayActorError as e:  # the worker process died: this job fails, the batch goes on
                        report = JobReport(job.name, job.label, "failed",
                                           error=f"{job.label}: Ray worker died ({type(e).__name__})")
                        if replacements > 0:
                            replacements -= 1
                            idle.append(actor_cls.remote(cpus_per_worker))
                    except RayError as e:
                        report = JobReport(job.name, job.label, "failed",
                                           error=f"{job.label}: {str(e).splitlines()[0]}")
                        idle.append(actor)
                    finish(report)
                _poll_progress(ray, running, bars)
                submit()
                if not idle and not running and queue:  # every actor died and none may be replaced
                    for job in queue:
                        finish(JobReport(job.name, job.label, "failed", error=f"{job.label}: no Ray workers left"))
                    queue.clear()
            except KeyboardInterrupt:
                if interrupted:  # second Ctrl-C: stop waiting
                    break
                interrupted = True
                say("xnect-process: interrupted; asking the Ray workers to stop (Ctrl-C again to quit at once)")
                for _, actor, _ in running.values():
                    actor.cancel.remote()
                for job in queue:
                    finish(JobReport(job.name, job.label, "interrupted"))
                queue.clear()
    finally:
        for ref, (job, actor, _) in running.items():
            ray.kill(actor)
            finish(JobReport(job.name, job.label, "interrupted"))
    if interrupted:
        e = KeyboardInterrupt()
        e.reports = reports  # type: ignore[attr-defined]
        raise e


def _poll_progress(ray, running: dict, bars) -> None:
    if not running or bars.disabled:
        return
    refs = {ref: actor.frames.remote() for ref, (_, actor, _) in running.items()}
    try:
        counts = ray.get(list(refs.values()), timeout=5)
    except Exception:  # noqa: BLE001 - progress is best effort; a dead actor shows up in ray.wait
        return
    for (ref, (job, actor, seen)), n in zip(list(running.items()), counts):
        if n > seen:
            bars.advance(job.name, n - seen)
            running[ref] = (job, actor, n)


def shutdown() -> None:
    try:
        import ray
    except ImportError:
        return
    if ray.is_initialized():
        ray.shutdown()
