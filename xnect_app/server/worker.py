"""One inference thread for every stream: newest frame per stream wins, frames of several streams
run as one batch.

A stream (a capture client, or the broadcast source) has at most one frame waiting here plus one
being processed. A new frame replaces the waiting one, which is reported as dropped.
"""
from __future__ import annotations

import functools
import inspect
import logging
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Hashable

import numpy as np

from ..types import FrameResult
from .jpeg import BadImage, decode_jpeg

LOG = logging.getLogger(__name__)


@dataclass
class FrameJob:
    stream: Hashable
    frame_id: int
    on_done: Callable[["FrameJob", "JobOutcome"], None]
    client_ts: float | None = None
    jpeg: bytes | None = None          # capture clients send JPEG, decoded in the worker
    image: np.ndarray | None = None    # the broadcast source hands over decoded frames
    received_s: float = field(default_factory=time.perf_counter)


@dataclass
class JobOutcome:
    result: FrameResult | None = None
    image: np.ndarray | None = None
    dropped: str | None = None         # reason, when the frame was not processed
    error_code: str | None = None
    error: str | None = None
    queue_ms: float = 0.0
    decode_ms: float = 0.0
    infer_ms: float = 0.0
    total_ms: float = 0.0
    batch_size: int = 0


class BatchRunner:
    """Runs an estimator on a batch of frames from several streams, tracking each stream apart.

    Frames go through `estimator.detect_batch(frames)` (one batched Stage I, no tracking; with
    `streams=` where it takes them, for per-stream motion masks); each stream then has its own
    tracker from `tracker_factory()`, called like the estimator's own:
    `tracker.update(people, time_s, intrinsics)` (plus `fit_skeleton=` where it takes one).
    An estimator without detect_batch runs frame by frame through `estimator(frame, timestamp=...)`,
    and its single tracker then sees every stream.
    """

    def __init__(self, estimator: Any, tracker_factory: Callable[[], Any] | None = None):
        self.estimator = estimator
        self.tracker_factory = tracker_factory
        self.tracker_configs: dict[Hashable, Any] = {}  # per-stream settings (the client's URL)
        self._streams: dict[Hashable, _StreamState] = {}
        self._warned_shared = False

    @property
    def batched(self) -> bool:
        return hasattr(self.estimator, "detect_batch")

    def __call__(self, images: list[np.ndarray], streams: list[Hashable],
                 timestamps: list[float]) -> list[FrameResult]:
        if not self.batched:
            return self._one_by_one(images, streams, timestamps)
        if _accepts(self.estimator.detect_batch, "streams"):  # per-stream state (motion masks)
            results = self.estimator.detect_batch(images, streams=streams)
        else:
            results = self.estimator.detect_batch(images)
        fit = bool(getattr(self.estimator, "fit_skeleton", False))
        for res, image, stream, ts in zip(results, images, streams, timestamps):
            st = self._streams.get(stream)
            if st is None:
                cfg = self.tracker_configs.get(stream)
                factory = self.tracker_factory
                tracker = None if factory is None else factory(cfg) if cfg is not None else factory()
                st = self._streams[stream] = _StreamState(tracker, ts)
            res.frame_index = st.frames
            res.time_s = ts - st.t0
            st.frames += 1
            if st.tracker is not None:
                t0 = time.perf_counter()
                kw = {"fit_skeleton": fit} if _accepts(st.tracker.update, "fit_skeleton") else {}
                if _accepts(st.tracker.update, "image"):
                    kw["image"] = image
                res.people = list(st.tracker.update(res.people, res.time_s, res.intrinsics, **kw))
                res.timings_ms["stage3"] = (time.perf_counter() - t0) * 1000
        return results

    def _one_by_one(self, images, streams, timestamps) -> list[FrameResult]:
        for stream, ts in zip(streams, timestamps):
            self._streams.setdefault(stream, _StreamState(None, ts))
        if len(self._streams) > 1 and not self._warned_shared:
            LOG.warning("estimator has no detect_batch: one tracker is shared by all streams")
            self._warned_shared = True
        return [self.estimator(img, timestamp=ts) for img, ts in zip(images, timestamps)]

    def forget(self, stream: Hashable) -> None:
        self._forget_state(stream)
        self.tracker_configs.pop(stream, None)

    def _forget_state(self, stream: Hashable) -> None:
        self._streams.pop(stream, None)
        if hasattr(self.estimator, "forget_stream"):
            self.estimator.forget_stream(stream)

    def reset(self, stream: Hashable) -> None:
        """Start a new sequence for one stream (its tracker settings stay)."""
        self._forget_state(stream)
        if not self.batched and hasattr(self.estimator, "reset"):
            self.estimator.reset()


@functools.lru_cache(maxsize=32)
def _accepts_cached(func: Any, name: str) -> bool:
    try:
        return name in inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False


def _accepts(method: Any, name: str) -> bool:
    return _accepts_cached(getattr(method, "__func__", method), name)


@dataclass
class _StreamState:
    tracker: Any
    t0: float
    frames: int = 0


