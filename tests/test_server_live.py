"""The real server (`xnect-server` in a subprocess, random-init model) on loopback, real clients.

The soak test (8 clients, XNECT_SOAK_S seconds, default 60) writes its numbers to
out/test-artefacts/soak.json and prints them (pytest -s shows them).
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import random
import socket
import statistics
import time

import numpy as np
import pytest
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

from server_helpers import ARTEFACTS, LiveServer, clip_path, jpeg, read_frames
from xnect_app import skeleton
from xnect_app.server import schemas

SOAK_S = float(os.environ.get("XNECT_SOAK_S", "60"))
TIMEOUT = 120  # seconds for one answer: the model shares two busy CPU cores in CI


@pytest.fixture(scope="module")
def server():
    # The broadcast source costs nothing until a viewer connects.
    with LiveServer("--source", str(clip_path("short_clip.mp4"))) as srv:
        yield srv


@pytest.fixture(scope="module")
def frames():
    return [jpeg(f) for f in read_frames("two_people_courtyard.mp4", n=12, width=270)]


def recv_json(ws, timeout: float = TIMEOUT) -> dict:
    while True:
        data = ws.recv(timeout=timeout)
        if isinstance(data, str):
            msg = json.loads(data)
            schemas.SERVER_MESSAGE.validate_python(msg)
            return msg


def wait_until(pred, timeout: float = 60.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return True
        time.sleep(0.1)
    return pred()


def assert_serving(server: LiveServer, frame: bytes) -> None:
    """Healthy, no leftover connections, and a new client still gets poses."""
    assert server.proc.poll() is None, "server process died"
    assert wait_until(lambda: server.status()["clients"] == 0), server.status()
    with connect(f"{server.ws_base}/ws/capture", open_timeout=30) as ws:
        assert recv_json(ws)["type"] == "meta"
        ws.send(schemas.pack_frame(99, 0, frame))
        assert recv_json(ws)["type"] == "poses"
    log = server.log_path.read_text()
    assert "Traceback" not in log and "Exception in ASGI" not in log, log[-3000:]


def test_binds_loopback_by_default(server):
    assert server.host == "127.0.0.1"


def test_real_frames_get_poses(server, frames):
    with connect(f"{server.ws_base}/ws/capture", open_timeout=30) as ws:
        meta = recv_json(ws)
        assert meta["type"] == "meta" and "random init" in meta["model"]  # LiveServer: --input-size 256x160
        assert meta["inference"]["input_wh"] == [256, 160] and meta["inference"]["dynconv"] is False
        for i, frame in enumerate(frames[:3]):
            ws.send(schemas.pack_frame(100 + i, 1000.0 * i, frame))
            msg = recv_json(ws)
            assert msg["type"] == "poses" and msg["frame_id"] == 100 + i and msg["client_ts"] == 1000.0 * i
            assert msg["image_wh"] == [270, 480]
            assert msg["server_ms"]["infer"] > 0 and "stage1" in msg["timings_ms"]
            for p in msg["people"]:  # an untrained model finds arbitrary people; check their form
                kp = np.array([[np.nan if v is None else v for v in r] for r in p["kp2d"]])
                norm = np.array([[np.nan if v is None else v for v in r] for r in p["kp2d_norm"]])
                np.testing.assert_allclose(norm[:, :2], kp[:, :2] / [270, 480], atol=1e-3)
                assert len(p["kp3d_cam_mm"]) == skeleton.NUM_JOINTS_3D and p["id"] >= 0
        status = server.status()
        assert status["clients"] == 1 and status["worker"]["frames_done"] >= 3


def test_the_bundled_weights_find_the_people_of_a_real_jpeg():
    """The default server, as `xnect-server` starts it: a webcam-like JPEG of two people gets them."""
    frame = jpeg(read_frames("two_people_courtyard.mp4", n=1, width=540)[0])
    with LiveServer(bundled=True, input_size="512x320") as srv, \
            connect(f"{srv.ws_base}/ws/capture", open_timeout=30) as ws:
        assert "random" not in recv_json(ws)["model"]
        ws.send(schemas.pack_frame(1, 0.0, frame))
        msg = recv_json(ws)
        assert msg["type"] == "poses" and len(msg["people"]) >= 1, msg.get("people")
        assert all(p["score"] >= 0.2 for p in msg["people"])


def test_motion_masks_follow_each_client():
    """`--dynconv --dynconv-mask motion`: every client (a static camera) gets its own background;
    after the warm-up only the moving part of each one's frames is computed."""
    clips = {"a": [jpeg(f) for f in read_frames("two_people_courtyard.mp4", n=30, width=270)],
             "b": [jpeg(f) for f in read_frames("one_person_courtyard.mp4", n=30, width=270)]}
    shares: dict[str, list[float]] = {"a": [], "b": []}
    with LiveServer("--dynconv", "--dynconv-mask", "motion", "--dynconv-margin", "2") as srv, \
            connect(f"{srv.ws_base}/ws/capture", open_timeout=30) as ws_a, \
            connect(f"{srv.ws_base}/ws/capture", open_timeout=30) as ws_b:
        clients = {"a": ws_a, "b": ws_b}
        for ws in clients.values():
            meta = recv_json(ws)
            assert meta["type"] == "meta" and meta["inference"]["dynconv"] == "motion", "clients see how it runs"
        for i in range(30):
            for name, ws in clients.items():
                ws.send(schemas.pack_frame(i, 0, clips[name][i]))
            for name, ws in clients.items():
                msg = recv_json(ws)
                assert msg["type"] == "poses" and msg["frame_id"] == i
                shares[name].append(msg["computed_share"])
        log = srv.log_path.read_text()
        assert "Traceback" not in log, log[-3000:]
    for name in clients:
        assert shares[name][0] == 1.0                       # warm-up frames run dense
        assert 0.0 < shares[name][-1] < 0.6, shares[name]   # then the courtyard's movers only
    assert shares["a"][-1] != shares["b"][-1]               # each client its own mask


