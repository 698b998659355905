"""Pipeline benchmark: end-to-end and per-stage speed on a video, threaded vs sequential.

Both modes run the same stages on the same frames (decode -> PoseEstimator -> overlay -> JSON
lines + MP4 into a temporary folder), one after the other in one process, so the numbers are
side by side. Run it as `xnect-bench pipeline` or `python -m xnect_app.bench.pipeline`.

examples:
  python -m xnect_app.bench.pipeline --video demo_videos/vtest.avi --frames 150
  python -m xnect_app.bench.pipeline --random-weights --input-size 512x320 --out bench.json
  python -m xnect_app.bench.pipeline --frames 40 --json > bench.json
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import cv2

from ..io.draw import Overlay
from ..io.sinks import JsonlSink, VideoSink, atomic_write_text, close_all
from ..io.sources import VideoSource
from ..options import (OneLineParser, UserError, add_model_args, build_estimator, decode_config, model_config,
                       positive_int, run_cli)
from ..pipeline import Pipeline
from .frames import add_video_arg, require_video

LOG = logging.getLogger(__name__)


def benchmark_pipeline(video: str | Path, estimator, *, frames: int = 150, warmup: int = 5,
                       repeats: int = 1, outputs: bool = True) -> dict[str, Any]:
    """Run the pipeline over the first `frames` frames of `video` sequentially and threaded.

    Args:
        video: video file.
        estimator: a PoseEstimator (or any callable(image, timestamp) -> FrameResult with reset()).
        frames: frames per run.
        warmup: estimator calls on the first frame before timing (allocator, caches).
        repeats: alternate sequential/threaded runs this many times; the best fps of each counts.
        outputs: also render the overlay and write JSON lines + MP4 (as the demo does).
    Returns:
        {"video", "frames", "model", "input_size", "sequential": stats, "threaded": stats,
         "speedup"} with RunStats.summary_dict() per mode.
    """
    cap = cv2.VideoCapture(str(video))
    ok, first = cap.read()
    cap.release()
    if not ok:
        raise UserError(f"{video}: cannot read a frame")
    for _ in range(warmup):
        estimator(first, timestamp=0.0)
    best: dict[str, dict[str, Any]] = {}
    per_repeat: list[dict[str, float]] = []
    load_before = _loadavg()
    with tempfile.TemporaryDirectory(prefix="xnect-bench-") as tmp:
        for r in range(repeats):
            for mode in ("sequential", "threaded"):
                if hasattr(estimator, "reset"):
                    estimator.reset()
                source = VideoSource(video).open()
                sinks = []
                if outputs:
                    sinks = [JsonlSink(Path(tmp) / f"{mode}{r}.jsonl", model=getattr(estimator, "model_name", "?"),
                                       fps=source.fps),
                             VideoSink(Path(tmp) / f"{mode}{r}.mp4", source.fps)]
                pipe = Pipeline(source, estimator, sinks, overlay=Overlay() if outputs else None,
                                threaded=mode == "threaded", max_frames=frames)
                try:
                    stats = _run_off_main_thread(pipe)
                finally:
                    close_all(sinks, complete=False)
                    source.close()
                summary = stats.summary_dict()
                LOG.info("%s run %d: %s", mode, r, stats.summary())
                if mode == "sequential":
                    per_repeat.append({})
                per_repeat[-1][mode] = summary["fps"]
                if mode not in best or summary["fps"] > best[mode]["fps"]:
                    best[mode] = summary
    seq, thr = best["sequential"]["fps"], best["threaded"]["fps"]
    # With one stage per thread, throughput is bounded by the slowest stage: sum / max of the
    # sequential stage times is the most threading can gain on a machine with spare cores.
    stage_means = [v["mean"] for v in best["sequential"]["stage_ms"].values() if v["mean"] == v["mean"]]
    return {"video": str(video), "frames": frames, "model": getattr(estimator, "model_name", "?"),
            "input_size": list(getattr(estimator, "input_size", ())),
            "sequential": best["sequential"], "threaded": best["threaded"],
            "speedup": thr / seq if seq > 0 else float("nan"),
            "ideal_speedup": sum(stage_means) / max(stage_means) if stage_means else float("nan"),
            "per_repeat_fps": per_repeat, "machine": _machine(), "loadavg_before": load_before,
            "loadavg_after": _loadavg()}


def _run_off_main_thread(pipe):
    """Run in a fresh thread while the main thread waits for Ctrl-C. Either way the estimator's
    torch work runs on its torch thread (runtime/torch_thread.py), as in the demo."""
    import threading
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            box["stats"] = pipe.run()
        except BaseException as e:  # re-raised below
            box["error"] = e
    t = threading.Thread(target=target, name="bench", daemon=True)
    t.start()
    try:
        while t.is_alive():
            t.join(0.2)
    except KeyboardInterrupt:
        pipe.stop("interrupt")
        t.join(10.0)
        raise
    if "error" in box:
        raise box["error"]
    return box["stats"]


def _loadavg() -> list[float] | None:
    try:
        import os
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def _machine() -> dict[str, Any]:
    import os
    import platform
    info: dict[str, Any] = {"cpus": os.cpu_count(), "platform": platform.platform()}
    try:
        import torch
        info["torch"] = torch.__version__
        info["torch_threads"] = torch.get_num_threads()
    except ImportError:
        pass
    return info


def format_report(res: dict[str, Any]) -> str:
    """A small side-by-side table (ms per frame are means over the run)."""
    lines = [f"pipeline on {Path(res['video']).name}, {res['frames']} frames, input "
             f"{'x'.join(map(str, res['input_size']))}, model {res['model']}",
             f"{'':28s}{'sequential':>12s}{'threaded':>12s}"]
    seq, thr = res["sequential"], res["threaded"]
    lines.append(f"{'end-to-end fps':28s}{seq['fps']:12.2f}{thr['fps']:12.2f}")
    for stage in seq["stage_ms"]:
        lines.append(f"{stage + ' ms/frame':28s}{seq['stage_ms'][stage]['mean']:12.1f}"
                     f"{thr['stage_ms'][stage]['mean']:12.1f}")
    for k in seq["estimator_ms"]:
        if k in thr["estimator_ms"]:
            lines.append(f"{'  estimator ' + k + ' ms':28s}{seq['estimator_ms'][k]['mean']:12.1f}"
                         f"{thr['estimator_ms'][k]['mean']:12.1f}")
    lines.append(f"{'latency ms mean / p95':28s}{seq['latency_ms']['mean']:7.0f}/{seq['latency_ms']['p95']:<4.0f}"
                 f"{thr['latency_ms']['mean']:7.0f}/{thr['latency_ms']['p95']:<4.0f}")
    lines.append(f"threading speed-up: {res['speedup']:.2f}x (bound from the stage times: "
                 f"{res['ideal_speedup']:.2f}x)")
    if len(res["per_repeat_fps"]) > 1:
        runs = ", ".join(f"{r['sequential']:.2f}/{r['threaded']:.2f}" for r in res["per_repeat_fps"])
        lines.append(f"fps per repeat (sequential/threaded): {runs}")
    m = res["machine"]
    lines.append(f"machine: {m.get('cpus')} CPUs, torch {m.get('torch')} with {m.get('torch_threads')} threads, "
                 f"load average {res['loadavg_before']} -> {res['loadavg_after']}")
    return "\n".join(lines)


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of the benchmark; pass a subparser to mount it under `xnect-bench pipeline`."""
    p = parser or OneLineParser(prog="xnect-bench pipeline", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_arg(p)
    p.add_argument("--frames", type=positive_int, default=150, help="frames per run")
    p.add_argument("--repeats", type=positive_int, default=1, help="alternating runs per mode (best counts)")
    p.add_argument("--no-outputs", action="store_true", help="no overlay, JSON lines or MP4: inference only")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the table")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON document to PATH")
    add_model_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point for a parsed namespace (what `xnect-bench pipeline` calls)."""
    require_video(args.video)
    est = build_estimator(model_config(args), decode_config(args))
    t0 = time.perf_counter()
    res = benchmark_pipeline(args.video, est, frames=args.frames, repeats=args.repeats,
                             outputs=not args.no_outputs)
    res["bench_wall_s"] = time.perf_counter() - t0
    document = json.dumps(res, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), document + "\n")
    print(document if args.json else format_report(res))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("xnect-bench pipeline", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
