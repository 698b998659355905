"""The threaded pipeline on real clips: order, drop policy for live sources, shutdown paths.

The estimator here is a small real detector (OpenCV MOG2 background subtraction: every moving
blob becomes a person), so the tests do not depend on trained weights and run fast; the CLI tests
use the real PoseEstimator.
"""
from __future__ import annotations

import _thread
import threading
import time
from typing import Callable

import cv2
import numpy as np
import pytest

from xnect_app import skeleton
from xnect_app.io import sinks, sources
from xnect_app.pipeline import Pipeline
from xnect_app.pose import kinematics
from xnect_app.types import FrameResult, Intrinsics, Person

from shared_data import DATA, needs_data

TWO = DATA / "videos" / "two_people_courtyard.mp4"   # 40 frames, 12 fps
SHORT = DATA / "videos" / "short_clip.mp4"           # 5 frames
pytestmark = needs_data("videos/two_people_courtyard.mp4")

# Joint positions as fractions of a standing person's box (x, y), JOINTS_2D order.
BOX_POSE = np.array([
    (0.50, 0.00), (0.50, 0.17), (0.30, 0.19), (0.22, 0.36), (0.20, 0.50), (0.70, 0.19), (0.78, 0.36),
    (0.80, 0.50), (0.40, 0.50), (0.40, 0.74), (0.40, 0.97), (0.60, 0.50), (0.60, 0.74), (0.60, 0.97),
    (0.50, 0.07), (0.46, 0.05), (0.54, 0.05), (0.42, 0.06), (0.58, 0.06)])


class MotionPeople:
    """Moving blobs (MOG2 background subtraction) as people with a box-shaped 2D pose and the
    rest-pose 3D skeleton. `delay_s` makes it slow; `fail_at` raises on that call."""

    def __init__(self, delay_s: float = 0.0, fail_at: int | None = None, width: int = 320) -> None:
        self.bg = cv2.createBackgroundSubtractorMOG2(history=30, detectShadows=False)
        self.delay_s, self.fail_at, self.width = delay_s, fail_at, width
        self.calls = 0

    def __call__(self, image: np.ndarray, timestamp: float | None = None) -> FrameResult:
        if self.fail_at is not None and self.calls == self.fail_at:
            raise RuntimeError(f"detector failed on call {self.calls}")
        t0 = time.perf_counter()
        h, w = image.shape[:2]
        s = self.width / w
        mask = self.bg.apply(cv2.resize(image, (self.width, round(h * s))))
        mask = cv2.morphologyEx(mask, cv2.MORPH_CLOSE, np.ones((5, 5), np.uint8))
        contours, _ = cv2.findContours(mask, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        people = []
        for c in sorted(contours, key=lambda c: cv2.boundingRect(c)[0]):
            x, y, bw, bh = (v / s for v in cv2.boundingRect(c))
            if bh * s < 12 or bh < bw:
                continue
            kp = np.ones((19, 3)) * 0.9
            kp[:, :2] = (x, y) + BOX_POSE * (bw, bh)
            rel = kinematics.fk(np.zeros((21, 3)), np.zeros(3), np.zeros(3), kinematics.DEFAULT_BONE_LENGTHS_MM)
            people.append(Person(len(people), 0.5, kp, rel, rel + (0, 0, 4000.0)))
        if self.delay_s:
            time.sleep(self.delay_s)
        self.calls += 1
        return FrameResult(self.calls - 1, timestamp or 0.0, (w, h), people, Intrinsics.from_fov(w, h, 60.0),
                           {"detect": (time.perf_counter() - t0) * 1e3})


class Collect(sinks.Sink):
    """Keeps what it is given (and the rendered frames when asked to)."""

    def __init__(self, needs_render: bool = False) -> None:
        super().__init__()
        self.needs_render = needs_render
        self.results: list[FrameResult] = []
        self.rendered: list[np.ndarray] = []

    def write(self, frame, result, rendered=None) -> None:
        self.results.append(result)
        if rendered is not None:
            self.rendered.append(rendered)


class Held(sources.Source):
    """`inner`'s frames, each passed on once `gate(index)` returns: the test decides how far the
    input gets, so it cannot end before the event under test."""

    def __init__(self, inner: sources.Source, gate: Callable[[int], object]) -> None:
        super().__init__()
        self.inner, self.gate = inner, gate
        self.name, self.live, self.problems = inner.name, inner.live, inner.problems

    def close(self) -> None:
        self.inner.close()

    def frames(self):
        for frame in self.inner:
            self.gate(frame.index)
            yield frame
        self.truncated = self.inner.truncated


def poses(results: list[FrameResult]) -> list[list[tuple]]:
    return [[tuple(np.round(p.kp2d[:, :2].ravel(), 3)) for p in r.people] for r in results]


def test_file_run_delivers_every_frame_in_order(tmp_path):
    out = Collect()
    jsonl = sinks.JsonlSink(tmp_path / "a.jsonl", model="mog2", fps=12.0)
    stats = Pipeline(sources.VideoSource(TWO), MotionPeople(), [out, jsonl], queue_size=2).run()
    jsonl.close()
    assert [r.frame_index for r in out.results] == list(range(40))
    assert [r.time_s for r in out.results] == pytest.approx([i / 12 for i in range(40)])
    assert sum(len(r.people) for r in out.results) > 10, "the two walkers are found"
    assert stats.frames == stats.frames_read == 40 and stats.dropped == 0 and stats.stopped_by == "end"
    assert stats.fps > 0 and len(stats.latency_ms) == 40 and len(stats.stage_ms["inference"]) == 40
    assert "detect" in stats.summary_dict()["estimator_ms"]
    assert len((tmp_path / "a.jsonl").read_text().splitlines()) == 41


def test_threaded_and_sequential_give_the_same_results():
    a, b = Collect(), Collect()
    Pipeline(sources.VideoSource(TWO), MotionPeople(), [a], threaded=True, max_frames=25).run()
    stats = Pipeline(sources.VideoSource(TWO), MotionPeople(), [b], threaded=False, max_frames=25).run()
    assert len(a.results) == len(b.results) == 25 and not stats.threaded
    assert poses(a.results) == poses(b.results)


def test_live_source_drops_stale_frames_and_numbers_processed_ones():
    out = Collect()
    live = sources.VideoSource(TWO, realtime=True)  # 40 frames paced at 12 fps (3.3 s)
    stats = Pipeline(live, MotionPeople(delay_s=0.25), [out]).run()
    assert 5 <= stats.frames <= 20 and stats.dropped > 10
    assert stats.frames + stats.dropped == stats.frames_read == 40
    assert [r.frame_index for r in out.results] == list(range(stats.frames))  # no gaps
    times = [r.time_s for r in out.results]
    assert times == sorted(times) and times[-1] > 2.5  # real capture times, kept up to the end
    assert max(stats.latency_ms) < 1500, "latency stays bounded instead of growing with a backlog"


def test_stop_from_another_thread_ends_quickly():
    # A camera, stopped from another thread once the first result is out; it holds frame 20
    # until the run stops, so the input cannot end first.
    first, asked = threading.Event(), []

    def stopper() -> None:
        if first.wait(30):
            asked.append(time.perf_counter())
            p.stop()

    src = Held(sources.VideoSource(TWO, realtime=True), lambda i: i < 20 or p.wait_stopping(30))
    p = Pipeline(src, MotionPeople(delay_s=0.05), [Collect()], on_result=lambda f, r: first.set())
    threading.Thread(target=stopper, daemon=True).start()
    stats = p.run()
    assert stats.stopped_by == "user" and time.perf_counter() - asked[0] < 1.5 and 0 < stats.frames < 40


def test_max_frames():
    out = Collect()
    stats = Pipeline(sources.VideoSource(TWO), MotionPeople(), [out], max_frames=7).run()
    assert len(out.results) == 7 and stats.stopped_by == "max_frames" and not stats.truncated


def test_estimator_error_is_raised_after_a_clean_stop():
    out = Collect()
    before = threading.active_count()
    with pytest.raises(RuntimeError, match="failed on call 3"):
        Pipeline(sources.VideoSource(TWO), MotionPeople(fail_at=3), [out]).run()
    assert [r.frame_index for r in out.results] == [0, 1, 2]
    assert threading.active_count() <= before, "pipeline threads are gone when run() raises"


def test_ctrl_c_stops_the_run():
    # Ctrl-C once three results are out; the input holds frame 10 until the run stops, so it
    # cannot end first.
    pressed = []

    def ctrl_c_after_three(frame, result) -> None:
        if p.stats.frames == 3:
            pressed.append(time.perf_counter())
            _thread.interrupt_main()

    src = Held(sources.VideoSource(TWO), lambda i: i < 10 or p.wait_stopping(30))
    p = Pipeline(src, MotionPeople(delay_s=0.05), [Collect()], on_result=ctrl_c_after_three)
    stats = p.run()
    assert stats.stopped_by == "interrupt" and time.perf_counter() - pressed[0] < 2 and 3 <= stats.frames < 40


class ScriptedKeys:
    """A user at the window who presses q on the third frame shown."""

    def __init__(self) -> None:
        self.shown: list[np.ndarray] = []
        self.closed = False
        self._cond = threading.Condition()

    def show(self, image):
        with self._cond:
            self.shown.append(image)
            self._cond.notify_all()
        return ord("q") if len(self.shown) == 3 else -1

    def wait_shown(self, n: int, timeout: float = 30.0) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: len(self.shown) >= n, timeout)

    def close(self):
        self.closed = True