def test_origin_checked_on_handshake(server):
    with pytest.raises(InvalidStatus) as refused:
        with connect(f"{server.ws_base}/ws/capture", origin="http://evil.example", open_timeout=30):
            pass
    assert refused.value.response.status_code == 403
    with connect(f"{server.ws_base}/ws/capture", origin=server.base, open_timeout=30) as ws:
        assert recv_json(ws)["type"] == "meta"


def _raw_handshake(server: LiveServer) -> socket.socket:
    sock = socket.create_connection((server.host, server.port), timeout=30)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws/capture HTTP/1.1\r\nHost: {server.host}:{server.port}\r\nUpgrade: websocket\r\n"
                  f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
    reply = b""
    while b"\r\n\r\n" not in reply:
        reply += sock.recv(4096)
    assert reply.startswith(b"HTTP/1.1 101"), reply[:100]
    return sock


def test_client_disconnecting_mid_frame(server, frames):
    frame = schemas.pack_frame(1, 0, frames[0])
    mask = os.urandom(4)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(frame))
    header = bytes([0x82, 0x80 | 127]) + len(frame).to_bytes(8, "big") + mask
    cuts = [header[:5],                                   # inside the frame header
            header + masked[: len(masked) // 2],          # half the JPEG
            bytes([0x02, 0x80 | 126]) + (1000).to_bytes(2, "big") + mask + masked[:1000]]  # first fragment only
    for cut in cuts:
        sock = _raw_handshake(server)
        sock.sendall(cut)
        sock.close()
    assert_serving(server, frames[1])


def test_client_leaving_with_frames_in_flight(server, frames):
    for _ in range(3):
        with connect(f"{server.ws_base}/ws/capture", open_timeout=30) as ws:
            ws.send(frames[0])
            ws.send(frames[1])
    assert_serving(server, frames[2])


def _fuzz_message(rng: random.Random, frames: list[bytes]) -> bytes | str:
    good = rng.choice(frames)
    kind = rng.randrange(12)
    if kind == 0:
        return rng.randbytes(rng.randrange(0, 5000))
    if kind == 1:
        return b"XNF1" + rng.randbytes(rng.randrange(0, 3000))
    if kind == 2:  # bit flips in a real JPEG
        data = bytearray(good)
        for _ in range(rng.randrange(1, 40)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        return schemas.pack_frame(rng.randrange(2**32), rng.random(), bytes(data))
    if kind == 3:  # truncated real JPEG
        return schemas.pack_frame(rng.randrange(2**32), 0, good[: rng.randrange(len(good))])
    if kind == 4:  # random image size in the header
        i = good.index(b"\xff\xc0")
        return good[:i + 5] + rng.randbytes(4) + good[i + 9:]
    if kind == 5:
        return json.dumps({"type": rng.choice(["ping", "reset", "hello", "frame", "", "x" * 300]),
                           rng.choice(["t", "token", "zzz"]): rng.choice([1, "a", None, [1], {"a": 1}, 1e308])})
    if kind == 6:
        return "".join(rng.choice('{}[]":,0123456789abc \\') for _ in range(rng.randrange(1, 200)))
    if kind == 7:
        return json.dumps(rng.choice([[], 1, "s", None, {"no_type": 1}, {"type": None}]))
    if kind == 8:
        return json.dumps({"type": "ping", "pad": "x" * rng.randrange(60_000, 200_000)})
    if kind == 9:
        return "\u0000\u2603\U0001F600" * rng.randrange(1, 50)
    if kind == 10:
        return b""
    return good  # a valid frame now and then


def test_fuzz_random_messages_leave_server_healthy(server, frames):
    rng = random.Random(1234)
    sent = replies = 0
    for _ in range(6):  # several connections, some dropped abruptly
        with connect(f"{server.ws_base}/ws/capture", open_timeout=30, max_size=None) as ws:
            recv_json(ws)
            try:
                for _ in range(rng.randrange(20, 50)):
                    ws.send(_fuzz_message(rng, frames))
                    sent += 1
                    while True:  # take what has arrived; every message must match the schema
                        try:
                            recv_json(ws, timeout=0.02)
                            replies += 1
                        except TimeoutError:
                            break
            except ConnectionClosed as closed:
                assert closed.rcvd is None or closed.rcvd.code in (1000, 1008, 1009), closed
            if rng.random() < 0.5:
                ws.socket.close()  # vanish without a close handshake
    assert sent > 100 and replies > 50
    # A frame beyond the protocol limit ends that connection only.
    with pytest.raises(ConnectionClosed) as closed:
        with connect(f"{server.ws_base}/ws/capture", open_timeout=30, max_size=None) as ws:
            recv_json(ws)
            ws.send(b"\xff\xd8\xff" + bytes(17 * 2**20))
            recv_json(ws)
    # 1009 from the server, or a reset when it drops the socket while we are still sending.
    assert closed.value.rcvd is None or closed.value.rcvd.code == 1009, closed.value
    assert_serving(server, frames[0])


async def _soak_client(url: str, frames: list[bytes], duration_s: float, seed: int) -> dict:
    """A 30 fps camera: a new frame every 33 ms, sent while fewer than two are unanswered."""
    from websockets.asyncio.client import connect as aconnect

    rng = random.Random(seed)
    latencies, errors, in_flight = [], [], {}
    frame_id = dropped = 0
    async with aconnect(url, open_timeout=60, max_size=None) as ws:
        assert json.loads(await ws.recv())["type"] == "meta"
        end = time.perf_counter() + duration_s
        next_frame = time.perf_counter()
        while True:
            now = time.perf_counter()
            if now >= end and not in_flight:
                break
            if now < end and now >= next_frame and len(in_flight) < 2:
                frame_id += 1
                in_flight[frame_id] = now
                next_frame = max(next_frame + 1 / 30, now)
                await ws.send(schemas.pack_frame(frame_id, time.time() * 1000, rng.choice(frames)))
                continue
            can_send = now < end and len(in_flight) < 2
            try:
                raw = await asyncio.wait_for(ws.recv(), max(0.0, next_frame - now) if can_send else TIMEOUT)
            except asyncio.TimeoutError:
                continue
            msg = json.loads(raw)
            t0 = in_flight.pop(msg.get("frame_id"), None)
            if msg["type"] == "poses" and t0 is not None:
                latencies.append((time.perf_counter() - t0) * 1000)
            elif msg["type"] == "error":
                errors.append(msg)
            elif msg["type"] == "dropped":
                dropped += 1
    return {"latencies_ms": latencies, "errors": errors, "sent": frame_id, "dropped": dropped}


@pytest.mark.slow
def test_eight_clients_soak(server, frames):
    async def run():
        return await asyncio.gather(*[_soak_client(f"{server.ws_base}/ws/capture", frames, SOAK_S, i)
                                      for i in range(8)])

    t0 = time.perf_counter()
    results = asyncio.run(run())
    wall = time.perf_counter() - t0
    status = server.status()
    lat = sorted(x for r in results for x in r["latencies_ms"])
    report = {
        "clients": 8, "duration_s": SOAK_S, "wall_s": round(wall, 1), "answered": len(lat),
        "sent": sum(r["sent"] for r in results),
        "per_client_answered": [len(r["latencies_ms"]) for r in results],
        "latency_ms": {"p50": round(statistics.median(lat), 1), "p95": round(lat[int(0.95 * (len(lat) - 1))], 1),
                       "max": round(lat[-1], 1)},
        "throughput_fps": round(len(lat) / wall, 2), "mean_batch": status["worker"]["mean_batch"],
        "errors": sum(len(r["errors"]) for r in results),
        "dropped": sum(r["dropped"] for r in results),
    }
    ARTEFACTS.mkdir(parents=True, exist_ok=True)
    (ARTEFACTS / "soak.json").write_text(json.dumps(report, indent=2))
    print("\nsoak:", json.dumps(report))
    assert report["errors"] == 0, [r["errors"][:2] for r in results]
    assert min(report["per_client_answered"]) >= 3, report
    assert report["mean_batch"] > 1.5, "frames of different clients were not batched"
    assert_serving(server, frames[0])


def test_broadcast_slow_viewer_does_not_hold_up_others(server):
    url = f"{server.ws_base}/ws/broadcast"
    with connect(url, open_timeout=30, max_size=None) as fast, \
            connect(url, open_timeout=30, max_size=None) as slow:
        assert recv_json(fast)["type"] == "meta" and recv_json(slow)["type"] == "meta"
        got = 0
        t_end = time.monotonic() + 30
        while time.monotonic() < t_end and got < 5:  # the slow viewer reads nothing meanwhile
            data = fast.recv(timeout=TIMEOUT)
            if isinstance(data, bytes):
                frame_id, _, _ = schemas.unpack_frame(data)
                poses = recv_json(fast)
                assert poses["frame_id"] == frame_id
                got += 1
        published = server.status()["broadcast"]["frames_published"]
        assert got >= 3 and got >= published - 2, (got, published)
        # The slow viewer then reads for a while: it gets frames, never more than were published.
        slow_got = 0
        t_end = time.monotonic() + 3
        while time.monotonic() < t_end:
            try:
                slow_got += isinstance(slow.recv(timeout=0.5), bytes)
            except TimeoutError:
                pass
        assert 1 <= slow_got <= server.status()["broadcast"]["frames_published"]
