"""Protocol tests of the FastAPI app through TestClient (fast; no network, no model).

The estimator here is a stand-in (style.md allows one only for these protocol tests): it places
one person at fixed fractions of the frame, so coordinates can be checked exactly. The real
estimator runs in test_server_live.py and test_browser.py.
"""
from __future__ import annotations

import asyncio
import json
import struct
import threading
import time

import cv2
import numpy as np
import pytest
from fastapi.testclient import TestClient
from starlette.websockets import WebSocketDisconnect

from server_helpers import clip_path, jpeg, read_frames
from xnect_app import skeleton
from xnect_app.server import schemas
from xnect_app.server.app import create_app
from xnect_app.server.jpeg import BadImage, decode_jpeg, jpeg_size
from xnect_app.server.security import origin_ok
from xnect_app.server.state import ServerConfig
from xnect_app.server.worker import BatchRunner, FrameJob, InferenceWorker
from xnect_app.types import FrameResult, Intrinsics, Person

XS = 0.3 + 0.02 * np.arange(skeleton.NUM_JOINTS_2D)


class SpotEstimator:
    """One person per frame, joints at x = (0.3 + 0.02 j) * width, y = height / 2."""

    model_name = "spot-test"
    tracking = True
    fit_skeleton = False

    def __init__(self, delay_s: float = 0.0, hold: bool = False):
        self.delay_s = delay_s
        self.batch_sizes: list[int] = []
        self.started = threading.Event()                   # a batch has reached the network
        self.release = None if not hold else threading.Event()  # hold: batches wait for it

    def intrinsics_for(self, w: int, h: int) -> Intrinsics:
        return Intrinsics.from_fov(w, h, 60.0)

    def detect_batch(self, frames):
        self.batch_sizes.append(len(frames))
        self.started.set()
        if self.release is not None:
            assert self.release.wait(30)
        time.sleep(self.delay_s)
        out = []
        for f in frames:
            h, w = f.shape[:2]
            kp2d = np.stack([XS * w, np.full_like(XS, h / 2), np.ones_like(XS)], 1)
            kp3d = np.zeros((skeleton.NUM_JOINTS_3D, 3))
            out.append(FrameResult(0, 0.0, (w, h), [Person(-1, float(f.mean() / 255), kp2d, kp3d, kp3d + [0, 0, 3000])],
                                   intrinsics=self.intrinsics_for(w, h), timings_ms={"stage1": 1.0}))
        return out


class CountingTracker:
    """Track id = how many frames this tracker has seen: shows which stream's tracker ran."""

    def __init__(self):
        self.n = 0

    def update(self, people, time_s, intrinsics, fit_skeleton=False):
        self.n += 1
        for p in people:
            p.track_id = self.n
        return people


@pytest.fixture(scope="module")
def frames():
    return read_frames("two_people_courtyard.mp4", n=4, width=270)


def make_client(delay_s: float = 0.0, hold: bool = False, **cfg) -> tuple[TestClient, SpotEstimator]:
    est = SpotEstimator(delay_s, hold)
    app = create_app(lambda: est, ServerConfig(**cfg), tracker_factory=CountingTracker)
    return TestClient(app), est


def recv(ws) -> dict:
    msg = ws.receive_json()
    schemas.SERVER_MESSAGE.validate_python(msg)  # every message matches its schema
    return msg


def connect(client, path="/ws/capture", **kw):
    ws = client.websocket_connect(path, **kw)
    return ws


# ---- HTTP ----

def test_health_status_schema_and_page():
    client, _ = make_client()
    with client:
        assert client.get("/healthz").json()["ok"] is True
        status = client.get("/api/status").json()
        schemas.StatusMsg.model_validate(status)
        assert status["clients"] == 0 and status["model"] == "spot-test"
        assert "server" in client.get("/api/schema").json()
        page = client.get("/")
        assert page.status_code == 200 and 'src="js/main.js"' in page.text
        assert client.get("/js/protocol.js").status_code == 200


# ---- the capture protocol ----

