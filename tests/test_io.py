"""Sources, sinks, BVH and drawing on real clips (../shared/data/videos, demo_videos/vtest.avi)."""
from __future__ import annotations

import http.server
import json
import socketserver
import threading
import time
from pathlib import Path

import cv2
import numpy as np
import pytest

from xnect_app import skeleton
from xnect_app.io import bvh, draw, sinks, sources
from xnect_app.io.sources import END, Frame, FrameReader, LatestSlot, SourceError
from xnect_app.pose import kinematics
from xnect_app.types import FrameResult, Intrinsics, Person

REPO = Path(__file__).resolve().parents[1]
from shared_data import DATA, needs_data, require

VIDEOS = DATA / "videos"
SHORT = VIDEOS / "short_clip.mp4"          # 960x540, 5 frames
TWO = VIDEOS / "two_people_courtyard.mp4"  # 1080x1920, 40 frames
VTEST = REPO / "demo_videos" / "vtest.avi"

needs_clips = needs_data("videos/short_clip.mp4", "videos/two_people_courtyard.mp4")


def read_all(path: Path) -> list[np.ndarray]:
    cap = cv2.VideoCapture(str(path))
    out = []
    while True:
        ok, img = cap.read()
        if not ok:
            return out
        out.append(img)


def count_frames(path: Path) -> int:
    return len(read_all(path))


def make_person(track_id: int, center=(200.0, 150.0), height=160.0, with_angles: bool = True) -> Person:
    """A standing person from the kinematic model, projected with a pinhole camera."""
    intr = Intrinsics.from_fov(400, 300, 60.0)
    bones = kinematics.DEFAULT_BONE_LENGTHS_MM
    angles = np.zeros((21, 3))
    angles[skeleton.JOINTS_3D.index("r_shoulder")] = (0.0, 0.0, -1.2)  # arms down
    angles[skeleton.JOINTS_3D.index("l_shoulder")] = (0.0, 0.0, 1.2)
    depth = intr.fy * 1700.0 / height
    root = np.array([(center[0] - intr.cx) * depth / intr.fx, (center[1] - intr.cy) * depth / intr.fy, depth])
    cam = kinematics.fk(angles, angles[skeleton.ROOT_3D], root, bones)
    kp2d = np.zeros((19, 3))
    for j2, j3 in enumerate(skeleton.JOINT_3D_OF_2D):
        if j3 >= 0:
            x, y, z = cam[j3]
            kp2d[j2] = (intr.fx * x / z + intr.cx, intr.fy * y / z + intr.cy, 0.9)
        else:
            kp2d[j2] = (np.nan, np.nan, 0.0)
    return Person(track_id, 0.8, kp2d, cam - root, cam, angles if with_angles else None, bones.copy())


def frame_of(img: np.ndarray, i: int, name: str = "") -> Frame:
    return Frame(i, img, i / 10.0, time.perf_counter(), 0.0, name)


# --- sources -----------------------------------------------------------------------------

@needs_clips
def test_video_source_delivers_every_frame_in_order():
    src = sources.VideoSource(SHORT).open()
    frames = list(src)
    assert [f.index for f in frames] == list(range(5))
    assert src.size == (960, 540) and frames[0].image.shape == (540, 960, 3)
    assert [round(f.time_s, 3) for f in frames] == [round(i / src.fps, 3) for i in range(5)]
    assert not src.truncated and src.problems == []