class InferenceWorker:
    """The single inference thread. `submit` is thread-safe and never blocks on inference."""

    def __init__(self, runner: BatchRunner, *, max_batch: int = 8, max_image_side: int = 4096,
                 name: str = "xnect-infer"):
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self.runner = runner
        self.max_batch = max_batch
        self.max_image_side = max_image_side
        self._pending: dict[Hashable, FrameJob] = {}
        self._resets: set[Hashable] = set()
        self._forgets: set[Hashable] = set()
        self._cond = threading.Condition()
        self._stop = False
        self._busy = False
        self._done_times: deque[float] = deque(maxlen=512)
        self.frames_done = 0
        self.batches = 0
        self._thread = threading.Thread(target=self._loop, name=name, daemon=True)

    # ---- control ----

    def start(self) -> None:
        self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        with self._cond:
            self._stop = True
            leftovers = list(self._pending.values())
            self._pending.clear()
            self._cond.notify_all()
        for job in leftovers:
            _finish(job, JobOutcome(dropped="shutdown"))
        if self._thread.is_alive():
            self._thread.join(timeout)
            if self._thread.is_alive():
                LOG.warning("inference thread did not stop within %.0f s", timeout)

    def submit(self, job: FrameJob) -> None:
        """Queue a frame; a frame still waiting from the same stream is dropped."""
        with self._cond:
            if self._stop:
                old, job = job, None
            else:
                old = self._pending.get(job.stream)
                self._pending[job.stream] = job
                self._cond.notify()
        if old is not None:
            _finish(old, JobOutcome(dropped="shutdown" if job is None else "stale"))

    def reset_stream(self, stream: Hashable) -> None:
        with self._cond:
            self._resets.add(stream)

    def forget(self, stream: Hashable) -> None:
        """A stream has gone: drop its waiting frame (silently) and its tracker."""
        with self._cond:
            self._pending.pop(stream, None)
            self._forgets.add(stream)

    # ---- status ----

    def pending(self, stream: Hashable | None = None) -> int:
        """Frames waiting, for all streams or one."""
        with self._cond:
            return len(self._pending) if stream is None else int(stream in self._pending)

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def fps(self, window_s: float = 5.0) -> float:
        now = time.perf_counter()
        times = [t for t in list(self._done_times) if now - t <= window_s]
        if len(times) < 2:
            return 0.0
        return (len(times) - 1) / max(times[-1] - times[0], 1e-6)

    def status(self) -> dict[str, Any]:
        return {"pending": self.pending(), "busy": self._busy, "fps": round(self.fps(), 2),
                "frames_done": self.frames_done, "batches": self.batches,
                "mean_batch": round(self.frames_done / self.batches, 2) if self.batches else 0.0,
                "max_batch": self.max_batch}

    # ---- the thread ----

    def _take_batch(self) -> list[FrameJob] | None:
        with self._cond:
            while not self._pending and not self._stop:
                self._cond.wait(0.5)
            if self._stop:
                return None
            for stream in self._forgets:
                self.runner.forget(stream)
            for stream in self._resets:
                self.runner.reset(stream)
            self._forgets.clear()
            self._resets.clear()
            jobs = sorted(self._pending.values(), key=lambda j: j.received_s)[:self.max_batch]
            for job in jobs:
                del self._pending[job.stream]
            self._busy = True
            return jobs

    def _loop(self) -> None:
        while True:
            jobs = self._take_batch()
            if jobs is None:
                return
            try:
                self._run(jobs)
            except Exception:  # keep serving: report to the clients of this batch
                LOG.exception("inference failed")
                for job in jobs:
                    _finish(job, JobOutcome(error_code="internal", error="inference failed on the server"))
            finally:
                self._busy = False

    def _run(self, jobs: list[FrameJob]) -> None:
        started = time.perf_counter()
        ready: list[tuple[FrameJob, np.ndarray, float]] = []
        for job in jobs:
            t0 = time.perf_counter()
            try:
                image = job.image if job.image is not None else decode_jpeg(job.jpeg or b"", self.max_image_side)
            except BadImage as err:
                _finish(job, JobOutcome(error_code=err.code, error=str(err)))
                continue
            ready.append((job, image, (time.perf_counter() - t0) * 1000))
        if not ready:
            return
        t0 = time.perf_counter()
        results = self.runner([img for _, img, _ in ready], [j.stream for j, _, _ in ready],
                              [j.received_s for j, _, _ in ready])
        done = time.perf_counter()
        infer_ms = (done - t0) * 1000
        self.batches += 1
        self.frames_done += len(ready)
        for (job, image, decode_ms), result in zip(ready, results):
            self._done_times.append(done)
            _finish(job, JobOutcome(
                result=result, image=image, queue_ms=(started - job.received_s) * 1000,
                decode_ms=decode_ms, infer_ms=infer_ms, total_ms=(done - job.received_s) * 1000,
                batch_size=len(ready)))


def _finish(job: FrameJob, outcome: JobOutcome) -> None:
    try:
        job.on_done(job, outcome)
    except Exception:
        LOG.exception("frame callback failed for stream %s", job.stream)
