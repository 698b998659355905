"""Server-side capture: one source read once, its frames and poses pushed to every viewer.

Threads: while someone is watching, the reader paces a video file at its own frame rate (a camera
paces itself) and hands frames to the shared inference worker; the publisher encodes each
result's frame as JPEG once and puts (frame, poses) into every viewer's single-slot outbox.
"""
from __future__ import annotations

import asyncio
import logging
import threading
import time
from pathlib import Path
from typing import Any

import cv2

from . import schemas
from .jpeg import encode_jpeg
from .worker import FrameJob, InferenceWorker, JobOutcome

LOG = logging.getLogger(__name__)

STREAM = "broadcast"


def open_capture(source: str | int) -> cv2.VideoCapture:
    """Open a camera index, video file or stream URL; raises ValueError naming the source."""
    if isinstance(source, str) and "://" not in source and not Path(source).is_file():
        raise ValueError(f"video source not found: {source}")
    cap = cv2.VideoCapture(source)
    if not cap.isOpened():
        cap.release()
        raise ValueError(f"cannot open video source: {source}")
    return cap


class Broadcaster:
    def __init__(self, source: str | int, worker: InferenceWorker, *, loop_file: bool = True,
                 max_width: int = 960, jpeg_quality: int = 80):
        self.source = source
        self.name = f"camera {source}" if isinstance(source, int) else str(source)
        self.worker = worker
        self.loop_file = loop_file
        self.max_width = max_width
        self.jpeg_quality = jpeg_quality
        self.is_file = isinstance(source, str) and "://" not in source
        self.image_wh: list[int] | None = None
        self.fps: float | None = None
        self.frames_read = 0
        self.frames_published = 0
        self.error: str | None = None
        self._viewers: dict[Any, bool] = {}  # outbox -> wants JPEG frames
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = threading.Event()
        self._result_ready = threading.Condition()
        self._result: tuple[FrameJob, JobOutcome] | None = None
        self._cap: cv2.VideoCapture | None = None
        self._threads: list[threading.Thread] = []

    # ---- lifecycle (event-loop thread) ----

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._cap = open_capture(self.source)
        w = int(self._cap.get(cv2.CAP_PROP_FRAME_WIDTH))
        h = int(self._cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.image_wh = [w, h] if w > 0 and h > 0 else None
        fps = self._cap.get(cv2.CAP_PROP_FPS)
        self.fps = float(fps) if fps and 0 < fps < 1000 else None
        self._threads = [threading.Thread(target=self._read_loop, name="xnect-bc-read", daemon=True),
                         threading.Thread(target=self._publish_loop, name="xnect-bc-publish", daemon=True)]
        for t in self._threads:
            t.start()
        LOG.info("broadcasting %s (%s, %s fps)", self.name, self.image_wh, self.fps)

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        with self._result_ready:
            self._result_ready.notify_all()
        for t in self._threads:
            t.join(timeout)

    @property
    def running(self) -> bool:
        return any(t.is_alive() for t in self._threads) and not self._stop.is_set()

    def subscribe(self, outbox: Any, send_frames: bool = True) -> None:
        self._viewers[outbox] = send_frames

    def unsubscribe(self, outbox: Any) -> None:
        self._viewers.pop(outbox, None)

    @property
    def viewers(self) -> int:
        return len(self._viewers)

    def status(self) -> schemas.BroadcastStatus:
        return schemas.BroadcastStatus(source=self.name, running=self.running, frames_read=self.frames_read,
                                       frames_published=self.frames_published, viewers=self.viewers,
                                       error=self.error)

    # ---- reader thread ----

    def _read_loop(self) -> None:
        cap = self._cap
        assert cap is not None
        period = 1.0 / self.fps if (self.is_file and self.fps) else 0.0
        next_t = time.perf_counter()
        empty_restarts = 0
        try:
            while not self._stop.is_set():
                if not self._viewers:  # nobody watching: no decoding, no inference
                    # A live source keeps its buffer fresh (grab blocks at its frame rate).
                    if self.is_file or not cap.grab():
                        self._stop.wait(0.1)
                    next_t = time.perf_counter()
                    continue
                ok, frame = cap.read()
                if not ok or frame is None:
                    if self.is_file and self.loop_file and empty_restarts < 3:
                        empty_restarts += 1
                        cap.release()
                        cap = self._cap = open_capture(self.source)
                        continue
                    self.error = "end of video" if self.is_file else "camera stopped delivering frames"
                    LOG.info("broadcast source %s: %s", self.name, self.error)
                    return
                empty_restarts = 0
                self.frames_read += 1
                self.worker.submit(FrameJob(stream=STREAM, frame_id=self.frames_read,
                                            client_ts=time.time() * 1000, image=frame, on_done=self._on_done))
                if period:
                    next_t += period
                    delay = next_t - time.perf_counter()
                    if delay > 0:
                        self._stop.wait(delay)
                    elif delay < -1.0:
                        next_t = time.perf_counter()  # fell far behind: do not try to catch up
        except Exception as err:  # a broken source must not take the server down
            self.error = f"source failed: {err}"
            LOG.exception("broadcast source %s failed", self.name)
        finally:
            cap.release()

    # ---- worker callback -> publisher thread ----

    def _on_done(self, job: FrameJob, outcome: JobOutcome) -> None:
        if outcome.result is None:
            return  # dropped as stale, or failed: the next frame follows
        with self._result_ready:
            self._result = (job, outcome)
            self._result_ready.notify()

    def _publish_loop(self) -> None:
        times: list[float] = []
        while not self._stop.is_set():
            with self._result_ready:
                while self._result is None and not self._stop.is_set():
                    self._result_ready.wait(0.5)
                if self._stop.is_set():
                    return
                job, outcome = self._result  # type: ignore[misc]
                self._result = None
            try:
                times = (times + [time.perf_counter()])[-30:]
                fps = 0.0 if len(times) < 2 else round((len(times) - 1) / max(times[-1] - times[0], 1e-6), 2)
                text = schemas.poses_message(job, outcome, fps).model_dump_json()
                image = outcome.image
                assert image is not None
                h, w = image.shape[:2]
                if w > self.max_width:
                    image = cv2.resize(image, (self.max_width, round(h * self.max_width / w)),
                                       interpolation=cv2.INTER_AREA)
                frame = schemas.pack_frame(job.frame_id, job.client_ts or 0.0,
                                           encode_jpeg(image, self.jpeg_quality))
                if self._loop is not None:
                    self._loop.call_soon_threadsafe(self._publish, frame, text)
            except RuntimeError:
                return  # event loop closed
            except Exception:
                LOG.exception("could not publish broadcast frame %d", job.frame_id)

    def _publish(self, frame: bytes, text: str) -> None:
        """Event-loop thread: hand the packet to every viewer; a viewer's unsent one is replaced."""
        self.frames_published += 1
        for outbox, send_frames in list(self._viewers.items()):
            outbox.put_latest(frame if send_frames else None, text)
