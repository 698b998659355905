"""The real-time loop: capture -> inference -> render/sinks, one thread per stage.

    source --FrameReader--> [bounded queue | newest-frame slot] --> inference thread
           --> [bounded queue] --> render/sink thread --> [newest-frame slot] --> window (main thread)

Files deliver every frame (the reader blocks when the queue is full); live sources keep only the
newest frame, so latency stays bounded when inference is slower than the camera. The pipeline
stops at the end of the input, after ``max_frames``, on ``stop()``, on ``q``/Esc in the window or
on Ctrl-C, joins its threads with timeouts and reports per-stage times, end-to-end latency and
throughput in `RunStats`.

``threaded=False`` runs the same stages one after another in the calling thread (the baseline the
benchmark compares against).
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import numpy as np

from .io.draw import Overlay
from .io.sinks import Sink
from .io.sources import END, Frame, FrameReader, LatestSlot, Source, join_thread
from .types import FrameResult

LOG = logging.getLogger(__name__)

STAGES = ("read", "inference", "render", "sinks")
QUIT_KEYS = (ord("q"), ord("Q"), 27)  # q, Q, Esc


class Estimator(Protocol):
    def __call__(self, image: np.ndarray, timestamp: float | None = None) -> FrameResult: ...


class Display(Protocol):
    def show(self, image: np.ndarray) -> int: ...  # returns the key pressed, or -1
    def close(self) -> None: ...


@dataclass
class RunStats:
    """What one run did. Times in milliseconds per frame unless named otherwise."""

    frames: int = 0                      # results delivered to the sinks
    frames_read: int = 0
    dropped: int = 0                     # stale live frames never processed
    wall_s: float = 0.0
    stopped_by: str = "end"              # end | max_frames | user | interrupt | error
    threaded: bool = True
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: {s: [] for s in STAGES})
    estimator_ms: dict[str, list[float]] = field(default_factory=dict)
    latency_ms: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    truncated: bool = False

    @property
    def fps(self) -> float:
        return self.frames / self.wall_s if self.wall_s > 0 else 0.0

    def summary_dict(self) -> dict[str, Any]:
        def stat(v: list[float]) -> dict[str, float]:
            if not v:
                return {"mean": float("nan"), "p50": float("nan"), "p95": float("nan")}
            a = np.asarray(v)
            return {"mean": float(a.mean()), "p50": float(np.percentile(a, 50)),
                    "p95": float(np.percentile(a, 95))}
        return {
            "frames": self.frames, "frames_read": self.frames_read, "dropped": self.dropped,
            "wall_s": self.wall_s, "fps": self.fps, "threaded": self.threaded,
            "stopped_by": self.stopped_by, "truncated": self.truncated, "problems": list(self.problems),
            "stage_ms": {k: stat(v) for k, v in self.stage_ms.items()},
            "estimator_ms": {k: stat(v) for k, v in self.estimator_ms.items()},
            "latency_ms": stat(self.latency_ms),
        }

    def summary(self) -> str:
        """One line for the console."""
        d = self.summary_dict()
        stages = ", ".join(f"{k} {v['mean']:.1f}" for k, v in d["stage_ms"].items() if v["mean"] == v["mean"])
        lat = d["latency_ms"]
        text = (f"{self.frames} frames in {self.wall_s:.1f} s: {self.fps:.1f} fps end to end | "
                f"ms per frame: {stages} | latency mean {lat['mean']:.0f} ms, p95 {lat['p95']:.0f} ms")
        if self.dropped:
            text += f" | dropped {self.dropped} stale frames"
        return text


class _FpsMeter:
    """Exponential moving average of the output rate."""

    def __init__(self, alpha: float = 0.1) -> None:
        self.alpha, self.fps, self._last = alpha, None, None

    def tick(self, now: float) -> float | None:
        if self._last is not None and now > self._last:
            inst = 1.0 / (now - self._last)
            self.fps = inst if self.fps is None else (1 - self.alpha) * self.fps + self.alpha * inst
        self._last = now
        return self.fps


class Pipeline:
    """Runs `estimator` over `source` and feeds every result to `sinks`.

    Args:
        source: an opened or unopened `Source`.
        estimator: callable(image_bgr, timestamp) -> FrameResult (e.g. `PoseEstimator`).
        sinks: objects with write(frame, result, rendered); the caller closes them.
        overlay: callable(image, result, fps) -> rendered image; used when a sink needs rendered
            frames or a display is given.
        display: a window (show(image) -> key, close()), driven from the calling thread.
        threaded: one thread per stage (True) or a plain sequential loop (False).
        queue_size: bound of the queues between stages.
        max_frames: stop after this many processed frames.
        on_result: callback(frame, result) after the sinks, e.g. for progress bars.
    """

    def __init__(self, source: Source, estimator: Estimator, sinks: Sequence[Sink] = (), *,
                 overlay: Callable[[np.ndarray, FrameResult, float | None], np.ndarray] | None = None,
                 display: Display | None = None, threaded: bool = True, queue_size: int = 4,
                 max_frames: int | None = None,
                 on_result: Callable[[Frame, FrameResult], None] | None = None) -> None:
        self.source = source
        self.estimator = estimator
        self.sinks = list(sinks)
        self.overlay = overlay
        self.display = display
        self.threaded = threaded
        self.queue_size = max(1, queue_size)
        self.max_frames = max_frames
        self.on_result = on_result
        self.stats = RunStats(threaded=threaded)
        self._stop = threading.Event()
        self._error: BaseException | None = None
        self._processed = 0
        self._fps = _FpsMeter()
        self._lock = threading.Lock()
        needs_render = any(getattr(s, "needs_render", False) for s in self.sinks) or display is not None
        if needs_render and overlay is None:
            self.overlay = Overlay()
        self._render = needs_render

    # -- control ---------------------------------------------------------------------------

    def stop(self, reason: str = "user") -> None:
        """Ask every stage to finish; safe from any thread."""
        with self._lock:
            if not self._stop.is_set():
                self.stats.stopped_by = reason
                self._stop.set()

    @property
    def stopping(self) -> bool:
        return self._stop.is_set()

    def wait_stopping(self, timeout: float | None = None) -> bool:
        """Block until the run is asked to stop or has ended, for whatever reason; False if
        `timeout` passed first. For threads that serve a run (a frame feeder, a watchdog) and
        should leave with it."""
        return self._stop.wait(timeout)

    # -- stages ----------------------------------------------------------------------------

    def _infer(self, frame: Frame) -> FrameResult:
        t0 = time.perf_counter()
        result = self.estimator(frame.image, timestamp=frame.time_s)
        self.stats.stage_ms["inference"].append((time.perf_counter() - t0) * 1e3)
        self.stats.stage_ms["read"].append(frame.read_ms)
        # Files keep their frame numbers; live sources number the frames actually processed.
        result.frame_index = self._processed if self.source.live else frame.index
        result.time_s = frame.time_s
        for k, v in result.timings_ms.items():
            self.stats.estimator_ms.setdefault(k, []).append(float(v))
        self._processed += 1
        return result

    def _emit(self, frame: Frame, result: FrameResult) -> np.ndarray | None:
        t0 = time.perf_counter()
        fps = self._fps.tick(t0)
        rendered = self.overlay(frame.image, result, fps) if self._render else None
        t1 = time.perf_counter()
        for sink in self.sinks:
            sink.write(frame, result, rendered)
        t2 = time.perf_counter()
        self.stats.stage_ms["render"].append((t1 - t0) * 1e3)
        self.stats.stage_ms["sinks"].append((t2 - t1) * 1e3)
        self.stats.latency_ms.append((t2 - frame.t_read) * 1e3)
        self.stats.frames += 1
        if self.on_result is not None:
            self.on_result(frame, result)
        return rendered

    def _show(self, image: np.ndarray | None) -> None:
        if self.display is not None and image is not None:
            key = self.display.show(image)
            if key is not None and (key & 0xFF) in QUIT_KEYS:
                self.stop("user")

    def _reached_max(self) -> bool:
        return self.max_frames is not None and self._processed >= self.max_frames

    # -- running ---------------------------------------------------------------------------

    def run(self) -> RunStats:
        """Process until the input ends or the run is stopped; returns the statistics.
        Ctrl-C ends the run (stopped_by="interrupt") instead of propagating; errors from any
        stage are re-raised here after the threads have stopped."""
        t0 = time.perf_counter()
        try:
            if self.threaded:
                self._run_threaded()
            else:
                self._run_sequential()
        finally:
            self._stop.set()  # the run is over: wakes wait_stopping(), later stop() calls are no-ops
            self.stats.wall_s = time.perf_counter() - t0
            self.stats.problems = list(self.source.problems)
            self.stats.truncated = bool(getattr(self.source, "truncated", False))
            if self.display is not None:
                self.display.close()
        if self._error is not None:
            self.stats.stopped_by = "error"
            raise self._error
        return self.stats

    def _run_sequential(self) -> None:
        try:
            for frame in self.source:
                self.stats.frames_read += 1
                self._show(self._emit(frame, self._infer(frame)))
                if self._reached_max():
                    self.stop("max_frames")
                if self._stop.is_set():
                    break
        except KeyboardInterrupt:
            self.stop("interrupt")
        except BaseException as e:
            self._error = e

    def _run_threaded(self) -> None:
        reader = FrameReader(self.source, maxsize=self.queue_size,
                             max_frames=None if self.source.live else self.max_frames)
        results: queue.Queue = queue.Queue(maxsize=self.queue_size)
        shown = LatestSlot()
        infer = threading.Thread(target=self._guard, args=(self._inference_loop, reader, results),
                                 name="inference", daemon=True)
        render = threading.Thread(target=self._guard, args=(self._render_loop, results, shown),
                                  name="render", daemon=True)
        self._render_thread = render
        try:
            render.start()  # before inference, which checks that render is alive to hand it END
            reader.start()
            infer.start()
            while render.is_alive():
                if self.display is not None:
                    try:
                        self._show(shown.get(timeout=0.05))
                    except TimeoutError:
                        pass
                else:
                    render.join(timeout=0.2)
        except KeyboardInterrupt:
            self.stop("interrupt")
        finally:
            self._stop.set()
            reader.stop()
            # A frame in flight cannot be interrupted; on a slow or loaded machine it may take a
            # while, and leaving the thread behind would let it run into interpreter shutdown.
            for name, ok in (("inference", join_thread(infer, 60.0)), ("render", join_thread(render, 60.0)),
                             ("capture", reader.join(10.0))):
                if not ok:
                    LOG.warning("%s thread did not stop in time", name)
            self.stats.frames_read = reader.frames_read
            self.stats.dropped = reader.dropped
            if reader.error is not None and self._error is None:
                self._error = reader.error

    def _guard(self, loop: Callable[..., None], *args: Any) -> None:
        try:
            loop(*args)
        except BaseException as e:  # re-raised by run() in the calling thread
            if self._error is None:
                self._error = e
            self.stop("error")

    def _render_leaving(self) -> bool:
        render = getattr(self, "_render_thread", None)
        return (render is None or not render.is_alive()
                or (self._stop.is_set() and self.stats.stopped_by in ("user", "interrupt")))

    def _inference_loop(self, reader: FrameReader, results: queue.Queue) -> None:
        try:
            while not self._stop.is_set():
                try:
                    frame = reader.get(timeout=0.1)
                except TimeoutError:
                    continue
                if frame is END:
                    break
                if not _put(results, (frame, self._infer(frame)), self._stop.is_set):
                    return
                if self._reached_max():
                    self.stop("max_frames")
                    reader.stop()
                    break
        finally:
            # The render stage needs END to finish, unless it is already leaving (user stop,
            # Ctrl-C) or gone (its own error).
            _put(results, END, lambda: self._render_leaving())

    def _render_loop(self, results: queue.Queue, shown: LatestSlot) -> None:
        while True:
            try:
                item = results.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set() and self.stats.stopped_by in ("user", "interrupt"):
                    return
                continue
            if item is END:
                return
            if self._stop.is_set() and self.stats.stopped_by in ("user", "interrupt"):
                return  # the user is waiting: drop what is still queued
            rendered = self._emit(*item)
            if self.display is not None and rendered is not None:
                shown.put(rendered)


def _put(q: queue.Queue, item: object, give_up: Callable[[], bool]) -> bool:
    """Blocking put that gives up when `give_up()` turns true."""
    while True:
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            if give_up():
                return False

