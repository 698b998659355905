"""The FastAPI app: websocket endpoints, health and status, and the static page.

    app = create_app(lambda: PoseEstimator(...), ServerConfig(token="s3cret"))

Endpoints:
    GET  /healthz       liveness: 200 while the inference thread runs
    GET  /api/status    clients, fps, queue depths (token required when one is set)
    GET  /api/schema    JSON schemas of every message
    WS   /ws/capture    browser capture: JPEG frames in, one poses/dropped/error message out each
    WS   /ws/broadcast  viewers of the server-side source: JPEG frame + poses per published frame
    GET  /              the page in web/

One process, one inference thread: state lives in memory, so run a single uvicorn worker.
"""
from __future__ import annotations

import asyncio
import logging
import time
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Header, HTTPException, Query, WebSocket
from fastapi.responses import JSONResponse
from fastapi.staticfiles import StaticFiles

from ..pose.tracking import Tracker
from . import schemas
from .broadcast import STREAM as BROADCAST_STREAM, Broadcaster
from .security import bearer_token, token_ok
from .session import serve
from .state import ServerConfig, ServerState
from .worker import BatchRunner, InferenceWorker

LOG = logging.getLogger(__name__)

_DEFAULT = object()


def default_tracker_factory(estimator: Any) -> Callable[[], Any] | None:
    """One pose.tracking.Tracker per stream (with the estimator's tracker settings) when the
    estimator tracks; None otherwise."""
    if not getattr(estimator, "tracking", False):
        return None
    default = getattr(getattr(estimator, "track", None), "tracker", None)
    return lambda config=None: Tracker(config=config or default)


def create_app(estimator_factory: Callable[[], Any], config: ServerConfig | None = None, *,
               tracker_factory: Callable[[], Any] | None | object = _DEFAULT) -> FastAPI:
    """Build the app; the estimator is created by `estimator_factory()` when the app starts.

    Args:
        estimator_factory: returns a PoseEstimator (or anything with the same call interface).
        config: limits, token, origins, broadcast source; defaults to ServerConfig().
        tracker_factory: per-stream tracker constructor for batched detection; the default is
            xnect_app.pose.tracking.Tracker when the estimator tracks. None: untracked poses.
    """
    cfg = config or ServerConfig()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        estimator = await asyncio.to_thread(estimator_factory)
        trackers = default_tracker_factory(estimator) if tracker_factory is _DEFAULT else tracker_factory
        runner = BatchRunner(estimator, trackers)  # type: ignore[arg-type]
        worker = InferenceWorker(runner, max_batch=cfg.max_batch, max_image_side=cfg.max_image_side)
        worker.start()
        state = ServerState(config=cfg, estimator=estimator, worker=worker)
        if cfg.source is not None:
            state.broadcaster = Broadcaster(cfg.source, worker, loop_file=cfg.loop_source,
                                            max_width=cfg.broadcast_max_width,
                                            jpeg_quality=cfg.broadcast_jpeg_quality)
            state.broadcaster.start(asyncio.get_running_loop())
        app.state.xnect = state
        LOG.info("serving model %s (%s inference)", state.model_name,
                 "batched" if runner.batched else "per-frame")
        try:
            yield
        finally:
            if state.broadcaster is not None:
                state.broadcaster.stop()
            worker.stop()

    app = FastAPI(title="xnect_app server", version=str(schemas.PROTOCOL_VERSION), lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)

    def state_of() -> ServerState:
        return app.state.xnect

    # async: these read state that the event loop changes, so they run on the loop too.
    @app.get("/healthz")
    async def healthz() -> JSONResponse:
        state = state_of()
        alive = state.worker.alive
        return JSONResponse({"ok": alive, "model": state.model_name}, status_code=200 if alive else 503)

    @app.get("/api/status", response_model=schemas.StatusMsg)
    async def status(token: str | None = Query(default=None),
               authorization: str | None = Header(default=None)) -> schemas.StatusMsg:
        state = state_of()
        if not token_ok(cfg.token, token if token is not None else bearer_token(authorization)):
            raise HTTPException(status_code=401, detail="missing or wrong token")
        sessions = list(state.sessions.values())
        bc = state.broadcaster
        queues = {s.id: len(s.in_flight) for s in sessions if s.mode == "capture"}
        queues["worker_pending"] = state.worker.pending()
        if bc is not None:
            queues[BROADCAST_STREAM] = state.worker.pending(BROADCAST_STREAM)
        return schemas.StatusMsg(
            model=state.model_name, uptime_s=round(time.monotonic() - state.started_s, 1),
            clients=sum(s.mode == "capture" for s in sessions),
            viewers=sum(s.mode == "broadcast" for s in sessions),
            fps=state.worker.fps(), worker=schemas.WorkerStatus(**state.worker.status()),
            queues=queues, client_list=[s.status() for s in sessions],
            broadcast=None if bc is None else bc.status())

    @app.get("/api/schema")
    async def schema() -> dict[str, Any]:
        return schemas.json_schemas()

    @app.websocket("/ws/capture")
    async def ws_capture(websocket: WebSocket) -> None:
        await serve(websocket, state_of(), "capture")

    @app.websocket("/ws/broadcast")
    async def ws_broadcast(websocket: WebSocket, frames: int = 1) -> None:
        await serve(websocket, state_of(), "broadcast", send_frames=bool(frames))

    if cfg.web_dir is not None:
        if cfg.web_dir.is_dir():
            app.mount("/", StaticFiles(directory=cfg.web_dir, html=True), name="web")
        else:
            LOG.warning("web page folder %s not found; serving the API only", cfg.web_dir)
    return app
