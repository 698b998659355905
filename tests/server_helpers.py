"""Shared by the server tests: real frames from the shared clips, and a real server process."""
from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import cv2
import httpx
import numpy as np

REPO = Path(__file__).resolve().parents[1]
from shared_data import DATA, require  # noqa: E402  (DATA re-exported for the server tests)
ARTEFACTS = Path(os.environ.get("XNECT_TEST_ARTEFACTS", REPO / "out" / "test-artefacts"))


def clip_path(name: str = "two_people_courtyard.mp4") -> Path:
    for folder in (REPO / "tests" / "data", DATA / "videos"):
        if (folder / name).is_file():
            return folder / name
    # not in tests/data: from the shared data (missing: a skip naming the path; under CI=true an error)
    return require(f"videos/{name}")


def read_frames(name: str = "two_people_courtyard.mp4", n: int = 10, width: int | None = 360) -> list[np.ndarray]:
    """The first n frames of a real clip, resized to `width` (aspect kept)."""
    cap = cv2.VideoCapture(str(clip_path(name)))
    frames = []
    while len(frames) < n:
        ok, frame = cap.read()
        if not ok:
            break
        if width is not None:
            h, w = frame.shape[:2]
            frame = cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
        frames.append(frame)
    cap.release()
    assert frames, f"no frames read from {name}"
    return frames


def jpeg(frame: np.ndarray, quality: int = 85) -> bytes:
    ok, buf = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, quality])
    assert ok
    return buf.tobytes()


class LiveServer:
    """`xnect-server` in a subprocess on 127.0.0.1 and a free port, with a random-init model
    (or the bundled weights)."""

    def __init__(self, *extra: str, input_size: str = "256x160", startup_timeout: float = 120.0,
                 bundled: bool = False):
        self.log_path = ARTEFACTS / f"server-{os.getpid()}-{time.monotonic_ns()}.log"
        ARTEFACTS.mkdir(parents=True, exist_ok=True)
        self._log = open(self.log_path, "w")
        weights = [] if bundled else ["--random-weights"]  # bundled: the default weights, as users run it
        cmd = [sys.executable, "-m", "xnect_app.cli.server", "--port", "0", *weights,
               "--input-size", input_size, "--log-level", "warning", *extra]
        env = dict(os.environ, PYTHONUNBUFFERED="1", OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
        self.proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=self._log, text=True, env=env)
        line = self.proc.stdout.readline()  # "xnect-server: serving on http://HOST:PORT/ ..."
        m = re.search(r"serving on (https?)://([^:/]+):(\d+)/", line or "")
        if not m:
            self.stop()
            raise RuntimeError(f"server did not start: {line!r}; log: {self.log_path.read_text()[-2000:]}")
        self.host, self.port = m.group(2), int(m.group(3))
        self.base = f"http://{self.host}:{self.port}"
        self.ws_base = f"ws://{self.host}:{self.port}"
        deadline = time.monotonic() + startup_timeout
        while True:
            try:
                if httpx.get(self.base + "/healthz", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"server not healthy; log: {self.log_path.read_text()[-2000:]}")
            time.sleep(0.2)

    def status(self, **params) -> dict:
        return httpx.get(self.base + "/api/status", params=params, timeout=10).json()

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()
        # uvicorn re-raises SIGTERM after a graceful shutdown: -15 is a clean exit here.
        if self.proc.returncode in (0, -15) and "Traceback" not in self.log_path.read_text():
            self.log_path.unlink()  # keep logs only of servers that went wrong

    def __enter__(self) -> "LiveServer":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