def test_q_in_the_window_stops_and_frames_show_skeletons_and_fps():
    keys, out = ScriptedKeys(), Collect(needs_render=True)

    def gate(i: int) -> None:
        # Frame i comes once i frames are on screen, so every frame is shown and the video
        # cannot end before q; after q nothing more comes until the run stops.
        if i < 3:
            keys.wait_shown(i)
        else:
            p.wait_stopping(30)

    p = Pipeline(Held(sources.VideoSource(TWO), gate), MotionPeople(), [out], display=keys)
    stats = p.run()
    assert stats.stopped_by == "user" and keys.closed and len(keys.shown) == stats.frames == 3
    with_people = [(r, img) for r, img in zip(out.results, out.rendered) if r.people]
    r, img = with_people[-1]
    x, y = r.people[0].kp2d[skeleton.NECK, :2].round().astype(int)
    assert img[y - 3:y + 4, x - 3:x + 4].any(axis=-1).any()
    assert not np.array_equal(img[:40, :160], np.zeros_like(img[:40, :160]))  # HUD text


@needs_data("videos/short_clip.mp4")
def test_truncation_and_problems_reach_the_stats(tmp_path):
    frames = []
    cap = cv2.VideoCapture(str(TWO))
    while len(frames) < 20 and (ok_img := cap.read())[0]:
        frames.append(cv2.resize(ok_img[1], (180, 320)))
    full, cut = tmp_path / "full.avi", tmp_path / "cut.avi"
    vw = cv2.VideoWriter(str(full), cv2.VideoWriter_fourcc(*"MJPG"), 12.0, (180, 320))
    for f in frames:
        vw.write(f)
    vw.release()
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    out = Collect()
    stats = Pipeline(sources.VideoSource(cut), MotionPeople(), [out]).run()
    assert stats.truncated and stats.stopped_by == "end" and 0 < stats.frames < 20
    assert any("truncated" in p for p in stats.problems)
