"""Serve poses over websockets, with the browser overlay page at "/".

Examples:
    xnect-server                                   # http://127.0.0.1:8000, browser-capture mode
    xnect-server --source demo_videos/vtest.avi    # also broadcast a video to every viewer
    xnect-server --camera 0 --token s3cret         # broadcast the server's webcam; token required
    xnect-server --host 0.0.0.0 --allow-origin https://my.site --ssl-certfile c.pem --ssl-keyfile k.pem

The protocol is described in docs/server.md; examples/ws_client.py is a Python client.
Exit status (docs/cli.md): 1 a file, the source, the weights or the address failed, 2 usage error.
"""
from __future__ import annotations

import argparse
import logging
import os
import socket
import sys
from pathlib import Path

import uvicorn

from ..estimator import TrackConfig
from ..options import (OneLineParser, UsageError, UserError, add_model_args, add_track_args, build_estimator,
                       decode_config, exit_code, fail, model_config, tracker_config)
from ..server.app import create_app
from ..server.broadcast import open_capture
from ..server.state import DEFAULT_WEB_DIR, MiB, ServerConfig

LOG = logging.getLogger("xnect_app.server")


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="xnect-server", description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    net = p.add_argument_group("network")
    net.add_argument("--host", default="127.0.0.1", help="address to bind; 0.0.0.0 exposes the server to the network")
    net.add_argument("--port", type=int, default=8000, help="port (0: any free port, printed at start)")
    net.add_argument("--token", default=os.environ.get("XNECT_TOKEN"),
                     help="shared secret required on every connection (default: $XNECT_TOKEN, else none)")
    net.add_argument("--allow-origin", action="append", default=[], metavar="ORIGIN",
                     help="extra browser origin allowed to connect (repeatable; '*' for any)")
    net.add_argument("--ssl-certfile", type=Path, help="serve HTTPS (needed for webcams on other hosts)")
    net.add_argument("--ssl-keyfile", type=Path)

    src = p.add_argument_group("broadcast source (optional)").add_mutually_exclusive_group()
    src.add_argument("--source", help="video file or stream URL read on the server and broadcast to viewers")
    src.add_argument("--camera", type=int, metavar="N", help="server webcam index to broadcast")
    p.add_argument("--no-loop", action="store_true", help="stop the broadcast at the end of a video file")

    model = add_model_args(p)
    model.add_argument("--no-skeleton-fit", action="store_true", help="skip the kinematic skeleton fit")
    add_track_args(p)

    lim = p.add_argument_group("limits")
    lim.add_argument("--max-frame-mb", type=float, default=8.0, help="largest frame message, MiB")
    lim.add_argument("--max-image-side", type=int, default=4096, help="largest JPEG width or height")
    lim.add_argument("--max-clients", type=int, default=32, help="websocket connections at once")
    lim.add_argument("--max-batch", type=int, default=8, help="frames per inference batch")

    p.add_argument("--web-dir", type=Path, default=DEFAULT_WEB_DIR, help="folder of the page served at /")
    p.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    return p


def config_from_args(args: argparse.Namespace) -> ServerConfig:
    """The server settings; UsageError (exit 2) for a wrong command line, ValueError (exit 1) for a
    missing file or a source that cannot be opened."""
    if not 0 <= args.port <= 65535:
        raise UsageError(f"--port must be 0-65535, got {args.port}")
    for name in ("max_frame_mb", "max_image_side", "max_clients", "max_batch"):
        if getattr(args, name) <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be positive")
    if bool(args.ssl_certfile) != bool(args.ssl_keyfile):
        raise UsageError("--ssl-certfile and --ssl-keyfile go together")
    if args.token is not None and not args.token.strip():
        raise UsageError("--token must not be empty")
    model_config(args)  # options that exclude each other, before any file
    for path in (args.ssl_certfile, args.ssl_keyfile, args.weights, args.checkpoint):
        if path is not None and not Path(path).is_file():
            raise ValueError(f"file not found: {path}")
    source = args.camera if args.camera is not None else args.source
    if source is not None:
        open_capture(source).release()  # fail now, with the source's name, not after start-up
    return ServerConfig(
        token=args.token, allowed_origins=tuple(args.allow_origin),
        max_frame_bytes=int(args.max_frame_mb * MiB), max_image_side=args.max_image_side,
        max_clients=args.max_clients, max_batch=args.max_batch, source=source,
        loop_source=not args.no_loop, web_dir=args.web_dir if args.web_dir.is_dir() else None)


def make_estimator(args: argparse.Namespace):
    try:
        return build_estimator(model_config(args), decode_config(args),
                               TrackConfig(tracking=True, fit_skeleton=not args.no_skeleton_fit,
                                           tracker=tracker_config(args)))
    except UsageError:
        raise
    except UserError as e:
        raise ValueError(str(e)) from None


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = config_from_args(args)
        # Built here, not in the lifespan, so that bad weights give a one-line error.
        estimator = make_estimator(args)
        sock = socket.socket(socket.AF_INET6 if ":" in args.host else socket.AF_INET)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((args.host, args.port))
    except (UserError, ValueError, FileNotFoundError, RuntimeError, OSError, KeyError) as err:
        fail("xnect-server", str(err), exit_code(err))

    app = create_app(lambda: estimator, cfg)
    host, port = sock.getsockname()[:2]
    scheme = "https" if args.ssl_certfile else "http"
    # A larger protocol limit than ours: slightly oversized frames get an error message, absurd
    # ones a close (1009) before they are buffered. No compression: frames are JPEG already.
    uv_cfg = uvicorn.Config(app, log_level=args.log_level, ws_max_size=2 * cfg.max_frame_bytes + 1024,
                            ws_per_message_deflate=False, ssl_certfile=args.ssl_certfile,
                            ssl_keyfile=args.ssl_keyfile, timeout_graceful_shutdown=5)
    print(f"xnect-server: serving on {scheme}://{host}:{port}/ (model {getattr(estimator, 'model_name', '?')})",
          flush=True)
    if host not in ("127.0.0.1", "::1", "localhost"):
        LOG.warning("listening on %s: reachable from other machines%s", host,
                    "" if cfg.token else "; consider --token")
    uvicorn.Server(uv_cfg).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
