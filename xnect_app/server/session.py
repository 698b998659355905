"""One websocket connection: admission, the receive loop, and a sender that never blocks the rest.

Capture clients send JPEG frames and get one answer per frame (poses, dropped or error).
Broadcast viewers only listen; each keeps just the newest unsent frame, so a slow viewer gets
fewer frames and never holds up anyone else.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import logging
import time
from collections import deque
from dataclasses import replace
from typing import Any

from fastapi import WebSocket
from pydantic import ValidationError
from starlette.websockets import WebSocketDisconnect, WebSocketState

from .. import options, skeleton, types
from ..pose.tracking import TrackerConfig
from .._moved import moved_names
from . import schemas
from .jpeg import BadImage, jpeg_size
from .security import origin_ok, token_ok
from .state import ServerState
from .worker import FrameJob, JobOutcome

LOG = logging.getLogger(__name__)

CLOSE_POLICY = 1008      # refused: origin, token, a client that stopped reading
CLOSE_TRY_LATER = 1013   # server full
CLOSE_GOING_AWAY = 1001


class Outbox:
    """Messages waiting for one websocket, drained by one sender task.

    Control messages (answers to this client) queue up to a bound; a broadcast packet is a
    single slot that a newer packet replaces.
    """

    def __init__(self, max_control: int = 64):
        self.max_control = max_control
        self._control: deque[str] = deque()
        self._latest: tuple[bytes | None, str] | None = None
        self._event = asyncio.Event()
        self._close: tuple[int, str] | None = None
        self.replaced = 0
        self.sent_packets = 0

    def put(self, text: str) -> bool:
        if len(self._control) >= self.max_control:
            return False
        self._control.append(text)
        self._event.set()
        return True

    def put_latest(self, frame: bytes | None, text: str) -> None:
        if self._latest is not None:
            self.replaced += 1
        self._latest = (frame, text)
        self._event.set()

    def close(self, code: int, reason: str = "") -> None:
        if self._close is None:
            self._close = (code, reason)
        self._event.set()

    async def pump(self, ws: WebSocket) -> None:
        """Send until closed; returns when the socket is gone or closing."""
        try:
            while True:
                await self._event.wait()
                self._event.clear()
                while self._control:
                    await ws.send_text(self._control.popleft())
                if self._latest is not None:
                    frame, text = self._latest
                    self._latest = None
                    if frame is not None:
                        await ws.send_bytes(frame)
                    await ws.send_text(text)
                    self.sent_packets += 1
                if self._close is not None:
                    if ws.application_state == WebSocketState.CONNECTED:
                        await ws.close(*self._close)
                    return
        except (WebSocketDisconnect, RuntimeError, OSError):
            return  # client gone; the receive loop notices too


class Session:
    """State and counters of one connection."""

    def __init__(self, ws: WebSocket, state: ServerState, mode: str):
        self.ws = ws
        self.state = state
        self.mode = mode
        self.id = state.new_client_id(mode)
        self.outbox = Outbox()
        self.loop = asyncio.get_running_loop()
        self.in_flight: set[int] = set()
        self.frames_in = 0
        self.poses_out = 0
        self.dropped = 0
        self.errors = 0
        self._auto_id = 0
        self._done_times: deque[float] = deque(maxlen=30)
        self.closed = False

    # ---- sending ----

    def send(self, msg: schemas.Message) -> None:
        if self.closed:
            return
        if not self.outbox.put(msg.model_dump_json()):
            LOG.warning("client %s is not reading its messages; closing", self.id)
            self.outbox.close(CLOSE_POLICY, "client is not reading its messages")
            self.closed = True

    def error(self, code: str, message: str, frame_id: int | None = None, fatal: bool = False) -> None:
        self.errors += 1
        self.send(schemas.ErrorMsg(code=code, message=message, frame_id=frame_id, fatal=fatal))
        if fatal:
            self.outbox.close(CLOSE_POLICY, code)
            self.closed = True

    def meta(self, image_wh: list[int] | None = None, fps: float | None = None,
             source: str | None = None) -> schemas.MetaMsg:
        cfg = self.state.config
        intr = self.state.intrinsics_for(*image_wh) if image_wh else None
        record = types.meta_record(self.state.model_name, None, None, fps=fps, source=source,
                                   inference=self.state.inference)
        record.update(type="meta", intrinsics=intr, image_wh=image_wh)
        return schemas.MetaMsg(
            mode=self.mode, client_id=self.id,
            track_colors_rgb=[[r, g, b] for b, g, r in skeleton.TRACK_COLORS_BGR],
            limits=schemas.Limits(max_frame_bytes=cfg.max_frame_bytes, max_text_bytes=cfg.max_text_bytes,
                                  max_image_side=cfg.max_image_side, max_in_flight=cfg.MAX_IN_FLIGHT),
            **record)

    def status(self) -> schemas.ClientStatus:
        return schemas.ClientStatus(id=self.id, mode=self.mode, in_flight=len(self.in_flight),
                                    frames_in=self.frames_in, poses_out=self.poses_out,
                                    dropped=self.dropped + self.outbox.replaced, errors=self.errors)

    # ---- receiving ----

    def handle_text(self, text: str) -> None:
        if len(text.encode()) > self.state.config.max_text_bytes:
            self.error("message_too_large", f"text messages are limited to {self.state.config.max_text_bytes} bytes")
            return
        try:
            data = json.loads(text)
        except ValueError:
            self.error("bad_json", "message is not valid JSON")
            return
        if not isinstance(data, dict) or not isinstance(data.get("type"), str):
            self.error("bad_message", "a message must be a JSON object with a string 'type'")
            return
        if data["type"] not in schemas.CLIENT_TYPES:
            self.error("unknown_type", f"unknown message type {data['type'][:40]!r}; "
                       f"expected one of {', '.join(schemas.CLIENT_TYPES)}")
            return
        try:
            msg = schemas.CLIENT_MESSAGE.validate_python(data)
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"][1:]) or "message"
            self.error("bad_message", f"{data['type']}: {where}: {first['msg']}")
            return
        if isinstance(msg, schemas.PingIn):
            self.send(schemas.PongMsg(t=msg.t, server_time_s=time.time()))
        elif isinstance(msg, schemas.ResetIn):
            self.state.worker.reset_stream(self.id)
        # hello after admission carries nothing new

    def handle_frame(self, data: bytes) -> None:
        cfg = self.state.config
        if self.mode != "capture":
            self.error("bad_message", "broadcast viewers cannot send frames")
            return
        try:
            frame_id, client_ts, jpeg = schemas.unpack_frame(data)
        except schemas.FrameHeaderError as err:
            self.error("bad_frame", str(err))
            return
        if frame_id is None:
            self._auto_id += 1
            frame_id = self._auto_id
        if len(data) > cfg.max_frame_bytes:
            self.error("frame_too_large", f"frame is {len(data)} bytes; the limit is {cfg.max_frame_bytes}", frame_id)
            return
        # Cheap header checks here, so that garbage never reaches the worker.
        try:
            w, h = jpeg_size(jpeg)
            if w > cfg.max_image_side or h > cfg.max_image_side:
                raise BadImage("image_too_large",
                               f"image is {w}x{h}; the limit is {cfg.max_image_side} pixels a side")
        except BadImage as err:
            self.error(err.code, str(err), frame_id)
            return
        self.frames_in += 1
        self.in_flight.add(frame_id)
        self.state.worker.submit(FrameJob(stream=self.id, frame_id=frame_id, client_ts=client_ts,
                                          jpeg=jpeg, on_done=self._on_done))

    # ---- results (called from the worker thread) ----

    def _on_done(self, job: FrameJob, outcome: JobOutcome) -> None:
        try:
            self.loop.call_soon_threadsafe(self._deliver, job, outcome)
        except RuntimeError:
            pass  # loop closed: server shutting down

    def _deliver(self, job: FrameJob, outcome: JobOutcome) -> None:
        self.in_flight.discard(job.frame_id)
        if outcome.dropped:
            self.dropped += 1
            self.send(schemas.DroppedMsg(frame_id=job.frame_id, reason=outcome.dropped))
        elif outcome.error_code:
            self.error(outcome.error_code, outcome.error or "", job.frame_id)
        else:
            self._done_times.append(time.perf_counter())
            self.poses_out += 1
            self.send(schemas.poses_message(job, outcome, self.fps()))

    def fps(self) -> float:
        t = self._done_times
        return 0.0 if len(t) < 2 else round((len(t) - 1) / max(t[-1] - t[0], 1e-6), 2)


async def admit(ws: WebSocket, state: ServerState) -> bool:
    """Origin, token and capacity checks; refusals close the handshake (HTTP 403)."""
    cfg = state.config
    origin = ws.headers.get("origin")
    if not origin_ok(origin, ws.headers.get("host"), cfg.allowed_origins):
        LOG.warning("refused websocket from origin %r", origin)
        await ws.close(CLOSE_POLICY)
        return False
    query_token = ws.query_params.get("token")
    if query_token is not None and not token_ok(cfg.token, query_token):
        LOG.warning("refused websocket with a wrong token")
        await ws.close(CLOSE_POLICY)
        return False
    if len(state.sessions) >= cfg.max_clients:
        await ws.close(CLOSE_TRY_LATER)
        return False
    return True


async def _await_hello(session: Session) -> bool:
    """When a token is required and was not in the URL, the first message must carry it."""
    try:
        msg = await asyncio.wait_for(session.ws.receive(), session.state.config.hello_timeout_s)
    except asyncio.TimeoutError:
        session.error("unauthorized", "no token: send {\"type\": \"hello\", \"token\": ...} first "
                      "or add ?token= to the URL", fatal=True)
        return False
    if msg["type"] == "websocket.disconnect":
        session.closed = True
        return False
    token = None
    try:
        data = json.loads(msg.get("text") or "")
        if isinstance(data, dict) and data.get("type") == "hello" and isinstance(data.get("token"), str):
            token = data["token"]
    except ValueError:
        pass
    if not token_ok(session.state.config.token, token):
        session.error("unauthorized", "missing or wrong token", fatal=True)
        return False
    return True


# URL parameter: (TrackerConfig field, the argparse type of the matching --track-* option)
TRACK_QUERY = {
    "track_high_score": ("high_score", options.score),
    "track_max_lost": ("max_lost_s", options.seconds),
    "track_confirm": ("confirm_frames", options.positive_int),
    "track_colour": ("use_colour", options.ranged(int, "0 or 1", lambda v: v in (0, 1), "0, 1")),
}


def tracker_config_from_query(query: Any, state: ServerState) -> Any:
    """A capture client's own tracker settings from its URL (?track_confirm=1&track_colour=0,
    as the server's --track-* options), or None to keep the server's. ValueError names a bad one."""
    values: dict[str, Any] = {}
    for key, (field_name, parse) in TRACK_QUERY.items():
        if key in query:
            try:
                values[field_name] = parse(query[key])
            except argparse.ArgumentTypeError as e:
                raise ValueError(f"{key}={query[key]!r}: {e}") from None
    if not values:
        return None
    if "use_colour" in values:
        values["use_colour"] = bool(values["use_colour"])
    base = getattr(getattr(state.estimator, "track", None), "tracker", None) or TrackerConfig()
    return replace(base, **values)


async def serve(ws: WebSocket, state: ServerState, mode: str, send_frames: bool = True) -> None:
    """Run one connection from handshake to close."""
    if not await admit(ws, state):
        return
    await ws.accept()
    session = Session(ws, state, mode)
    state.sessions[session.id] = session
    sender = asyncio.create_task(session.outbox.pump(ws))
    try:
        if state.config.token and ws.query_params.get("token") is None:
            if not await _await_hello(session):
                return
        if mode == "broadcast":
            bc = state.broadcaster
            if bc is None:
                session.error("no_broadcast", "this server has no broadcast source (start it with --source or --camera)",
                              fatal=True)
                return
            session.send(session.meta(image_wh=bc.image_wh, fps=bc.fps, source=bc.name))
            bc.subscribe(session.outbox, send_frames)
        else:
            try:
                tracker = tracker_config_from_query(ws.query_params, state)
            except ValueError as e:
                session.error("bad_option", str(e), fatal=True)
                return
            if tracker is not None:
                state.worker.runner.tracker_configs[session.id] = tracker
            session.send(session.meta())
        await _receive_loop(session)
    finally:
        state.sessions.pop(session.id, None)
        state.worker.forget(session.id)
        if state.broadcaster is not None:
            state.broadcaster.unsubscribe(session.outbox)
        session.closed = True
        session.outbox.close(CLOSE_GOING_AWAY)
        try:
            await asyncio.wait_for(sender, 2.0)
        except (asyncio.TimeoutError, Exception):
            sender.cancel()
        LOG.info("client %s (%s) left: %d frames in, %d poses out, %d dropped, %d errors",
                 session.id, mode, session.frames_in, session.poses_out, session.dropped, session.errors)


async def _receive_loop(session: Session) -> None:
    ws = session.ws
    while not session.closed:
        try:
            msg: dict[str, Any] = await ws.receive()
        except (WebSocketDisconnect, RuntimeError):
            return
        if msg["type"] == "websocket.disconnect":
            return
        try:
            if msg.get("bytes") is not None:
                session.handle_frame(msg["bytes"])
            elif msg.get("text") is not None:
                session.handle_text(msg["text"])
        except Exception:  # a bug must cost this message, not the connection or the server
            LOG.exception("client %s: message handling failed", session.id)
            session.error("internal", "the server failed on this message")


__getattr__ = moved_names(__name__, {"poses_message": "xnect_app.server.schemas"})