@needs_clips
def test_video_source_errors_name_the_file(tmp_path):
    with pytest.raises(SourceError, match="no_such.mp4: no such file"):
        sources.VideoSource(tmp_path / "no_such.mp4").open()
    text = tmp_path / "notes.mp4"
    text.write_text("this is not a video\n")
    with pytest.raises(SourceError, match=r"notes\.mp4: not a video file \(it contains text\)"):
        sources.VideoSource(text).open()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(TWO.read_bytes()[: TWO.stat().st_size // 2])
    with pytest.raises(SourceError, match=r"cut\.mp4: .*truncated"):
        sources.VideoSource(cut).open()


def write_avi(path: Path, frames: list[np.ndarray], fps: float = 10.0) -> None:
    h, w = frames[0].shape[:2]
    vw = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (w, h))
    for f in frames:
        vw.write(f)
    vw.release()


@pytest.fixture(scope="module")
def truncated_avi(tmp_path_factory) -> tuple[Path, int]:
    """A real 30-frame AVI cut in the middle; returns (path, frames decodable)."""
    require("videos/two_people_courtyard.mp4")
    d = tmp_path_factory.mktemp("trunc")
    frames = [cv2.resize(f, (270, 480)) for f in read_all(TWO)[:30]]
    full = d / "full.avi"
    write_avi(full, frames)
    cut = d / "cut.avi"
    cut.write_bytes(full.read_bytes()[: int(full.stat().st_size * 0.6)])
    return cut, count_frames(cut)


def test_truncated_video_reports_and_keeps_what_decodes(truncated_avi):
    path, decodable = truncated_avi
    assert 5 < decodable < 30
    src = sources.VideoSource(path).open()
    got = list(src)
    assert len(got) == decodable
    assert src.truncated
    assert any("cut.avi" in p and f"after {decodable} of 30 frames" in p for p in src.problems)


@needs_clips
def test_image_folder_skips_corrupt_image(tmp_path):
    for i, img in enumerate(read_all(SHORT)[:3]):
        cv2.imwrite(str(tmp_path / f"{i:03d}.jpg"), cv2.resize(img, (320, 180)))
    (tmp_path / "001b.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (tmp_path / "readme.txt").write_text("ignored: not an image extension")
    src = sources.open_source(str(tmp_path))
    assert isinstance(src, sources.ImageSource)
    frames = list(src.open())
    assert [Path(f.name).name for f in frames] == ["000.jpg", "001.jpg", "002.jpg"]
    assert [f.index for f in frames] == [0, 1, 2]
    assert [p.name for p in src.skipped] == ["001b.jpg"]
    assert "001b.jpg: not a readable image" in src.problems[0]


def test_open_source_guesses_the_kind(tmp_path):
    (tmp_path / "a.png").write_bytes(b"")
    assert isinstance(sources.open_source(0), sources.CameraSource)
    assert isinstance(sources.open_source("2"), sources.CameraSource)
    assert isinstance(sources.open_source("rtsp://cam.local/stream"), sources.StreamSource)
    assert isinstance(sources.open_source(str(tmp_path)), sources.ImageSource)
    assert isinstance(sources.open_source(str(tmp_path / "*.png")), sources.ImageSource)
    assert isinstance(sources.open_source(str(tmp_path / "a.png")), sources.ImageSource)
    assert isinstance(sources.open_source("clip.mp4"), sources.VideoSource)
    with pytest.raises(SourceError, match="no image matches"):
        sources.open_source(str(tmp_path / "*.jpg"))
    with pytest.raises(SourceError, match="not a stream URL"):
        sources.open_source("cam", kind="stream")


def test_missing_camera_is_one_line_with_hints():
    with pytest.raises(SourceError) as e:
        sources.CameraSource(97).open()
    msg = str(e.value)
    assert "\n" not in msg and "camera 97 could not be opened" in msg and "--camera 98" in msg and "--video" in msg


@pytest.fixture()
def mjpeg_server():
    """A local IP-camera-like MJPEG stream (multipart/x-mixed-replace) of a real clip."""
    require("videos/short_clip.mp4")
    jpgs = [cv2.imencode(".jpg", cv2.resize(f, (480, 270)))[1].tobytes() for f in read_all(SHORT)]

    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *a):
            pass

        def do_GET(self):
            self.send_response(200)
            self.send_header("Content-Type", "multipart/x-mixed-replace; boundary=frame")
            self.end_headers()
            try:
                for jpg in jpgs:
                    self.wfile.write(b"--frame\r\nContent-Type: image/jpeg\r\nContent-Length: %d\r\n\r\n"
                                     % len(jpg) + jpg + b"\r\n")
                    time.sleep(0.03)
            except (BrokenPipeError, ConnectionResetError):
                pass

    srv = socketserver.ThreadingTCPServer(("127.0.0.1", 0), Handler)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{srv.server_address[1]}/stream.mjpg", len(jpgs)
    srv.shutdown()
    srv.server_close()


def test_stream_url_reads_frames(mjpeg_server):
    url, n = mjpeg_server
    src = sources.open_source(url, live=False)
    assert isinstance(src, sources.StreamSource)
    frames = list(src.open())
    assert len(frames) == n and frames[0].image.shape == (270, 480, 3)
    with pytest.raises(SourceError, match="stream could not be opened"):
        sources.StreamSource("http://127.0.0.1:9/none.mjpg", open_timeout_s=2).open()


def test_latest_slot_keeps_only_newest_and_ends_after_it():
    slot = LatestSlot()
    for i in range(3):
        slot.put(i)
    slot.close()
    assert slot.get(0.1) == 2 and slot.dropped == 2
    assert slot.get(0.1) is END
    with pytest.raises(TimeoutError):
        LatestSlot().get(0.01)


@needs_clips
def test_reader_file_in_order_live_drops_stale():
    reader = FrameReader(sources.VideoSource(SHORT), maxsize=2).start()
    got = []
    while (f := reader.get(2.0)) is not END:
        got.append(f.index)
        time.sleep(0.05)  # a slow consumer must not lose file frames
    assert got == list(range(5)) and reader.dropped == 0 and reader.join(2.0)

    live = sources.VideoSource(TWO, realtime=True)  # 40 frames at 12 fps, paced like a camera
    reader = FrameReader(live.open()).start()
    got = []
    while (f := reader.get(5.0)) is not END:
        got.append(f.index)
        time.sleep(0.3)  # ~3 fps consumer
    assert got == sorted(got) and len(got) < 20 and got[-1] == 39
    assert reader.dropped == 40 - len(got)


# --- sinks -------------------------------------------------------------------------------

def test_jsonl_sink_contract_and_atomicity(tmp_path):
    path = tmp_path / "out.jsonl"
    img = np.zeros((300, 400, 3), np.uint8)
    intr = Intrinsics.from_fov(400, 300, 60.0)
    sink = sinks.JsonlSink(path, model="m", source="clip", fps=10.0)
    for i in range(3):
        people = [make_person(7)] if i != 1 else []
        sink.write(frame_of(img, i), FrameResult(i, i / 10, (400, 300), people, intr))
    assert not path.exists(), "an unfinished file must not have the final name"
    sink.close()
    lines = [json.loads(s) for s in path.read_text().splitlines()]
    assert lines[0]["type"] == "meta" and lines[0]["joints_2d"] == list(skeleton.JOINTS_2D)
    assert lines[0]["intrinsics"]["fx"] == pytest.approx(intr.fx) and lines[0]["image_wh"] == [400, 300]
    assert [r["frame"] for r in lines[1:]] == [0, 1, 2]
    assert [len(r["people"]) for r in lines[1:]] == [1, 0, 1]
    assert lines[1]["people"][0]["id"] == 7
    assert not list(tmp_path.glob(".*")), "no temporary left behind"


def test_jsonl_sink_rejects_gaps_and_discards_on_failure(tmp_path):
    path = tmp_path / "out.jsonl"
    img = np.zeros((30, 40, 3), np.uint8)
    with pytest.raises(ValueError, match="expected 1"):
        with sinks.JsonlSink(path, model="m") as sink:
            sink.write(frame_of(img, 0), FrameResult(0, 0.0, (40, 30)))
            sink.write(frame_of(img, 2), FrameResult(2, 0.2, (40, 30)))
    assert not path.exists() and not list(tmp_path.iterdir())


def test_image_set_records_carry_file_and_camera(tmp_path):
    path = tmp_path / "set.jsonl"
    sink = sinks.JsonlSink(path, model="m", per_frame_camera=True,
                           intrinsics_for=lambda w, h: Intrinsics.from_fov(w, h, 60.0))
    for i, (w, h) in enumerate([(40, 30), (80, 20)]):
        sink.write(frame_of(np.zeros((h, w, 3), np.uint8), i, f"imgs/{i}.jpg"), FrameResult(i, i, (w, h)))
    sink.close()
    meta, *recs = [json.loads(s) for s in path.read_text().splitlines()]
    assert meta["intrinsics"] is None
    assert [r["file"] for r in recs] == ["imgs/0.jpg", "imgs/1.jpg"]
    assert recs[1]["intrinsics"]["cx"] == 40.0


@needs_clips
def test_video_sink_writes_every_frame(tmp_path):
    frames = [cv2.resize(f, (320, 180)) for f in read_all(SHORT)]
    path = tmp_path / "out.mp4"
    sink = sinks.VideoSink(path, fps=5.0)
    for i, img in enumerate(frames):
        sink.write(frame_of(img, i), FrameResult(i, 0.0, (320, 180)), rendered=img)
    sink.write(frame_of(frames[0], 5), FrameResult(5, 0.0, (320, 180)), rendered=np.zeros((90, 320, 3), np.uint8))
    sink.close()
    assert count_frames(path) == len(frames) + 1
    cap = cv2.VideoCapture(str(path))
    assert (cap.get(cv2.CAP_PROP_FRAME_WIDTH), cap.get(cv2.CAP_PROP_FRAME_HEIGHT)) == (320, 180)


def test_csv_and_coco_sinks(tmp_path):
    img = np.zeros((300, 400, 3), np.uint8)
    person = make_person(3)
    person.kp2d[skeleton.JOINTS_2D.index("l_wrist")] = (np.nan, np.nan, 0.0)
    csv_sink, coco_sink = sinks.CsvSink(tmp_path / "a.csv"), sinks.CocoSink(tmp_path / "a.coco.json")
    for s in (csv_sink, coco_sink):
        s.write(frame_of(img, 0, "images/000000000785.jpg"), FrameResult(0, 0.0, (400, 300), [person]))
        s.write(frame_of(img, 1, "images/holiday.jpg"), FrameResult(1, 0.1, (400, 300), [person, make_person(4)]))
        s.close()
    import csv
    rows = list(csv.reader(open(tmp_path / "a.csv")))
    assert len(rows) == 4 and all(len(r) == len(rows[0]) for r in rows)
    assert rows[1][:3] == ["0", "0.0000", "3"] and rows[3][2] == "4"
    assert rows[1][rows[0].index("l_wrist_x")] == "" and rows[1][rows[0].index("neck_x")] != ""
    coco = json.loads((tmp_path / "a.coco.json").read_text())
    assert [c["image_id"] for c in coco] == [785, 1, 1]
    kps = np.array(coco[0]["keypoints"]).reshape(17, 3)
    lw = skeleton.COCO17.index("left_wrist")
    assert tuple(kps[lw]) == (0, 0, 0) and kps[skeleton.COCO17.index("nose"), 2] == 0  # no face joints
    rs = skeleton.COCO17.index("right_shoulder")
    assert kps[rs, :2] == pytest.approx(person.kp2d[skeleton.JOINTS_2D.index("r_shoulder"), :2], abs=0.01)


# --- BVH ---------------------------------------------------------------------------------

def test_bvh_round_trip_matches_forward_kinematics(tmp_path):
    rng = np.random.default_rng(0)
    angles = rng.normal(0.0, 0.5, (6, 21, 3))
    root = rng.normal(0.0, 300.0, (6, 3)) + (0, 0, 4000)
    bones = kinematics.DEFAULT_BONE_LENGTHS_MM * 1.1
    path = bvh.write_bvh(tmp_path / "a.bvh", bones, root, angles, fps=12.0)
    parsed = bvh.read_bvh(path)
    assert parsed.motion.shape == (6, 6 + 3 * 15) and parsed.frame_time == pytest.approx(1 / 12, abs=1e-6)
    assert parsed.joints[0].name == "pelvis"
    want = kinematics.fk(angles, angles[:, skeleton.ROOT_3D], root, bones)
    got = bvh.joint_positions_cam_mm(parsed)
    assert np.abs(got - want).max() < 0.05  # mm


def test_bvh_sink_one_file_per_track_spanning_the_input(tmp_path):
    sink = bvh.BvhSink(tmp_path, "clip", fps=10.0, min_track_frames=3)
    img = np.zeros((300, 400, 3), np.uint8)
    for i in range(8):
        people = [make_person(1, center=(150 + 5 * i, 150))]
        if 2 <= i < 6:
            people.append(make_person(2, center=(300, 150)))
        if i == 4:
            people.append(make_person(9))  # a one-frame flicker: no file
        sink.write(frame_of(img, i), FrameResult(i, i / 10, (400, 300), people))
    sink.close()
    assert sorted(p.name for p in sink.paths) == ["clip.track1.bvh", "clip.track2.bvh"]
    b1, b2 = bvh.read_bvh(tmp_path / "clip.track1.bvh"), bvh.read_bvh(tmp_path / "clip.track2.bvh")
    assert len(b1.motion) == len(b2.motion) == 8
    pos = bvh.joint_positions_cam_mm(b2)[:, skeleton.ROOT_3D]
    assert np.allclose(pos[0], pos[2], atol=0.05) and np.allclose(pos[7], pos[5], atol=0.05)  # held
    track1_root = bvh.joint_positions_cam_mm(b1)[:, skeleton.ROOT_3D, 0]
    assert np.all(np.diff(track1_root) > 0)  # the person walks right, so does the skeleton


# --- drawing -----------------------------------------------------------------------------

def test_overlay_draws_each_track_in_its_colour():
    img = np.full((300, 400, 3), 60, np.uint8)
    a, b = make_person(0, center=(120, 150)), make_person(1, center=(280, 150))
    out = draw.Overlay(view_3d=False, hud=False)(img, FrameResult(0, 0.0, (400, 300), [a, b]))
    assert np.array_equal(img, np.full((300, 400, 3), 60, np.uint8)), "input untouched"
    for person in (a, b):
        j, k = skeleton.JOINTS_2D.index("r_knee"), skeleton.JOINTS_2D.index("r_ankle")
        mid = ((person.kp2d[j, :2] + person.kp2d[k, :2]) / 2).round().astype(int)
        assert tuple(out[mid[1], mid[0]]) == draw.track_color(person.track_id)


def test_3d_view_and_inset():
    view = draw.render_3d_view([make_person(0)], (120, 120), yaw_deg=30)
    assert (np.abs(view.astype(int) - 32).sum(-1) > 0).sum() > 200  # a skeleton was drawn
    assert tuple(draw.track_color(0)) in {tuple(p) for p in view.reshape(-1, 3)}
    img = np.zeros((300, 400, 3), np.uint8)
    out = draw.Overlay(view_3d=True, hud=True)(img, FrameResult(0, 0.0, (400, 300), [make_person(0)]), fps=12.5)
    assert out[8:100, 300:392].any() and not out[200:, 300:].any()  # inset top-right only
    assert out[:30, :80].any()  # HUD text


def test_display_check_explains_itself(monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    ok, why = draw.display_available()
    assert not ok and why and "\n" not in why  # one line: no GUI build, or no $DISPLAY
    monkeypatch.setenv("DISPLAY", ":0")
    ok_with_display, why_with_display = draw.display_available()
    assert ok_with_display == ("no GUI support" not in why) and bool(why_with_display) != ok_with_display
