"""Frame sources: camera index, video file, image file / folder / glob, stream URL (RTSP, HTTP).

Every source is an iterable of `Frame`s whose errors name the source. Files deliver every frame
in order; live sources (cameras, streams, or a file played with ``realtime=True``) are read by a
`FrameReader` thread that keeps only the newest frame, so a slow consumer sees fresh frames
instead of a growing backlog.

Problems that do not stop the rest of the input (a corrupt image in a folder, a video that ends
before its header says it should) are logged and collected in ``source.problems``.
"""
from __future__ import annotations

import contextlib
import glob as globlib
import logging
import os
import queue
import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

import cv2  # OpenCV's and FFmpeg's console chatter is quieted by the package (xnect_app/__init__.py)

LOG = logging.getLogger(__name__)

IMAGE_EXTS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".ppm", ".pgm"})
VIDEO_EXTS = frozenset({".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".wmv",
                        ".flv", ".ts", ".3gp", ".ogv", ".mjpeg", ".mjpg"})
URL_RE = re.compile(r"^[a-z][a-z0-9+.-]*://", re.IGNORECASE)


@contextlib.contextmanager
def _opencv_silent():
    """OpenCV's log off while probing a device: OpenCV 5 logs a missing camera at ERROR level
    ('Camera index out of range') before our own one-line error."""
    old = cv2.utils.logging.getLogLevel()
    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_SILENT)
    try:
        yield
    finally:
        cv2.utils.logging.setLogLevel(old)


class SourceError(RuntimeError):
    """A source cannot be opened or read; the message names the source and fits on one line."""


@dataclass
class Frame:
    """One decoded frame.

    index: position in the source (decode order, 0-based).
    time_s: media time (index / fps for files) or seconds since the start for live sources.
    t_read: time.perf_counter() when decoding finished; the origin of end-to-end latency.
    """

    index: int
    image: np.ndarray
    time_s: float
    t_read: float
    read_ms: float = 0.0
    name: str = ""


class Source:
    """Base class: open(), iterate Frames, close(). Usable in a `with` block."""

    name: str = ""
    live: bool = False

    def __init__(self) -> None:
        self.fps: float | None = None
        self.size: tuple[int, int] | None = None  # (width, height) when known and fixed
        self.expected_frames: int | None = None
        self.problems: list[str] = []
        self.truncated = False

    def open(self) -> "Source":
        return self

    def close(self) -> None:
        pass

    def frames(self) -> Iterator[Frame]:
        raise NotImplementedError

    def __iter__(self) -> Iterator[Frame]:
        return self.frames()

    def __enter__(self) -> "Source":
        return self.open()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _problem(self, msg: str) -> None:
        LOG.info("%s", msg)  # callers report `problems` to the user
        self.problems.append(msg)


class _CaptureSource(Source):
    """Shared frame loop over a cv2.VideoCapture."""

    def __init__(self) -> None:
        super().__init__()
        self._cap: cv2.VideoCapture | None = None
        # The capture thread reads while Ctrl-C may close from the main thread; releasing a
        # capture inside read() aborts the process, so the two never overlap.
        self._cap_lock = threading.Lock()

    def _describe_capture(self) -> None:
        cap = self._cap
        fps = cap.get(cv2.CAP_PROP_FPS)
        self.fps = fps if 0.5 < fps < 1000 else None
        w, h = int(cap.get(cv2.CAP_PROP_FRAME_WIDTH)), int(cap.get(cv2.CAP_PROP_FRAME_HEIGHT))
        self.size = (w, h) if w > 0 and h > 0 else None

    def close(self) -> None:
        with self._cap_lock:
            if self._cap is not None:
                self._cap.release()
                self._cap = None

    def _read(self) -> tuple[np.ndarray | None, float]:
        t0 = time.perf_counter()
        with self._cap_lock:
            if self._cap is None:  # closed meanwhile
                return None, 0.0
            ok, img = self._cap.read()
        return (img if ok and img is not None and img.size else None), (time.perf_counter() - t0) * 1e3


