"""Pose post-processing benchmark: decode, root, tracking and skeleton fit vs number of people.

Synthetic people (pose/synthetic.py) are rendered into Stage I maps for a 512x320 input
(64x40 maps); each frame the people move a little and get noise, so tracks and warm starts
behave as in a video. Times are medians over `runs` frames after `warmup` frames, as
wall-clock ("median_ms") and as this thread's CPU time ("median_cpu_ms", which other busy
processes on the machine do not inflate).

examples:
  python -m xnect_app.bench.pose
  python -m xnect_app.bench.pose --people 1 5 10 15 --runs 50 --json
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any, Callable

import numpy as np

from ..pose.decode import decode
from ..pose.ik import SkeletonFitter
from ..pose.root import solve_root_translation, to_camera
from ..pose.synthetic import random_scene
from ..pose.targets import render_targets
from ..pose.tracking import Tracker
from .frames import read_frames, require_video

STAGES = ("decode", "stage2", "root", "tracking", "ik")


def network_lifter(weights: str | None = None) -> Callable[[Any], np.ndarray]:
    """Stage II of a weights file (the bundled one if None) as a bench_people hook."""
    import torch

    from ..runtime.dense import TorchLifter
    from ..weights import load_networks
    lifter = TorchLifter(load_networks(weights).stage2.eval(), torch.device("cpu"))

    def lift(people: Any) -> np.ndarray:
        return lifter(people.stage2_in, np.nan_to_num(people.kp3d_rel_mm / 1000.0),
                      people.kp3d_valid.astype(np.float32)) * 1000.0
    return lift


def frame_ms(video: str, frames: int = 12, start: int = 100, weights: str | None = None) -> dict[str, float]:
    """Median preprocessing and Stage I milliseconds of the default estimator on real frames."""
    from ..estimator import ModelConfig, PoseEstimator, TrackConfig
    est = PoseEstimator(ModelConfig(weights=weights), track=TrackConfig(tracking=False))
    times = [est(img).timings_ms for img in read_frames(video, frames + 2, start=start)][2:]
    return {k: float(np.median([t[k] for t in times])) for k in ("preprocess", "stage1")}


def bench_people(n_people: int, runs: int = 30, warmup: int = 5, in_size: tuple[int, int] = (512, 320),
                 map_noise: float = 0.02, seed: int = 0,
                 stage2: Callable[[Any], np.ndarray] | None = None) -> dict[str, Any]:
    """Median milliseconds per stage for one frame with `n_people` people.

    Args:
        map_noise: Gaussian noise (sd) added to the rendered maps, like a network's output.
        stage2: optional lifting hook, decoded people -> (P, 21, 3) mm (`network_lifter()`);
            timed as "stage2" (the ORPM-style read-out is used when None).
    """
    rng = np.random.default_rng(seed)
    layout = "spread" if n_people <= 3 else "grid"
    scene = random_scene(rng, n_people, image_size=in_size, layout=layout)
    maps = render_targets(scene.kp2d, scene.kp3d_rel_mm, in_size)
    tracker = Tracker(smooth=True)
    fitter = SkeletonFitter()
    wall: dict[str, list[float]] = {s: [] for s in STAGES}
    cpu: dict[str, list[float]] = {s: [] for s in STAGES}
    found_counts = []
    for frame in range(warmup + runs):
        noisy = {k: v + rng.normal(0, map_noise, v.shape).astype(np.float32) for k, v in maps.items()}
        marks = [(time.perf_counter(), time.thread_time())]
        people = decode(noisy["heatmaps"], noisy["pafs"], noisy["enc3d"])
        marks.append((time.perf_counter(), time.thread_time()))
        kp3d = stage2(people) if stage2 is not None and len(people) else people.kp3d_rel_mm
        marks.append((time.perf_counter(), time.thread_time()))
        root, _ = solve_root_translation(kp3d, people.kp2d, scene.intrinsics)
        cam = to_camera(kp3d, root)
        marks.append((time.perf_counter(), time.thread_time()))
        dets = [{"kp2d": people.kp2d[i], "kp3d_rel_mm": kp3d[i], "kp3d_cam_mm": cam[i],
                 "score": people.scores[i]} for i in range(len(people))]
        tracked = tracker.update(dets, timestamp=frame / 30.0, intrinsics=scene.intrinsics)
        marks.append((time.perf_counter(), time.thread_time()))
        ok = [p for p in tracked if np.isfinite(p.kp3d_cam_mm).all()]
        if ok:
            bones = np.stack([p.bone_lengths_mm if p.bone_lengths_mm is not None else np.full(21, np.nan)
                              for p in ok])
            fitter.fit([p.track_id for p in ok], np.stack([p.kp3d_cam_mm for p in ok]), bones)
        marks.append((time.perf_counter(), time.thread_time()))
        if frame >= warmup:
            m = np.diff(np.array(marks), axis=0) * 1000.0                 # (stages, wall/cpu)
            for k, name in enumerate(STAGES):
                wall[name].append(m[k, 0])
                cpu[name].append(m[k, 1])
            found_counts.append(len(people))
    return {"people": n_people, "found": float(np.median(found_counts)), "runs": runs,
            "map_size": [in_size[0] // 8, in_size[1] // 8],
            "median_ms": _medians(wall), "median_cpu_ms": _medians(cpu)}


def _medians(times: dict[str, list[float]]) -> dict[str, float]:
    med = {name: float(np.median(v)) for name, v in times.items()}
    med["decode+root+tracking"] = float(np.median(np.sum([times[s] for s in ("decode", "root", "tracking")], 0)))
    med["stage3"] = float(np.median(np.sum([times[s] for s in ("tracking", "ik")], 0)))
    med["total"] = float(np.median(np.sum([times[s] for s in STAGES], axis=0)))
    return med


def people_cost(results: list[dict[str, Any]], frame: dict[str, float]) -> dict[str, float]:
    """What the most people add to the post-processing of the fewest, against a whole frame
    (preprocessing + Stage I + the fewest people's post-processing), wall-clock."""
    few = min(results, key=lambda r: r["people"])
    many = max(results, key=lambda r: r["people"])
    base = frame["preprocess"] + frame["stage1"] + few["median_ms"]["total"]
    added = many["median_ms"]["total"] - few["median_ms"]["total"]
    return {"fewest": few["people"], "most": many["people"], "frame_ms": base, "added_ms": added,
            "share": added / base, **{f"{k}_ms": v for k, v in frame.items()}}


def run_pose_bench(people: tuple[int, ...] = (1, 5, 10, 15), runs: int = 30, json_out: bool = False,
                   stage2: Callable[[Any], np.ndarray] | None = None,
                   video: str | None = None) -> list[dict[str, Any]]:
    """Benchmark every people count; prints a table (or JSON) and returns the results. With
    `video`, also the people's share of a whole frame (`people_cost`)."""
    results = [bench_people(n, runs=runs, stage2=stage2) for n in people]
    cost = people_cost(results, frame_ms(video)) if video else None
    if json_out:
        print(json.dumps({"people": results, "frame": cost} if cost else results, indent=2))
    else:
        cols = STAGES + ("stage3", "total")
        for key, title in (("median_ms", "wall-clock"), ("median_cpu_ms", "thread CPU")):
            print(f"median ms per frame ({title}), {results[0]['map_size'][0]}x{results[0]['map_size'][1]} maps"
                  if results else "")
            print(f"{'people':>6} {'found':>5} " + " ".join(f"{c:>9}" if len(c) < 10 else f"{c:>21}" for c in cols))
            for r in results:
                print(f"{r['people']:>6} {r['found']:>5.0f} " + " ".join(
                    f"{r[key][c]:>9.2f}" if len(c) < 10 else f"{r[key][c]:>21.2f}" for c in cols))
        if cost:
            print(f"a frame with {cost['fewest']} (preprocess {cost['preprocess_ms']:.1f} + Stage I "
                  f"{cost['stage1_ms']:.1f} + post-processing, wall-clock): {cost['frame_ms']:.1f} ms; "
                  f"{cost['most']} people add {cost['added_ms']:.1f} ms = {100 * cost['share']:.1f}% of it")
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--people", type=int, nargs="+", default=[1, 5, 10, 15], help="people counts to time")
    parser.add_argument("--runs", type=int, default=30, help="timed frames per count")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    add_pose_options(parser)
    args = parser.parse_args(argv)
    if args.runs < 1 or any(n < 0 or n > 50 for n in args.people):
        print("error: --runs must be >= 1 and --people between 0 and 50", file=sys.stderr)
        return 2
    return run_pose_from_args(args)


def add_pose_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--stage2", choices=("network", "readout"), default="network",
                        help="Stage II: the bundled weights' lifting network (default) or the 3D read-out alone")
    parser.add_argument("--video", default=None,
                        help="also time preprocessing + Stage I on this video's frames and report the people's "
                             "share of a frame")


def run_pose_from_args(args: argparse.Namespace) -> int:
    if args.video:
        require_video(args.video)
    stage2 = network_lifter() if args.stage2 == "network" else None
    run_pose_bench(tuple(args.people), runs=args.runs, json_out=args.json, stage2=stage2, video=args.video)
    return 0


if __name__ == "__main__":
    sys.exit(main())
