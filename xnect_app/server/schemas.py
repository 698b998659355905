"""Websocket protocol: binary frame packing and the pydantic models of every JSON message.

Version 1. Binary messages carry one JPEG with a 16-byte header (both directions):
    magic b"XNF1" | uint32 frame_id (big-endian) | float64 timestamp, ms, sender's clock | JPEG
A capture client may also send a bare JPEG; the server then numbers the frames itself.
JSON messages are objects with a "type" field; the models below are their exact shape.
"""
from __future__ import annotations

import struct
from typing import Annotated, Any, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from .jpeg import looks_like_jpeg
from .worker import FrameJob, JobOutcome

PROTOCOL_VERSION = 1
FRAME_MAGIC = b"XNF1"
FRAME_HEADER = struct.Struct(">4sId")

Row = list[float | None]


class FrameHeaderError(ValueError):
    pass


def pack_frame(frame_id: int, timestamp_ms: float, jpeg: bytes) -> bytes:
    return FRAME_HEADER.pack(FRAME_MAGIC, frame_id & 0xFFFFFFFF, float(timestamp_ms)) + jpeg


def unpack_frame(data: bytes) -> tuple[int | None, float | None, bytes]:
    """(frame_id, timestamp_ms, jpeg); ids are None for a bare JPEG."""
    if data[:4] == FRAME_MAGIC:
        if len(data) < FRAME_HEADER.size:
            raise FrameHeaderError("binary message is shorter than the 16-byte frame header")
        _, frame_id, ts = FRAME_HEADER.unpack_from(data)
        return frame_id, (ts if ts == ts else None), data[FRAME_HEADER.size:]
    if looks_like_jpeg(data):
        return None, None, data
    raise FrameHeaderError("binary message is neither 'XNF1' + JPEG nor a bare JPEG")


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid")


# ---- client -> server (JSON text) ----

class HelloIn(Message):
    """Optional first message; carries the token when it is not in the URL."""
    type: Literal["hello"]
    token: str | None = Field(default=None, max_length=512)
    client: str | None = Field(default=None, max_length=128)


class PingIn(Message):
    type: Literal["ping"]
    t: float | None = None


class ResetIn(Message):
    """Start a new sequence: forget this client's tracks."""
    type: Literal["reset"]


ClientMessage = Annotated[Union[HelloIn, PingIn, ResetIn], Field(discriminator="type")]
CLIENT_MESSAGE = TypeAdapter(ClientMessage)
CLIENT_TYPES = ("hello", "ping", "reset")


# ---- server -> client (JSON text) ----

class Limits(Message):
    max_frame_bytes: int
    max_text_bytes: int
    max_image_side: int
    max_in_flight: int


class MetaMsg(Message):
    """First message on every connection: joint sets, units, model and limits."""
    type: Literal["meta"] = "meta"
    protocol: int = PROTOCOL_VERSION
    schema_version: int
    mode: Literal["capture", "broadcast"]
    client_id: str
    joints_2d: list[str]
    joints_3d: list[str]
    limbs_2d: list[list[int]]
    parents_3d: list[int]
    units: dict[str, str]
    intrinsics: dict[str, float] | None = None
    image_wh: list[int] | None = None
    fps: float | None = None
    source: str | None = None
    model: str
    inference: dict[str, Any] | None = None  # PoseEstimator.settings(): input size, flip, scales, dynconv...
    track_colors_rgb: list[list[int]]   # colour of track id i is entry i % len
    limits: Limits


class PersonMsg(Message):
    """types.Person.to_dict(image_size): 2D in pixels and normalised to [0, 1], 3D in mm."""
    id: int
    score: float
    bbox: list[float]
    kp2d: list[Row]
    kp2d_norm: list[Row]
    kp3d_root_rel_mm: list[Row]
    root_cam_mm: Row
    kp3d_cam_mm: list[Row]
    joint_angles_rad: list[Row] | None = None


class ServerTimings(Message):
    queue: float    # waiting for the worker
    decode: float   # JPEG decode
    infer: float    # estimator, whole batch
    total: float    # frame received -> poses ready


class PosesMsg(Message):
    type: Literal["poses"] = "poses"
    protocol: int = PROTOCOL_VERSION
    frame_id: int
    client_ts: float | None = None   # echoed from the frame header (ms, client clock)
    image_wh: list[int]
    people: list[PersonMsg]
    intrinsics: dict[str, float] | None = None
    server_ms: ServerTimings
    timings_ms: dict[str, float] = Field(default_factory=dict)  # estimator stages
    batch_size: int
    fps: float
    computed_share: float | None = None  # DynConv: share of the input Stage I computed (1: dense)


def poses_message(job: FrameJob, outcome: JobOutcome, fps: float) -> PosesMsg:
    """The poses message of one finished frame job."""
    res = outcome.result
    assert res is not None
    w, h = res.image_size
    return PosesMsg(
        frame_id=job.frame_id, client_ts=job.client_ts, image_wh=[int(w), int(h)],
        people=[PersonMsg(**p.to_dict((w, h))) for p in res.people],
        intrinsics=None if res.intrinsics is None else res.intrinsics.to_dict(),
        server_ms=ServerTimings(queue=round(outcome.queue_ms, 2), decode=round(outcome.decode_ms, 2),
                                        infer=round(outcome.infer_ms, 2), total=round(outcome.total_ms, 2)),
        timings_ms={k: round(float(v), 2) for k, v in res.timings_ms.items()},
        batch_size=outcome.batch_size, fps=fps,
        computed_share=None if res.computed_share is None else round(res.computed_share, 4))


class DroppedMsg(Message):
    """A frame that will get no poses because a newer one from the same client replaced it."""
    type: Literal["dropped"] = "dropped"
    frame_id: int
    reason: str


class ErrorMsg(Message):
    type: Literal["error"] = "error"
    code: str
    message: str
    frame_id: int | None = None
    fatal: bool = False


class PongMsg(Message):
    type: Literal["pong"] = "pong"
    t: float | None = None
    server_time_s: float


ServerMessage = Annotated[Union[MetaMsg, PosesMsg, DroppedMsg, ErrorMsg, PongMsg],
                          Field(discriminator="type")]
SERVER_MESSAGE = TypeAdapter(ServerMessage)


# ---- HTTP ----

class ClientStatus(Message):
    id: str
    mode: Literal["capture", "broadcast"]
    in_flight: int
    frames_in: int
    poses_out: int
    dropped: int
    errors: int


class WorkerStatus(Message):
    pending: int
    busy: bool
    fps: float
    frames_done: int
    batches: int
    mean_batch: float
    max_batch: int


class BroadcastStatus(Message):
    source: str
    running: bool
    frames_read: int
    frames_published: int
    viewers: int
    error: str | None = None


class StatusMsg(Message):
    protocol: int = PROTOCOL_VERSION
    model: str
    uptime_s: float
    clients: int
    viewers: int
    fps: float
    worker: WorkerStatus
    queues: dict[str, int]
    client_list: list[ClientStatus]
    broadcast: BroadcastStatus | None = None


def json_schemas() -> dict[str, Any]:
    return {
        "client": CLIENT_MESSAGE.json_schema(),
        "server": SERVER_MESSAGE.json_schema(),
        "status": StatusMsg.model_json_schema(),
        "binary_frame": {"header": "magic b'XNF1', uint32 frame_id, float64 timestamp_ms; big-endian",
                         "header_bytes": FRAME_HEADER.size},
    }
