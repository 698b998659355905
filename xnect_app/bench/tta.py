"""Test-time augmentation cost: one pass vs flip (full or reduced mirror), scales and both, side by side
on one video.

The same frames go through each setting in turn (frame 1 through all settings, then frame 2, ...),
so a busy machine slows them alike and the ratios to the single pass hold. Times are medians per
frame of Stage I (all its passes) and of the whole detect call; "people" counts the detections.

examples:
  xnect-bench tta --frames 20
  xnect-bench tta --video clip.mp4 --bench-scales 1,0.75,0.5 --threads 2 --out tta.json
  xnect-bench tta --frames 5 --json > tta.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..estimator import PoseEstimator, TrackConfig
from ..io.sinks import atomic_write_text
from ..options import (OneLineParser, UsageError, add_model_args, build_estimator, decode_config,
                       fraction, model_config, non_negative_int, run_cli, scale_list)
from .frames import add_video_arg, read_frames, require_video

_log = logging.getLogger(__name__)


def settings(scales: tuple[float, ...], flip_scale: float = 0.625) -> list[tuple[str, dict[str, Any]]]:
    s = ",".join(f"{v:g}" for v in scales)
    return [("single pass", {}), ("--flip", {"flip_test": True}),
            (f"--flip-scale {flip_scale:g}", {"flip_test": True, "flip_scale": flip_scale}),
            (f"--scales {s}", {"test_scales": scales}),
            (f"--flip --scales {s}", {"flip_test": True, "test_scales": scales})]


def run_tta_bench(frames: list[np.ndarray], estimators: list[tuple[str, Any]], warmup: int = 2) -> list[dict]:
    """Median ms per frame of each estimator, interleaved frame by frame."""
    stage1: dict[str, list[float]] = {name: [] for name, _ in estimators}
    total: dict[str, list[float]] = {name: [] for name, _ in estimators}
    people: dict[str, int] = {name: 0 for name, _ in estimators}
    for i, frame in enumerate(frames[:warmup] + frames):
        for name, est in estimators:
            t0 = time.perf_counter()
            res = est.detect_batch([frame])[0]
            dt = (time.perf_counter() - t0) * 1000
            if i >= warmup:
                stage1[name].append(res.timings_ms["stage1"])
                total[name].append(dt)
                people[name] += len(res.people)
    rows = [{"setting": name, "stage1_ms": float(np.median(stage1[name])), "frame_ms": float(np.median(total[name])),
             "people_per_frame": people[name] / len(frames)} for name, _ in estimators]
    for r in rows:
        r["stage1_ratio"] = r["stage1_ms"] / rows[0]["stage1_ms"]
        r["frame_ratio"] = r["frame_ms"] / rows[0]["frame_ms"]
    return rows


def format_report(rows: list[dict], size: tuple[int, int], n_frames: int, threads: int) -> str:
    lines = [f"test-time augmentation at {size[0]}x{size[1]}, {n_frames} frames, {threads} torch threads "
             "(medians per frame, settings interleaved)",
             f"  {'setting':<28} {'Stage I ms':>10} {'x':>6} {'frame ms':>9} {'x':>6} {'people':>7}"]
    for r in rows:
        lines.append(f"  {r['setting']:<28} {r['stage1_ms']:>10.1f} {r['stage1_ratio']:>6.2f} {r['frame_ms']:>9.1f} "
                     f"{r['frame_ratio']:>6.2f} {r['people_per_frame']:>7.1f}")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    p = parser or OneLineParser(prog="xnect-bench tta", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_arg(p)
    p.add_argument("--frames", type=int, default=20, help="timed frames per setting")
    p.add_argument("--start", type=non_negative_int, default=0, help="first frame")
    p.add_argument("--bench-scales", type=scale_list, default=(1.0, 0.75, 0.5), metavar="S,S,...",
                   help="the scales compared (default 1,0.75,0.5)")
    p.add_argument("--bench-flip-scale", type=fraction, default=0.625, metavar="S",
                   help="the --flip-scale compared (default %(default)s)")
    p.add_argument("--threads", type=non_negative_int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON document to PATH")
    add_model_args(p)
    return p


def check_args(args: argparse.Namespace) -> None:
    """Option combinations the bench refuses (a UsageError), before any video is read."""
    if args.flip or args.flip_scale or args.scales or args.dynconv:
        raise UsageError("this bench compares the settings itself: leave out --flip, --flip-scale, --scales and "
                        "--dynconv (--bench-scales and --bench-flip-scale choose what it compares)")
    if args.frames < 1:
        raise UsageError("--frames must be at least 1")


def run(args: argparse.Namespace) -> int:
    check_args(args)
    require_video(args.video)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, decode, track = model_config(args, torch_thread=False), decode_config(args), TrackConfig(tracking=False)
    base = build_estimator(model, decode, track)
    estimators = [(name, base if not extra else  # the networks are shared
                   PoseEstimator.from_networks(base.stage1, base.stage2, replace(model, **extra), decode, track,
                                               name=base.model_name))
                  for name, extra in settings(tuple(args.bench_scales), args.bench_flip_scale)]
    frames = read_frames(args.video, args.frames, args.start)
    _log.info("timing %d settings on %d frames", len(estimators), len(frames))
    rows = run_tta_bench(frames, estimators)
    document = json.dumps({"frames": len(frames), "rows": rows}, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), document + "\n")
    print(document if args.json else format_report(rows, base.input_size, len(frames), torch.get_num_threads()))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("xnect-bench tta", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