def test_capture_returns_poses_for_real_frames(frames):
    client, _ = make_client()
    with client, connect(client) as ws:
        meta = recv(ws)
        assert meta["type"] == "meta" and meta["protocol"] == 1 and meta["mode"] == "capture"
        assert meta["joints_2d"] == list(skeleton.JOINTS_2D) and meta["limits"]["max_in_flight"] == 2
        h, w = frames[0].shape[:2]
        ws.send_bytes(schemas.pack_frame(7, 1234.5, jpeg(frames[0])))
        msg = recv(ws)
        assert msg["type"] == "poses" and msg["frame_id"] == 7 and msg["client_ts"] == 1234.5
        assert msg["image_wh"] == [w, h]
        person = msg["people"][0]
        np.testing.assert_allclose(np.array(person["kp2d"])[:, 0], XS * w, atol=0.01)
        np.testing.assert_allclose(np.array(person["kp2d_norm"])[:, :2],
                                   np.stack([XS, np.full_like(XS, 0.5)], 1), atol=1e-4)
        assert person["score"] == pytest.approx(frames[0].mean() / 255, abs=1e-3)
        assert msg["intrinsics"]["cx"] == pytest.approx(w / 2)
        assert msg["server_ms"]["total"] >= msg["server_ms"]["infer"] >= 0

        # A bare JPEG (no header) is numbered by the server.
        ws.send_bytes(jpeg(frames[1]))
        ws.send_text(json.dumps({"type": "ping", "t": 5}))
        replies = [recv(ws), recv(ws)]
        types = sorted(r["type"] for r in replies)
        assert types == ["pong", "poses"]
        assert next(r for r in replies if r["type"] == "poses")["frame_id"] == 1


def test_each_client_is_tracked_apart_and_reset_restarts(frames):
    client, _ = make_client()
    with client, connect(client) as a, connect(client) as b:
        recv(a), recv(b)
        ids_a, ids_b = [], []
        for i in range(3):
            a.send_bytes(schemas.pack_frame(i, 0, jpeg(frames[i])))
            ids_a.append(recv(a)["people"][0]["id"])
            if i < 2:
                b.send_bytes(schemas.pack_frame(i, 0, jpeg(frames[i])))
                ids_b.append(recv(b)["people"][0]["id"])
        assert ids_a == [1, 2, 3] and ids_b == [1, 2]
        a.send_text('{"type": "reset"}')
        a.send_bytes(schemas.pack_frame(9, 0, jpeg(frames[0])))
        assert recv(a)["people"][0]["id"] == 1


def test_each_client_can_bring_its_own_tracker_settings(frames):
    """?track_high_score= (and the other --track-* settings) in a capture client's URL apply to
    that client only; a bad value is a clear error."""
    est = SpotEstimator()
    client = TestClient(create_app(lambda: est, ServerConfig()))  # the real per-client trackers
    with client, connect(client, "/ws/capture?track_high_score=0.99") as strict, \
            connect(client, "/ws/capture?track_high_score=0&track_confirm=1") as easy:
        recv(strict), recv(easy)
        ids = {"strict": [], "easy": []}
        for i in range(3):
            for name, ws in (("strict", strict), ("easy", easy)):
                ws.send_bytes(schemas.pack_frame(i, 0, jpeg(frames[i])))
                ids[name].append(recv(ws)["people"][0]["id"])
        assert ids == {"strict": [-1, -1, -1], "easy": [1, 1, 1]}
    with client, connect(client, "/ws/capture?track_confirm=zero") as bad:
        msg = recv(bad)
        assert msg["type"] == "error" and msg["code"] == "bad_option" and "track_confirm='zero'" in msg["message"]


