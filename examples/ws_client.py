"""Example client for xnect-server: send a video's frames, print the poses that come back.

    python examples/ws_client.py clip.mp4                       # capture mode, prints a line per frame
    python examples/ws_client.py clip.mp4 --jsonl poses.jsonl   # also keep every poses message
    python examples/ws_client.py --watch                        # broadcast viewer (server has --source)
    python examples/ws_client.py 0 --token s3cret --url ws://host:8000

Needs `pip install websockets opencv-python-headless`. Protocol: docs/server.md.
"""
from __future__ import annotations

import argparse
import json
import struct
import sys
import time

import cv2
from websockets.exceptions import ConnectionClosed, InvalidStatus
from websockets.sync.client import connect

HEADER = struct.Struct(">4sId")  # b"XNF1", frame_id, timestamp in ms
MAX_IN_FLIGHT = 2


def frames(source: str, width: int):
    """Opens the source now (so errors come before connecting); returns a frame iterator."""
    cap = cv2.VideoCapture(int(source) if source.isdigit() else source)
    if not cap.isOpened():
        raise SystemExit(f"ws_client: error: cannot open {source}")
    return _read(cap, width)


def _read(cap, width: int):
    while True:
        ok, frame = cap.read()
        if not ok:
            break
        h, w = frame.shape[:2]
        if w > width:
            frame = cv2.resize(frame, (width, round(h * width / w)), interpolation=cv2.INTER_AREA)
        yield frame
    cap.release()


def describe(msg: dict, latency_ms: float | None) -> str:
    people = ", ".join(
        f"#{p['id']} root ({', '.join('?' if v is None else f'{v / 1000:.2f}' for v in p['root_cam_mm'])}) m"
        for p in msg["people"]) or "nobody"
    lat = "" if latency_ms is None else f" {latency_ms:6.0f} ms"
    return f"frame {msg['frame_id']:5d}{lat}  infer {msg['server_ms']['infer']:5.0f} ms  {people}"


def capture(args, ws, out, source) -> int:
    sent: dict[int, float] = {}
    answered = 0
    frame_id = 0
    exhausted = False
    while not (exhausted and not sent):
        # Keep at most two frames unanswered: the server works on one while the next waits.
        while not exhausted and len(sent) < MAX_IN_FLIGHT and (not args.max_frames or frame_id < args.max_frames):
            frame = next(source, None)
            if frame is None:
                exhausted = True
                break
            frame_id += 1
            data = cv2.imencode(".jpg", frame, [cv2.IMWRITE_JPEG_QUALITY, 85])[1].tobytes()
            sent[frame_id] = time.perf_counter()
            ws.send(HEADER.pack(b"XNF1", frame_id, time.time() * 1000) + data)
        if args.max_frames and frame_id >= args.max_frames:
            exhausted = True
        if not sent:
            break
        msg = json.loads(ws.recv(timeout=60))
        if msg["type"] == "poses":
            t0 = sent.pop(msg["frame_id"], None)
            answered += 1
            print(describe(msg, None if t0 is None else (time.perf_counter() - t0) * 1000))
            if out:
                out.write(json.dumps(msg) + "\n")
        elif msg["type"] in ("dropped", "error"):
            sent.pop(msg.get("frame_id"), None)
            if msg["type"] == "error":
                print(f"server error: {msg['code']}: {msg['message']}", file=sys.stderr)
    print(f"{answered} of {frame_id} frames answered")
    return 0


def watch(args, ws, out) -> int:
    received = 0
    while not args.max_frames or received < args.max_frames:
        data = ws.recv(timeout=60)
        if isinstance(data, bytes):
            continue  # the JPEG of the next poses message; draw it here if you like
        msg = json.loads(data)
        if msg["type"] == "poses":
            received += 1
            print(describe(msg, time.time() * 1000 - msg["client_ts"] if msg.get("client_ts") else None))
            if out:
                out.write(json.dumps(msg) + "\n")
        elif msg["type"] == "error":
            print(f"server error: {msg['code']}: {msg['message']}", file=sys.stderr)
            return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("source", nargs="?", help="video file, image, or camera index (capture mode)")
    p.add_argument("--url", default="ws://127.0.0.1:8000", help="server base URL")
    p.add_argument("--token", help="the server's --token")
    p.add_argument("--watch", action="store_true", help="watch the server's broadcast instead of sending")
    p.add_argument("--width", type=int, default=640, help="downscale frames to this width before sending")
    p.add_argument("--max-frames", type=int, default=0, help="stop after N frames (0: all)")
    p.add_argument("--jsonl", help="write every poses message to this file")
    args = p.parse_args(argv)
    if not args.watch and args.source is None:
        p.error("give a source to send, or --watch")
    path = "/ws/broadcast?frames=0" if args.watch else "/ws/capture"
    if args.token:
        path += ("&" if "?" in path else "?") + f"token={args.token}"
    source = None if args.watch else frames(args.source, args.width)
    out = open(args.jsonl, "w") if args.jsonl else None
    try:
        with connect(args.url.rstrip("/") + path, max_size=None) as ws:
            meta = json.loads(ws.recv(timeout=30))
            if meta["type"] != "meta":
                print(f"server error: {meta.get('message', meta)}", file=sys.stderr)
                return 1
            print(f"connected: model {meta['model']}, protocol {meta['protocol']}, {meta['mode']} mode")
            return watch(args, ws, out) if args.watch else capture(args, ws, out, source)
    except InvalidStatus as err:
        print(f"ws_client: error: connection refused ({err.response.status_code}): check --token", file=sys.stderr)
    except (OSError, ConnectionClosed, TimeoutError) as err:
        print(f"ws_client: error: {err}", file=sys.stderr)
    finally:
        if out:
            out.close()
    return 1


if __name__ == "__main__":
    sys.exit(main())
