"""JPEG checks done before decoding: size from the header, truncation, then a guarded decode.

Reading the frame size from the SOF marker lets the server refuse a huge image before any pixel
memory is allocated.
"""
from __future__ import annotations

import cv2
import numpy as np

SOI = b"\xff\xd8"
EOI = b"\xff\xd9"
# Start-of-frame markers carry the image size; C4 (DHT), C8 (JPG) and CC (DAC) share the range.
_SOF_MARKERS = frozenset(range(0xC0, 0xD0)) - {0xC4, 0xC8, 0xCC}
_STANDALONE = frozenset(range(0xD0, 0xD8)) | {0x01}


class BadImage(ValueError):
    """A frame that is not a usable JPEG. `code` is the protocol error code."""

    def __init__(self, code: str, message: str):
        super().__init__(message)
        self.code = code


def looks_like_jpeg(data: bytes) -> bool:
    return data[:3] == b"\xff\xd8\xff"


def jpeg_size(data: bytes) -> tuple[int, int]:
    """(width, height) from the first start-of-frame marker, without decoding."""
    if not looks_like_jpeg(data):
        raise BadImage("bad_frame", "not a JPEG image (no start-of-image marker)")
    i, n = 2, len(data)
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise BadImage("bad_frame", f"corrupt JPEG header at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in _STANDALONE:
            i += 2
            continue
        seg_len = int.from_bytes(data[i + 2:i + 4], "big")
        if seg_len < 2:
            raise BadImage("bad_frame", f"corrupt JPEG segment length at byte {i}")
        if marker in _SOF_MARKERS:
            if i + 9 > n:
                break
            h = int.from_bytes(data[i + 5:i + 7], "big")
            w = int.from_bytes(data[i + 7:i + 9], "big")
            if w == 0 or h == 0:
                raise BadImage("bad_frame", "JPEG header gives an empty image")
            return w, h
        if marker == 0xDA:  # start of scan before any frame header
            raise BadImage("bad_frame", "JPEG has no frame header before its image data")
        i += 2 + seg_len
    raise BadImage("truncated_frame", "JPEG header is truncated")


def decode_jpeg(data: bytes, max_side: int) -> np.ndarray:
    """Decode a JPEG to BGR after checking its size and that it is complete."""
    w, h = jpeg_size(data)
    if w > max_side or h > max_side:
        raise BadImage("image_too_large", f"image is {w}x{h}; the limit is {max_side} pixels a side")
    # A complete JPEG ends with EOI; some encoders pad a few bytes after it.
    if EOI not in data[-16:]:
        raise BadImage("truncated_frame", "JPEG is truncated (no end-of-image marker)")
    image = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)
    if image is None:
        raise BadImage("bad_frame", "JPEG could not be decoded")
    return image


def encode_jpeg(image: np.ndarray, quality: int = 80) -> bytes:
    ok, buf = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, int(quality)])
    if not ok:
        raise ValueError("JPEG encoding failed")
    return buf.tobytes()
