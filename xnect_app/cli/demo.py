"""Live multi-person 3D pose: camera, video, stream or images in, skeletons on screen.

examples:
  xnect-demo --camera 0
  xnect-demo --video demo_videos/vtest.avi --record out.mp4 --jsonl out.jsonl
  xnect-demo --source rtsp://192.168.1.20:8554/live --headless --jsonl live.jsonl
  xnect-demo --images photos/ --headless --max-frames 20 --jsonl photos.jsonl

Press q or Esc in the window (q + Enter in a headless terminal) or Ctrl-C to stop; what was
processed up to then is kept. Exit status (docs/cli.md): 0 done, 1 error (input, weights, device),
2 usage error, 3 the input was damaged (truncated video, unreadable images) but everything readable
was processed.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import threading
import time
from pathlib import Path

from ..estimator import TrackConfig
from ..io.draw import Overlay, Window, display_available
from ..io.sinks import JsonlSink, VideoSink, close_all
from ..io.sources import ImageSource, SourceError, open_source
from ..options import (OneLineParser, UserError, add_model_args, add_track_args, build_estimator, decode_config,
                       model_config, positive_int, run_cli, tracker_config)
from ..pipeline import Pipeline

PROG = "xnect-demo"
EXIT_DAMAGED_INPUT = 3
LOG = logging.getLogger(__name__)


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog=PROG, description=__doc__,
                      formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("input (one of)").add_mutually_exclusive_group(required=True)
    src.add_argument("--camera", type=int, metavar="N", help="camera index (0 = first camera)")
    src.add_argument("--video", metavar="PATH", help="video file")
    src.add_argument("--source", metavar="URL", help="stream URL (rtsp://, http://, ...)")
    src.add_argument("--images", metavar="DIR", help="image folder, image file or quoted glob")
    out = p.add_argument_group("output")
    out.add_argument("--headless", action="store_true", help="no window (machines without a screen)")
    out.add_argument("--record", metavar="OUT.mp4", help="write the annotated video here")
    out.add_argument("--jsonl", metavar="OUT.jsonl", help="write the poses as JSON lines here")
    out.add_argument("--max-frames", type=positive_int, metavar="N", help="stop after N frames")
    out.add_argument("--realtime", action="store_true",
                     help="play --video at its own frame rate, dropping frames inference cannot keep up with")
    out.add_argument("--no-3d-view", action="store_true", help="no 3D skeleton inset")
    out.add_argument("--rotate-3d", type=float, default=0.0, metavar="DEG_PER_S",
                     help="spin the 3D inset at this rate (0 = fixed view)")
    out.add_argument("--show-mask", action="store_true",
                     help="with --dynconv: darken the parts of the frame the network skipped")
    out.add_argument("--quiet", action="store_true", help="no periodic status lines")
    add_model_args(p)
    add_track_args(p)
    return p


def _open_source(args: argparse.Namespace):
    if args.camera is not None:
        return open_source(args.camera, kind="camera")
    if args.video is not None:
        return open_source(args.video, kind="video", realtime=args.realtime)
    if args.source is not None:
        return open_source(args.source, kind="stream")
    return open_source(args.images, kind="images")


def _check_output(path: str | None, flag: str) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if p.is_dir():
        raise UserError(f"{flag} {path}: is a folder; give a file name")
    folder = p.parent if str(p.parent) else Path(".")
    if not folder.is_dir():
        raise UserError(f"{flag} {path}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK):
        raise UserError(f"{flag} {path}: cannot write to folder {folder}")
    return p


def _stdin_quit(pipeline) -> None:
    """Headless terminals: 'q' + Enter stops the run."""
    def watch() -> None:
        for line in sys.stdin:
            if line.strip().lower() in ("q", "quit", "exit"):
                pipeline.stop("user")
                return
    threading.Thread(target=watch, name="stdin-quit", daemon=True).start()


def run(args: argparse.Namespace) -> int:
    # the command line first (a UsageError, exit 2), then the files and devices it names (exit 1)
    model, decode, tracker = model_config(args), decode_config(args), tracker_config(args)
    record = _check_output(args.record, "--record")
    jsonl = _check_output(args.jsonl, "--jsonl")
    source = _open_source(args)
    is_images = isinstance(source, ImageSource)
    try:
        source.open()
    except SourceError as e:
        raise UserError(str(e)) from None

    window = None
    if not args.headless:
        ok, why = display_available()
        if ok:
            window = Window(PROG)
        else:
            print(f"{PROG}: {why}; running headless (use --record/--jsonl to keep the results)",
                  file=sys.stderr)
    if source.live:  # opened only to fail fast; reopen after the model loads, without a backlog
        source.close()
    est = build_estimator(model, decode, TrackConfig(tracking=not is_images, tracker=tracker))
    if args.show_mask and not (est.dynconv or (est.stage1 is not None and est.stage1.cfg.dynconv)):
        raise UserError("--show-mask needs --dynconv (or weights with a DynConv mask unit)")
    if source.live:
        try:
            source.open()
        except SourceError as e:
            raise UserError(str(e)) from None

    sinks = []
    try:
        if jsonl is not None:
            sinks.append(JsonlSink(jsonl, model=est.model_name, source=source.name, fps=source.fps,
                                   intrinsics_for=est.intrinsics_for, per_frame_camera=is_images,
                                   inference=est.settings()))
        if record is not None:
            sinks.append(VideoSink(record, source.fps or (2.0 if is_images else None)))
    except OSError as e:
        close_all(sinks, complete=False)
        raise UserError(f"cannot create output: {e}") from None

    status = _StatusPrinter(quiet=args.quiet or window is not None)
    pipeline = Pipeline(source, est, sinks,
                        overlay=Overlay(view_3d=not args.no_3d_view, rotate_deg_per_s=args.rotate_3d,
                                        show_mask=args.show_mask),
                        display=window, max_frames=args.max_frames, on_result=status)
    if window is None and sys.stdin is not None and sys.stdin.isatty():
        _stdin_quit(pipeline)
        if not args.quiet:
            print(f"{PROG}: running on {source.name}; q + Enter or Ctrl-C stops", file=sys.stderr)
    stats = None
    try:
        stats = pipeline.run()
    except SourceError as e:
        close_all(sinks, complete=False)
        raise UserError(str(e)) from None
    except BaseException:
        close_all(sinks, complete=False)
        raise
    finally:
        source.close()
    errors = close_all(sinks, complete=True)
    if errors:
        raise UserError(f"could not save output: {errors[0]}")
    print(stats.summary())
    for s in sinks:
        for path in s.paths:
            print(f"wrote {path}")
    if stats.problems:
        for problem in stats.problems:
            print(f"{PROG}: warning: {problem}", file=sys.stderr)
    return EXIT_DAMAGED_INPUT if (stats.truncated or getattr(source, "skipped", None)) else 0


class _StatusPrinter:
    """A status line on stderr every few seconds (headless runs)."""

    def __init__(self, quiet: bool, every_s: float = 2.0) -> None:
        self.quiet, self.every_s = quiet, every_s
        self._last = time.perf_counter()
        self._count = 0

    def __call__(self, frame, result) -> None:
        self._count += 1
        now = time.perf_counter()
        if self.quiet or now - self._last < self.every_s:
            return
        fps = self._count / (now - self._last)
        self._last, self._count = now, 0
        print(f"frame {result.frame_index}: {len(result.people)} people, {fps:.1f} fps", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    return run_cli(PROG, build_parser(), run, argv, say_interrupted=True)


if __name__ == "__main__":
    sys.exit(main())
