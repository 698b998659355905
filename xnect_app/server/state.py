"""Server configuration and the resources that live for the app's lifetime."""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..assets import asset_dir
from .broadcast import Broadcaster
from .worker import InferenceWorker

MiB = 1 << 20
DEFAULT_WEB_DIR = asset_dir("web")


@dataclass(frozen=True)
class ServerConfig:
    """Everything `create_app` needs besides the estimator.

    Args:
        token: shared secret required on every websocket and on /api/status (None: open).
        allowed_origins: extra browser origins allowed to connect ("*" for any); the page's own
            origin and non-browser clients (no Origin header) are always allowed.
        max_frame_bytes: largest binary frame message accepted.
        max_text_bytes: largest JSON message accepted.
        max_image_side: largest JPEG width or height accepted, read from its header.
        max_clients: websocket connections at once (capture + viewers).
        max_batch: frames per inference batch.
        hello_timeout_s: time a client has to send its token when it is not in the URL.
        source: broadcast source: a video path or URL, or a camera index (int). None: no broadcast.
        loop_source: restart a video file at its end.
        broadcast_max_width: broadcast JPEGs are downscaled to this width (poses stay in source pixels).
        broadcast_jpeg_quality: JPEG quality of broadcast frames.
        web_dir: the static page served at "/" (None: no page).
    """

    token: str | None = None
    allowed_origins: tuple[str, ...] = ()
    max_frame_bytes: int = 8 * MiB
    max_text_bytes: int = 64 * 1024
    max_image_side: int = 4096
    max_clients: int = 32
    max_batch: int = 8
    hello_timeout_s: float = 5.0
    source: str | int | None = None
    loop_source: bool = True
    broadcast_max_width: int = 960
    broadcast_jpeg_quality: int = 80
    web_dir: Path | None = DEFAULT_WEB_DIR

    MAX_IN_FLIGHT = 2  # per capture client: one waiting + one in inference


@dataclass
class ServerState:
    config: ServerConfig
    estimator: Any
    worker: InferenceWorker
    broadcaster: Broadcaster | None = None
    sessions: dict[str, Any] = field(default_factory=dict)  # client id -> session.Session
    started_s: float = field(default_factory=time.monotonic)
    _ids: itertools.count = field(default_factory=lambda: itertools.count(1))

    @property
    def model_name(self) -> str:
        return str(getattr(self.estimator, "model_name", type(self.estimator).__name__))

    @property
    def inference(self) -> dict[str, Any] | None:
        fn = getattr(self.estimator, "settings", None)
        return fn() if callable(fn) else None

    def new_client_id(self, mode: str) -> str:
        return f"{mode[0]}{next(self._ids)}"

    def intrinsics_for(self, width: int, height: int) -> dict[str, float] | None:
        fn = getattr(self.estimator, "intrinsics_for", None)
        return None if fn is None else fn(width, height).to_dict()
