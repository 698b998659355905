"""Connection checks: the optional shared token and the Origin of browser connections."""
from __future__ import annotations

import hmac
from urllib.parse import urlsplit


def token_ok(expected: str | None, given: str | None) -> bool:
    """True when no token is configured, or `given` matches it (constant-time compare)."""
    if not expected:
        return True
    if given is None:
        return False
    return hmac.compare_digest(expected.encode(), given.encode())


def bearer_token(authorization: str | None) -> str | None:
    if authorization and authorization.lower().startswith("bearer "):
        return authorization[7:].strip()
    return None


def origin_ok(origin: str | None, host: str | None, allowed: tuple[str, ...]) -> bool:
    """Allow non-browser clients (no Origin), the page's own origin and configured origins.

    Browsers always send Origin on websocket handshakes, so a page from another site cannot open
    a connection unless its origin is listed (or "*" is).
    """
    if origin is None:
        return True
    origin = origin.strip().rstrip("/").lower()
    if "*" in allowed or origin in {a.rstrip("/").lower() for a in allowed}:
        return True
    parts = urlsplit(origin)
    if parts.scheme not in ("http", "https") or not parts.netloc or not host:
        return False  # includes the opaque "null" origin of sandboxed pages and file://
    default_port = {"http": ":80", "https": ":443"}[parts.scheme]
    netloc = parts.netloc.removesuffix(default_port)
    return netloc == host.strip().lower().removesuffix(default_port)