def test_newest_frame_wins_and_every_frame_is_answered(frames):
    client, est = make_client(hold=True)  # frame 1 stays in inference until released
    with client, connect(client) as ws:
        recv(ws)
        ws.send_bytes(schemas.pack_frame(1, 0, jpeg(frames[1])))
        assert est.started.wait(30)
        for i in range(2, 6):
            ws.send_bytes(schemas.pack_frame(i, 0, jpeg(frames[i % len(frames)])))
        answers = {}
        while len(answers) < 3:               # each waiting frame replaced by a newer one
            m = recv(ws)
            answers[m["frame_id"]] = m["type"]
        est.release.set()
        while len(answers) < 5:
            m = recv(ws)
            answers[m["frame_id"]] = m["type"]
        poses = sorted(i for i, t in answers.items() if t == "poses")
        dropped = sorted(i for i, t in answers.items() if t == "dropped")
        assert answers[5] == "poses"          # the newest frame is always processed
        assert len(poses) == 2 and dropped    # one in inference + the newest; the rest dropped
        assert sum(est.batch_sizes) == 2


@pytest.mark.parametrize("kind,code", [
    ("garbage", "bad_frame"), ("short_header", "bad_frame"), ("not_jpeg_after_header", "bad_frame"),
    ("truncated", "truncated_frame"), ("huge_dims", "image_too_large"), ("header_only", "truncated_frame"),
])
def test_bad_frames_get_an_error_and_the_connection_keeps_working(frames, kind, code):
    good = jpeg(frames[0])
    sof = next(i for i in range(len(good) - 1) if good[i] == 0xFF and good[i + 1] in (0xC0, 0xC2))
    payload = {
        "garbage": b"\x00\x01hello" * 50,
        "short_header": b"XNF1\x00\x01",
        "not_jpeg_after_header": schemas.pack_frame(3, 0, b"PNG?" * 100),
        "truncated": schemas.pack_frame(3, 0, good[: len(good) // 2]),
        "huge_dims": schemas.pack_frame(3, 0, good[:sof + 5] + struct.pack(">HH", 60000, 60000) + good[sof + 9:]),
        "header_only": schemas.pack_frame(3, 0, good[:sof]),
    }[kind]
    client, est = make_client()
    with client, connect(client) as ws:
        recv(ws)
        ws.send_bytes(payload)
        err = recv(ws)
        assert err["type"] == "error" and err["code"] == code and not err["fatal"], err
        ws.send_bytes(schemas.pack_frame(4, 0, good))
        assert recv(ws)["type"] == "poses"
        assert est.batch_sizes == [1]  # the bad frame never reached the model


@pytest.mark.parametrize("text,code", [
    ("{not json", "bad_json"),
    ("[1, 2, 3]", "bad_message"),
    ('{"type": 5}', "bad_message"),
    ('{"type": "launch_missiles"}', "unknown_type"),
    ('{"type": "ping", "t": "soon"}', "bad_message"),
    ('{"type": "reset", "extra": 1}', "bad_message"),
    ('{"type": "ping", "pad": "' + "x" * 70000 + '"}', "message_too_large"),
])
def test_bad_text_messages_get_an_error(frames, text, code):
    client, _ = make_client()
    with client, connect(client) as ws:
        recv(ws)
        ws.send_text(text)
        err = recv(ws)
        assert err["type"] == "error" and err["code"] == code, err
        ws.send_bytes(jpeg(frames[0]))
        assert recv(ws)["type"] == "poses"


def test_frame_size_limit(frames):
    client, _ = make_client(max_frame_bytes=10_000)
    big = jpeg(frames[0], quality=100)
    assert len(big) > 10_000
    with client, connect(client) as ws:
        recv(ws)
        ws.send_bytes(schemas.pack_frame(1, 0, big))
        err = recv(ws)
        assert err["code"] == "frame_too_large" and err["frame_id"] == 1


# ---- security ----

def test_token_in_query_or_first_message(frames):
    client, _ = make_client(token="s3cret", hello_timeout_s=0.5)
    with client:
        with pytest.raises(WebSocketDisconnect) as refused:
            with connect(client, "/ws/capture?token=wrong") as ws:
                ws.receive_json()
        assert refused.value.code == 1008
        with connect(client, "/ws/capture?token=s3cret") as ws:
            assert recv(ws)["type"] == "meta"
        with connect(client) as ws:
            ws.send_text(json.dumps({"type": "hello", "token": "s3cret"}))
            assert recv(ws)["type"] == "meta"
            ws.send_bytes(jpeg(frames[0]))
            assert recv(ws)["type"] == "poses"
        for first in (json.dumps({"type": "hello", "token": "nope"}), None, jpeg(frames[0])):
            with connect(client) as ws:
                if isinstance(first, str):
                    ws.send_text(first)
                elif first is not None:
                    ws.send_bytes(first)
                err = recv(ws)  # a wrong hello, silence past the timeout, or a frame first
                assert err["code"] == "unauthorized" and err["fatal"]
                with pytest.raises(WebSocketDisconnect) as closed:
                    ws.receive_json()
                assert closed.value.code == 1008
        assert client.get("/api/status").status_code == 401
        assert client.get("/api/status", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        assert client.get("/api/status?token=s3cret").status_code == 200


def test_origin_checked():
    client, _ = make_client(allowed_origins=("https://dashboard.example",))
    with client:
        for origin in ("http://evil.example", "null", "http://testserver.evil.example"):
            with pytest.raises(WebSocketDisconnect) as refused:
                with connect(client, headers={"Origin": origin}) as ws:
                    ws.receive_json()
            assert refused.value.code == 1008
        for origin in ("http://testserver", "https://dashboard.example"):
            with connect(client, headers={"Origin": origin}) as ws:
                assert recv(ws)["type"] == "meta"


def test_origin_rules():
    assert origin_ok(None, "h:1", ())
    assert origin_ok("http://127.0.0.1:8000", "127.0.0.1:8000", ())
    assert origin_ok("https://x.org", "x.org:443", ())
    assert not origin_ok("http://127.0.0.1:9999", "127.0.0.1:8000", ())
    assert not origin_ok("file://", "127.0.0.1:8000", ())
    assert origin_ok("http://anything", "h", ("*",))


def test_client_limit():
    client, _ = make_client(max_clients=1)
    with client, connect(client) as first:
        recv(first)
        with pytest.raises(WebSocketDisconnect) as refused:
            with connect(client) as second:
                second.receive_json()
        assert refused.value.code == 1013


def test_disconnect_with_frames_in_flight_leaves_server_serving(frames):
    client, est = make_client(delay_s=0.2)
    with client:
        with connect(client) as ws:
            recv(ws)
            ws.send_bytes(jpeg(frames[0]))
            ws.send_bytes(jpeg(frames[1]))
        deadline = time.monotonic() + 30
        while client.get("/api/status").json()["clients"] and time.monotonic() < deadline:
            time.sleep(0.05)
        assert client.get("/api/status").json()["clients"] == 0
        with connect(client) as ws:
            recv(ws)
            ws.send_bytes(jpeg(frames[2]))
            assert recv(ws)["type"] == "poses"
        assert client.get("/healthz").json()["ok"]


# ---- broadcast ----

def test_broadcast_pushes_frame_then_matching_poses():
    est = SpotEstimator()
    app = create_app(lambda: est, ServerConfig(source=str(clip_path("short_clip.mp4")), broadcast_max_width=320),
                     tracker_factory=CountingTracker)
    with TestClient(app) as client:
        with connect(client, "/ws/broadcast") as ws:
            meta = recv(ws)
            assert meta["mode"] == "broadcast" and meta["image_wh"] == [960, 540]
            for _ in range(3):
                frame_id, ts, data = schemas.unpack_frame(ws.receive_bytes())
                image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
                assert image.shape == (180, 320, 3)
                poses = recv(ws)
                assert poses["type"] == "poses" and poses["frame_id"] == frame_id
                assert poses["image_wh"] == [960, 540] and len(poses["people"]) == 1
        with connect(client, "/ws/broadcast?frames=0") as ws:
            recv(ws)
            assert recv(ws)["type"] == "poses"  # JSON only
            ws.send_bytes(b"\xff\xd8\xff")
            while (m := recv(ws))["type"] != "error":
                pass
            assert m["code"] == "bad_message"
        status = client.get("/api/status").json()
        assert status["broadcast"]["frames_published"] >= 4 and status["broadcast"]["running"]


def test_broadcast_without_source_is_a_clear_error():
    client, _ = make_client()
    with client, connect(client, "/ws/broadcast") as ws:
        err = recv(ws)
        assert err["code"] == "no_broadcast" and err["fatal"]


# ---- building blocks ----

def test_worker_batches_frames_of_several_streams(frames):
    est = SpotEstimator(hold=True)
    worker = InferenceWorker(BatchRunner(est, CountingTracker), max_batch=8)
    worker.start()
    done = []
    lock = threading.Lock()
    all_done = threading.Event()

    def on_done(job, outcome):
        with lock:
            done.append((job.stream, outcome.batch_size, outcome.dropped))
            if len(done) == 4:
                all_done.set()

    try:
        data = jpeg(frames[0])
        worker.submit(FrameJob("a", 1, on_done, jpeg=data))
        assert est.started.wait(30)  # "a" is in inference now, held there
        for s in ("b", "c", "d"):
            worker.submit(FrameJob(s, 1, on_done, jpeg=data))
        est.release.set()
        assert all_done.wait(30)
    finally:
        worker.stop()
    assert est.batch_sizes == [1, 3]
    assert sorted(done) == [("a", 1, None), ("b", 3, None), ("c", 3, None), ("d", 3, None)]


def test_jpeg_header_checks(frames):
    for progressive in (0, 1):
        ok, buf = cv2.imencode(".jpg", frames[0], [cv2.IMWRITE_JPEG_PROGRESSIVE, progressive])
        h, w = frames[0].shape[:2]
        assert jpeg_size(buf.tobytes()) == (w, h)
    with pytest.raises(BadImage) as err:
        decode_jpeg(jpeg(frames[0]), max_side=100)
    assert err.value.code == "image_too_large"


def test_cli_rejects_bad_arguments_in_one_line(capsys, tmp_path):
    from xnect_app.cli.server import main

    with pytest.raises(SystemExit) as ex:
        main(["--help"])
    assert ex.value.code == 0 and "--token" in capsys.readouterr().out
    for argv, code in ((["--input-size", "13x7"], 2), (["--weights", str(tmp_path / "none.pt")], 1),
                       (["--source", str(tmp_path / "none.mp4")], 1), (["--port", "70000"], 2),
                       (["--ssl-certfile", str(tmp_path / "c.pem")], 2)):  # without --ssl-keyfile
        with pytest.raises(SystemExit) as ex:
            main(argv)
        assert ex.value.code == code, argv
        err = capsys.readouterr().err.strip()
        assert ": error:" in err, err
        assert "Traceback" not in err and len(err.splitlines()) == 1, err


def test_a_stalled_viewer_never_delays_the_others():
    from starlette.websockets import WebSocketState

    from xnect_app.server.broadcast import Broadcaster
    from xnect_app.server.session import Outbox

    class Socket:
        application_state = WebSocketState.CONNECTED

        def __init__(self, stalled: bool):
            self.stalled, self.frames = stalled, []

        async def send_bytes(self, data):
            if self.stalled:  # its network stopped draining: this send never completes
                await asyncio.Event().wait()
            self.frames.append(data)

        async def send_text(self, text):
            pass

    async def scenario():
        bc = Broadcaster("unused.mp4", worker=None)
        fast, stuck = Outbox(), Outbox()
        fast_ws, stuck_ws = Socket(False), Socket(True)
        bc.subscribe(fast), bc.subscribe(stuck)
        pumps = [asyncio.create_task(fast.pump(fast_ws)), asyncio.create_task(stuck.pump(stuck_ws))]
        for i in range(20):
            bc._publish(b"frame%d" % i, "{}")
            await asyncio.sleep(0.005)
        for p in pumps:
            p.cancel()
        return fast_ws.frames, stuck.replaced

    fast_frames, stuck_replaced = asyncio.run(scenario())
    assert fast_frames == [b"frame%d" % i for i in range(20)]
    assert stuck_replaced == 18  # one frame stuck in send, one waiting: the rest replaced