class VideoSource(_CaptureSource):
    """A video file, every frame in order. ``realtime=True`` plays it at its own frame rate as a
    live source (newest frame wins), which is how a webcam behaves."""

    def __init__(self, path: str | os.PathLike, *, realtime: bool = False) -> None:
        super().__init__()
        self.path = Path(path)
        self.name = str(path)
        self.live = realtime

    def open(self) -> "VideoSource":
        if not self.path.exists():
            raise SourceError(f"{self.path}: no such file")
        if self.path.is_dir():
            raise SourceError(f"{self.path}: is a folder, not a video (use --images for image folders)")
        if not os.access(self.path, os.R_OK):
            raise SourceError(f"{self.path}: permission denied")
        self._cap = cv2.VideoCapture(str(self.path), cv2.CAP_FFMPEG)
        if not self._cap.isOpened():
            self._cap = None
            raise SourceError(f"{self.path}: {_why_unreadable(self.path)}")
        self._describe_capture()
        n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
        self.expected_frames = n if n > 0 else None
        return self

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            self.open()
        fps = self.fps or 25.0
        start = time.perf_counter()
        index = 0
        while True:
            img, read_ms = self._read()
            if img is None:
                break
            if self.live:  # pace like a camera: frame i is available at start + i / fps
                delay = start + index / fps - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            yield Frame(index, img, index / fps, time.perf_counter(), read_ms, self.name)
            index += 1
        if self._cap is not None:  # not closed under us
            self._check_end(index)

    def _check_end(self, decoded: int) -> None:
        # The header's frame count is an estimate for some containers; allow a little slack.
        expected = self.expected_frames
        if expected and decoded < expected - max(1, expected // 100):
            self.truncated = True
            self._problem(f"{self.path}: video ended after {decoded} of {expected} frames "
                          "(truncated or corrupt file)")
        elif decoded == 0:
            self.truncated = True
            self._problem(f"{self.path}: no frame could be decoded")


class CameraSource(_CaptureSource):
    """A local camera by index; live."""

    live = True

    def __init__(self, index: int, *, size: tuple[int, int] | None = None) -> None:
        super().__init__()
        self.index = int(index)
        self.name = f"camera {self.index}"
        self.requested_size = size

    def open(self) -> "CameraSource":
        with _opencv_silent():
            self._cap = cv2.VideoCapture(self.index)
        if not self._cap.isOpened():
            self._cap = None
            raise SourceError(
                f"camera {self.index} could not be opened: check that it is connected and not in use "
                f"by another program, try another index (--camera {self.index + 1}), check permissions "
                "on /dev/video*, or use --video PATH / --source URL / --images DIR instead")
        if self.requested_size:
            self._cap.set(cv2.CAP_PROP_FRAME_WIDTH, self.requested_size[0])
            self._cap.set(cv2.CAP_PROP_FRAME_HEIGHT, self.requested_size[1])
        self._describe_capture()
        return self

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            self.open()
        start = time.perf_counter()
        index = 0
        while True:
            img, read_ms = self._read()
            if img is None:
                if index == 0:
                    raise SourceError(f"{self.name}: opened but delivered no frame")
                self._problem(f"{self.name}: stopped delivering frames after {index}")
                break
            now = time.perf_counter()
            yield Frame(index, img, now - start, now, read_ms, self.name)
            index += 1


class StreamSource(_CaptureSource):
    """A network stream (rtsp://, http(s)://, rtmp://, udp:// ...) through FFmpeg. Live by default;
    ``live=False`` reads every frame (e.g. a video file served over HTTP, in batch mode)."""

    def __init__(self, url: str, *, live: bool = True, open_timeout_s: float = 10.0) -> None:
        super().__init__()
        self.url = url
        self.name = url
        self.live = live
        self.open_timeout_s = open_timeout_s

    def open(self) -> "StreamSource":
        ms = int(self.open_timeout_s * 1000)
        params = [cv2.CAP_PROP_OPEN_TIMEOUT_MSEC, ms, cv2.CAP_PROP_READ_TIMEOUT_MSEC, ms]
        self._cap = cv2.VideoCapture(self.url, cv2.CAP_FFMPEG, params)
        if not self._cap.isOpened():
            self._cap = None
            raise SourceError(f"{self.url}: stream could not be opened (check the address, that the "
                              "server is running and reachable, and any credentials in the URL)")
        self._describe_capture()
        if not self.live:
            n = int(self._cap.get(cv2.CAP_PROP_FRAME_COUNT))
            self.expected_frames = n if n > 0 else None
        return self

    def frames(self) -> Iterator[Frame]:
        if self._cap is None:
            self.open()
        start = time.perf_counter()
        fps = self.fps or 25.0
        index = 0
        while True:
            img, read_ms = self._read()
            if img is None:
                break
            now = time.perf_counter()
            t = now - start if self.live else index / fps
            yield Frame(index, img, t, now, read_ms, self.name)
            index += 1
        if index == 0:
            raise SourceError(f"{self.url}: stream opened but delivered no frame")
        if self.live:
            self._problem(f"{self.url}: stream ended after {index} frames")


class ImageSource(Source):
    """Still images in the given order. Unreadable images are skipped and reported."""

    def __init__(self, paths: list[Path], name: str, *, fps: float | None = None) -> None:
        super().__init__()
        self.paths = [Path(p) for p in paths]
        self.name = name
        self.fps = fps
        self.expected_frames = len(self.paths)
        self.skipped: list[Path] = []

    def open(self) -> "ImageSource":
        if not self.paths:
            raise SourceError(f"{self.name}: no images found (looked for {', '.join(sorted(IMAGE_EXTS))})")
        return self

    def frames(self) -> Iterator[Frame]:
        self.open()
        index = 0
        for path in self.paths:
            t0 = time.perf_counter()
            img = cv2.imread(str(path), cv2.IMREAD_COLOR)
            read_ms = (time.perf_counter() - t0) * 1e3
            if img is None or img.size == 0:
                self.skipped.append(path)
                self._problem(f"{path}: not a readable image (corrupt or unsupported); skipped")
                continue
            t = index / self.fps if self.fps else float(index)
            yield Frame(index, img, t, time.perf_counter(), read_ms, str(path))
            index += 1
        if index == 0:
            raise SourceError(f"{self.name}: none of the {len(self.paths)} images could be read")


def _why_unreadable(path: Path) -> str:
    """A one-line guess at why FFmpeg refused a file."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as e:
        return f"cannot read ({e.strerror})"
    if size == 0:
        return "empty file"
    if head[4:8] == b"ftyp":
        return "MP4/MOV file that cannot be decoded (truncated: its index is missing, or corrupt)"
    if head[:4] == b"RIFF" or head[:4] == b"\x1aE\xdf\xa3":
        return "video container that cannot be decoded (truncated or corrupt)"
    try:
        head.decode("utf-8")
        return "not a video file (it contains text)"
    except UnicodeDecodeError:
        return "not a video file OpenCV/FFmpeg can decode"


def list_images(folder: Path) -> list[Path]:
    """Image files directly in `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTS)


def is_url(spec: str) -> bool:
    return bool(URL_RE.match(spec))


def is_glob(spec: str) -> bool:
    return any(c in spec for c in "*?[")


def open_source(spec: str | int, *, kind: str | None = None, realtime: bool = False,
                live: bool | None = None) -> Source:
    """Build (not open) the source for a user's argument.

    kind: "camera", "video", "stream", "images" or None to guess: an integer is a camera, a URL a
    stream, a folder or glob an image set, an image file a one-image set, anything else a video.
    live: force live (newest-frame) or file (every-frame) behaviour for streams.
    """
    spec_s = str(spec)
    if kind is None:
        if isinstance(spec, int) or spec_s.isdigit():
            kind = "camera"
        elif is_url(spec_s):
            kind = "stream"
        elif Path(spec_s).is_dir() or (is_glob(spec_s) and not Path(spec_s).exists()):
            kind = "images"
        elif Path(spec_s).suffix.lower() in IMAGE_EXTS:
            kind = "images"
        else:
            kind = "video"
    if kind == "camera":
        try:
            return CameraSource(int(spec_s))
        except ValueError:
            raise SourceError(f"{spec_s}: a camera is a number (0 for the first camera)") from None
    if kind == "stream":
        if not is_url(spec_s):
            raise SourceError(f"{spec_s}: not a stream URL (expected e.g. rtsp://host/path or http://...)")
        return StreamSource(spec_s, live=True if live is None else live)
    if kind == "video":
        return VideoSource(spec_s, realtime=realtime)
    if kind == "images":
        return _image_source(spec_s)
    raise ValueError(f"unknown source kind {kind!r}")


def _image_source(spec: str) -> ImageSource:
    p = Path(spec)
    if p.is_dir():
        return ImageSource(list_images(p), spec)
    if p.is_file():
        return ImageSource([p], spec)
    if is_glob(spec):
        paths = sorted(Path(m) for m in globlib.glob(spec)
                       if Path(m).is_file() and Path(m).suffix.lower() in IMAGE_EXTS)
        if not paths:
            raise SourceError(f"{spec}: no image matches this pattern")
        return ImageSource(paths, spec)
    raise SourceError(f"{spec}: no such file or folder")


# --- reader thread --------------------------------------------------------------------------

END = object()  # sentinel: the source is exhausted (or failed; see FrameReader.error)


class LatestSlot:
    """A one-frame mailbox: put() replaces an unread frame (counted as dropped), get() waits.
    close() marks the end; get() then returns the last unread frame, if any, and then END."""

    def __init__(self) -> None:
        self._item: object | None = None
        self._ended = False
        self._cond = threading.Condition()
        self.dropped = 0

    def put(self, item: object) -> None:
        with self._cond:
            if self._item is not None:
                self.dropped += 1
            self._item = item
            self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._ended = True
            self._cond.notify()

    def get(self, timeout: float | None = None) -> object:
        with self._cond:
            if not self._cond.wait_for(lambda: self._item is not None or self._ended, timeout):
                raise TimeoutError
            item, self._item = self._item, None
            return END if item is None else item


def join_thread(t: threading.Thread, timeout: float) -> bool:
    """Join with a timeout that a Ctrl-C meanwhile does not cut short: the thread may still be
    using a source that the caller closes next. True when the thread has ended."""
    if t.ident is None:  # never started
        return True
    deadline = time.perf_counter() + timeout
    while t.is_alive() and time.perf_counter() < deadline:
        try:
            t.join(min(0.2, max(0.0, deadline - time.perf_counter())))
        except KeyboardInterrupt:
            continue
    return not t.is_alive()


class FrameReader:
    """Reads a source in its own thread.

    Files: a bounded queue, the reader blocks when it is full, so every frame arrives in order.
    Live sources: a `LatestSlot`, so only the newest frame waits and stale ones are dropped.
    get() returns a Frame or END; after END, `error` holds the exception that ended the source
    early, if any.
    """

    def __init__(self, source: Source, *, maxsize: int = 4, max_frames: int | None = None) -> None:
        self.source = source
        self.max_frames = max_frames
        self.error: BaseException | None = None
        self.frames_read = 0
        self._stop = threading.Event()
        self._slot: LatestSlot | None = LatestSlot() if source.live else None
        self._queue: queue.Queue | None = None if source.live else queue.Queue(maxsize=max(1, maxsize))
        self._thread = threading.Thread(target=self._run, name=f"capture:{source.name}", daemon=True)

    @property
    def dropped(self) -> int:
        return self._slot.dropped if self._slot is not None else 0

    def start(self) -> "FrameReader":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def join(self, timeout: float = 10.0) -> bool:
        return join_thread(self._thread, timeout)

    def get(self, timeout: float | None = None) -> Frame | object:
        """The next frame or END; raises TimeoutError when nothing arrived in `timeout`."""
        if self._slot is not None:
            return self._slot.get(timeout)
        try:
            return self._queue.get(timeout=timeout)
        except queue.Empty:
            raise TimeoutError from None

    def _put(self, item: object) -> bool:
        if self._slot is not None:
            self._slot.put(item)
            return True
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        try:
            for frame in self.source:
                if self._stop.is_set() or not self._put(frame):
                    break
                self.frames_read += 1
                if self.max_frames is not None and self.frames_read >= self.max_frames:
                    break
        except BaseException as e:  # handed to the consumer, which reports it
            self.error = e
        finally:
            self._put_end()

    def _put_end(self) -> None:
        if self._slot is not None:
            self._slot.close()
            return
        while True:  # END must arrive even if the consumer is slow; give up only when stopped
            try:
                self._queue.put(END, timeout=0.1)
                return
            except queue.Full:
                if self._stop.is_set():
                    return
