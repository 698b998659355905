"""DynConv benchmark: sparse vs dense Stage I, side by side on the same video frames.

For every frame the dense network (as `PoseEstimator` runs it) and the DynConv sparse path run one
after the other (the order alternates), and the report gives wall-clock frames per second of
both, the speed-up, the active fraction of the mask, the executed share of the masked MACs, and
the agreement of the people both paths find (OKS, COCO sigmas, Hungarian-matched).

Where the mask comes from:
- a network trained with DynConv (`Stage1Config(dynconv=True)`) uses its own mask unit;
- otherwise an ORACLE MOTION MASK, labelled as such in every report: the per-pixel median of
  frames sampled over the whole clip is the background (it peeks at future frames), the
  foreground is |frame - background| > a threshold, a stride-8 cell is active when enough of it
  is foreground, and the active cells are dilated by a margin. It shows the speed-up the sparse
  path reaches at the clip's real active fraction; it is not a learned mask. `budget` caps the
  active fraction (the weakest cells go first).

`--sweep` also times sparse vs masked-dense (both with BN folded) over blob masks of growing size,
which is where `dynconv.DENSE_ABOVE`, the dense-fallback threshold, comes from.

Timings are wall-clock medians; the machine's load average before and after is reported, and the
process CPU time per frame is given too (other processes do not inflate it as much).

examples:
  python -m xnect_app.bench.dynconv --random-weights --frames 40
  python -m xnect_app.bench.dynconv --checkpoint runs/xnect60/last.pt --threads 1 --out out.json
  python -m xnect_app.bench.dynconv --random-weights --frames 10 --json > dynconv.json
  python -m xnect_app.bench.dynconv --random-weights --sweep --frames 0
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch

from .. import skeleton
from ..estimator import TrackConfig
from ..io.sinks import atomic_write_text
from ..nn import dynconv
from ..nn.stage1 import STRIDE
from ..options import (OneLineParser, UsageError, UserError, add_model_args, build_estimator, cells, decode_config,
                       fraction, model_config, non_negative_int, positive_int, run_cli)
from ..runtime.config import ModelConfig
from ..runtime.motion import (DEFAULT_MARGIN, FIRST_MASKED_BLOCK, MotionGate, blurred_grey, median_frame,
                              moving_share_per_cell)
from ..runtime.preprocess import letterbox
from ..train.evaluate import coco_oks
from .frames import DEFAULT_VIDEO, add_video_arg, read_frames, require_video

_logger = logging.getLogger(__name__)


# --------------------------------------------------------------------------- oracle mask

class MotionMask:
    """ORACLE motion mask at stride 8 from a median background of the whole clip.

    Args:
        background: letterboxed network-size BGR background image.
        threshold: grey-level difference that counts as foreground.
        cell_fraction: share of a stride-8 cell that must be foreground for it to be active.
        margin: dilation of the active cells, in cells (people's still parts and context).
        budget: most cells that may be active (a fraction); the weakest cells are dropped first.
    """

    def __init__(self, background: np.ndarray, threshold: int = 25, cell_fraction: float = 0.05,
                 margin: int = DEFAULT_MARGIN, budget: float = 1.0):
        self.background = blurred_grey(background)
        self.threshold, self.cell_fraction = threshold, cell_fraction
        self.margin, self.budget = margin, budget

    def __call__(self, image: np.ndarray) -> torch.Tensor:
        share = moving_share_per_cell(blurred_grey(image), self.background, self.threshold)
        h, w = share.shape[0] * STRIDE, share.shape[1] * STRIDE
        score = torch.from_numpy(share).float().flatten()
        order = torch.argsort(score, descending=True, stable=True)
        active = int((score >= self.cell_fraction).sum())

        def grown(k: int) -> torch.Tensor:  # the k strongest cells, dilated
            core = torch.zeros(h * w // STRIDE ** 2)
            core[order[:k]] = 1
            return dynconv.dilate(core.view(1, 1, h // STRIDE, w // STRIDE), self.margin)[0, 0]

        lo, hi = 0, active  # largest k whose dilated mask fits the budget
        if float(grown(hi).mean()) <= self.budget:
            return grown(hi)
        while lo < hi - 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if float(grown(mid).mean()) <= self.budget else (lo, mid)
        return grown(lo)


def median_background(video: str | Path, size: tuple[int, int], samples: int = 25) -> np.ndarray:
    """Per-pixel median of `samples` frames spread over the clip, letterboxed to `size`."""
    cap = cv2.VideoCapture(str(video))
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT)) or samples
    picks = []
    for i in np.linspace(0, max(total - 1, 0), samples).astype(int):
        cap.set(cv2.CAP_PROP_POS_FRAMES, int(i))
        ok, frame = cap.read()
        if ok:
            picks.append(letterbox(frame, size)[0])
    cap.release()
    if not picks:
        raise UserError(f"{video}: cannot read frames for the background")
    return median_frame(picks)


# --------------------------------------------------------------------------- agreement

def oks(ref: np.ndarray, other: np.ndarray) -> float:
    """COCO OKS of `other` against `ref` (both 19 x 3 [x, y, conf]); the area is ref's box area."""
    r = ref[list(skeleton.COCO17_FROM_2D)]
    seen = r[:, 2] > 0
    if not seen.any():
        return 0.0
    xy = r[seen, :2]
    area = max(float(np.ptp(xy[:, 0]) * np.ptp(xy[:, 1])), 1.0)
    return coco_oks(r, other[list(skeleton.COCO17_FROM_2D)], area)


def _hungarian(dense: list, sparse: list) -> list[tuple[int, int, float]]:
    """(dense index, sparse index, OKS) of the one-to-one pairing with the highest total OKS."""
    if not dense or not sparse:
        return []
    from scipy.optimize import linear_sum_assignment
    table = np.array([[oks(d.kp2d, s.kp2d) for s in sparse] for d in dense])
    rows, cols = linear_sum_assignment(-table)
    return [(int(i), int(j), float(table[i, j])) for i, j in zip(rows, cols)]


def frame_agreement(dense: list, sparse: list) -> tuple[float, list[float]]:
    """(sum of matched OKS / max(#dense, #sparse), matched OKS values); 1.0 when both are empty."""
    if not dense and not sparse:
        return 1.0, []
    matched = [v for _, _, v in _hungarian(dense, sparse)]
    return sum(matched) / max(len(dense), len(sparse)), matched


# People scoring at least this are "confident" in the report (about 1 = a clear, whole person).
CONFIDENT_SCORE = 0.4
# A pair of people with OKS under this is two unpaired people, not one moved person.
PAIRED_OKS = 0.5


def unpaired_scores(dense: list, sparse: list) -> list[float]:
    """Scores of the people of either pass that have no counterpart (OKS >= PAIRED_OKS) in the other."""
    pairs = [(i, j) for i, j, v in _hungarian(dense, sparse) if v >= PAIRED_OKS]
    paired_d, paired_s = {i for i, _ in pairs}, {j for _, j in pairs}
    return ([p.score for i, p in enumerate(dense) if i not in paired_d]
            + [p.score for j, p in enumerate(sparse) if j not in paired_s])


def _confident(people: list) -> list:
    return [p for p in people if p.score >= CONFIDENT_SCORE]


def _jpeg95(image: np.ndarray) -> np.ndarray:
    return cv2.imdecode(cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, 95])[1], cv2.IMREAD_COLOR)


# Changes of a frame a viewer cannot see, for the dense model's own stability (`stability=True`).
IMPERCEPTIBLE_CHANGES = {"jpeg95": _jpeg95, "shift_1px": lambda image: np.roll(image, 1, axis=1)}


def _agreement(per_frame: list[tuple[float, list[float]]]) -> dict[str, float | None]:
    matched = [v for _, m in per_frame for v in m]
    return {"oks_mean_per_frame": round(statistics.mean(a for a, _ in per_frame), 4),
            "oks_mean_matched": round(statistics.mean(matched), 4) if matched else None}


def map_errors(dense, sparse, mask: torch.Tensor, margin: int) -> dict[str, float]:
    """Relative L2 error ||sparse - dense|| / ||dense|| of each Stage I map on the mask's cells and
    on its core (the mask eroded by `margin`: where the oracle saw motion)."""
    core = -dynconv.dilate(-mask, margin) if margin else mask
    out = {}
    for name, d, s in zip(("heatmaps", "pafs", "enc3d"), dense, sparse):
        for where, m in (("active", mask), ("core", core)):
            sel = m.expand_as(d) > 0
            ref = float(d[sel].norm())
            out[f"{name}_{where}"] = float((s[sel] - d[sel]).norm()) / ref if ref > 0 else 0.0
    return out


# --------------------------------------------------------------------------- benchmark

def _machine(threads: int) -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "cpu": platform.processor() or platform.machine(),
            "torch": torch.__version__, "torch_threads": threads}


def _loadavg() -> list[float] | None:
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return None


def _timed(fn) -> tuple[Any, float, float]:
    c0, t0 = time.process_time(), time.perf_counter()
    out = fn()
    return out, (time.perf_counter() - t0) * 1000, (time.process_time() - c0) * 1000


def _summary(ms: list[float]) -> dict[str, float]:
    med = statistics.median(ms)
    return {"median_ms": round(med, 2), "min_ms": round(min(ms), 2), "fps": round(1000.0 / med, 3)}


def run_dynconv_bench(video: str | Path = DEFAULT_VIDEO, frames: int = 60, budget: float = 1.0,
                      json_out: str | Path | None = None, estimator=None, start: int = 0,
                      threads: int | None = None, margin: int = DEFAULT_MARGIN,
                      dense_above: float | None = None, fill: str = "background",
                      first_block: int | None = None, mask_source: str | None = None,
                      stability: bool = False) -> dict[str, Any]:
    """Sparse vs dense Stage I on `frames` frames of `video` at the estimator's input size.

    Args:
        video: a clip (default demo_videos/vtest.avi).
        frames: timed frames (after one untimed warm-up frame per path).
        budget: most stride-8 cells the oracle mask may activate (fraction; 1 = no cap).
        json_out: also write the report there (atomically).
        estimator: a `PoseEstimator` (default: an untrained 512x320 SelecSLS-60, labelled so).
        start: first frame of the clip.
        threads: torch CPU threads (default: torch's setting).
        margin: oracle mask dilation in stride-8 cells.
        dense_above: override of the dense-fallback threshold (cost share).
        fill: what cells off the oracle mask hold: "background" (what a dense pass computes on the
            median background image, at every masked layer's input) or "zero" (at block outputs,
            what DynConv training uses).
        first_block: first masked SelecSLS block with a motion mask (default
            `runtime.motion.FIRST_MASKED_BLOCK`, 0: everything after the stem, as the estimator runs).
        mask_source: "learned" (the network's mask unit), "oracle" (median of the whole clip) or
            "motion" (the causal `runtime.motion.MotionGate` that `--dynconv-mask motion` uses: only
            past frames; it sees `first_mask_frame` frames before the timed ones); None: learned when the
            network has a mask unit, else oracle.
        stability: also compare dense with dense on the same frame slightly changed (re-encoded
            as JPEG quality 95; shifted by one pixel), untimed: how far the model's own output
            moves under changes a viewer cannot see, the yardstick for the sparse agreement.
    Returns the report dict (also what is written to json_out).
    """
    if threads:
        torch.set_num_threads(threads)
    if estimator is None:
        estimator = build_estimator(ModelConfig(random_init=True, torch_thread=False),
                                    track=TrackConfig(tracking=False))
    est = estimator
    if est.tracking:
        raise ValueError("the DynConv bench compares single frames: give an estimator without tracking")
    est.reset()
    net = est.stage1
    if mask_source is None:
        mask_source = "learned" if net.cfg.dynconv else "oracle"
    if mask_source not in ("learned", "oracle", "motion"):
        raise ValueError(f"mask_source must be 'learned', 'oracle' or 'motion', not {mask_source!r}")
    if mask_source == "learned" and not net.cfg.dynconv:
        raise UserError("--mask learned: the weights have no DynConv mask unit")
    learned = mask_source == "learned"
    if first_block is None:
        first_block = FIRST_MASKED_BLOCK
    size = est.input_size
    require_video(video)
    causal = mask_source == "motion"
    gate = None
    if causal:  # the gate first sees the frames before the timed ones (its warm-up)
        gate = MotionGate(margin=margin)
        lead = gate.first_mask_frame
        start = max(start, lead)
        for f in read_frames(video, lead, start - lead):
            gate.update(letterbox(f, size)[0])
    clip = read_frames(video, frames + 1, start)
    if len(clip) < 2:
        raise UserError(f"{video}: fewer than 2 frames from frame {start}")
    if fill not in ("background", "zero"):
        raise ValueError(f"fill must be 'background' or 'zero', not {fill!r}")
    background = None
    mask_for = None  # letterboxed frame -> stride-8 mask; None: the network's own mask unit
    state: dict[str, Any] = {}
    if causal:
        def causal_mask(image):
            m = gate.update(image)
            if gate.background_due() and fill == "background":
                state["background"] = gate.background_tensor(est.device)
            return m
        mask_for = causal_mask
    elif not learned:
        bg = median_background(video, size)
        mask_for = MotionMask(bg, margin=margin, budget=budget)
        if fill == "background":
            background = torch.from_numpy(bg).permute(2, 0, 1)[None].float().to(est.device)
    load_before = _loadavg()

    def dense(frame):
        net.set_sparse(False, None, mask_unit=False)
        return est.detect_batch([frame])[0]

    def sparse(frame, mask):
        fill_image = state.get("background", background) if causal else background
        net.set_sparse(True, mask, dense_above, fill_image, None if learned else first_block)
        return est.detect_batch([frame])[0]

    rows: list[dict[str, Any]] = []
    maps: list = []  # the Stage I outputs of this frame, in run order
    with torch.inference_mode():
        first = clip[0]
        m0 = None if learned else mask_for(letterbox(first, size)[0])
        dense(first), sparse(first, m0)  # warm-up: oneDNN primitives, executor build
        hook = net.register_forward_hook(lambda _m, _i, out: maps.append(out))
        for i, frame in enumerate(clip[1:]):
            maps.clear()
            mask, mask_ms, _ = _timed(lambda: None if learned else mask_for(letterbox(frame, size)[0]))
            order = ("dense", "sparse") if i % 2 == 0 else ("sparse", "dense")
            got = {}
            for mode in order:
                res, wall, cpu = _timed(lambda: dense(frame) if mode == "dense" else sparse(frame, mask))
                got[mode] = (res, wall, cpu)
            st = net.sparse_stats
            out = dict(zip(order, maps))
            errors = map_errors(out["dense"], out["sparse"], st.mask, margin if not learned else 0)
            agree, matched = frame_agreement(got["dense"][0].people, got["sparse"][0].people)
            confident = [_confident(got[m][0].people) for m in ("dense", "sparse")]
            if stability:
                net.set_sparse(False, None, mask_unit=False)
                floor = {}
                for name, change in IMPERCEPTIBLE_CHANGES.items():
                    changed = est.detect_batch([change(frame)])[0].people
                    floor[name] = frame_agreement(got["dense"][0].people, changed)
                    floor[name + "_confident"] = frame_agreement(confident[0], _confident(changed))
            rows.append({
                "frame": start + 1 + i, "active": st.active, "cost_fraction": st.cost_fraction,
                "sparse_path": st.sparse, "mask_ms": mask_ms,
                "dense_ms": got["dense"][1], "sparse_ms": got["sparse"][1],
                "dense_cpu_ms": got["dense"][2], "sparse_cpu_ms": got["sparse"][2],
                "dense_stage1_ms": got["dense"][0].timings_ms["stage1"],
                "sparse_stage1_ms": got["sparse"][0].timings_ms["stage1"],
                "people_dense": len(got["dense"][0].people), "people_sparse": len(got["sparse"][0].people),
                "oks_frame": agree, "oks_matched": matched, "map_errors": errors,
                "confident": frame_agreement(*confident),
                "unpaired_scores": unpaired_scores(got["dense"][0].people, got["sparse"][0].people),
                **({"stability": floor} if stability else {}),
            })
        hook.remove()
    net.set_sparse(False, None, background=None, mask_unit=False)
    report = _report(rows, est, learned, budget, margin, video, load_before, torch.get_num_threads())
    if causal:
        report["mask"] = (f"CAUSAL motion mask (runtime.motion.MotionGate: median background of past frames only, "
                          f"margin {margin} cells), what --dynconv-mask motion runs")
    report["fill"] = "zero (learned mask)" if learned else fill
    report["first_masked_block"] = net.first_masked_block if learned else first_block
    if json_out:
        atomic_write_text(Path(json_out), json.dumps(report, indent=1) + "\n")
    return report


def _report(rows, est, learned, budget, margin, video, load_before, threads) -> dict[str, Any]:
    col = lambda k: [r[k] for r in rows]  # noqa: E731
    d1, s1 = _summary(col("dense_stage1_ms")), _summary(col("sparse_stage1_ms"))
    d, s = _summary(col("dense_ms")), _summary(col("sparse_ms"))
    unpaired = [v for r in rows for v in r["unpaired_scores"]]
    return {
        "video": str(video), "frames": len(rows), "input_size": list(est.input_size),
        "model": est.model_name,
        "mask": ("learned (the network's DynConv mask unit)" if learned else
                 f"ORACLE motion mask (median background of the whole clip, margin {margin} cells, "
                 f"budget {budget}); not a learned mask"),
        "stage1": {"dense": d1, "sparse": s1, "speedup": round(d1["median_ms"] / s1["median_ms"], 3)},
        "per_frame": {"dense": d, "sparse": s, "speedup": round(d["median_ms"] / s["median_ms"], 3),
                      "note": "letterbox + Stage I + decode (+ Stage II when the model has one); no tracking"},
        "cpu_ms_per_frame": {"dense": round(statistics.median(col("dense_cpu_ms")), 2),
                             "sparse": round(statistics.median(col("sparse_cpu_ms")), 2)},
        "mask_ms": round(statistics.median(col("mask_ms")), 3) if not learned else None,
        "active_fraction": round(statistics.mean(col("active")), 4),
        "cost_fraction": round(statistics.mean(col("cost_fraction")), 4),
        "dense_fallback_frames": sum(not r["sparse_path"] for r in rows),
        "map_rel_error": {k: round(statistics.median(r["map_errors"][k] for r in rows), 4)
                          for k in rows[0]["map_errors"]},
        "agreement": {
            **_agreement(list(zip(col("oks_frame"), col("oks_matched")))),
            "people_dense": sum(col("people_dense")), "people_sparse": sum(col("people_sparse")),
            "frames_with_people": sum(1 for r in rows if r["people_dense"] or r["people_sparse"]),
            f"confident_people_score_{CONFIDENT_SCORE}": _agreement(col("confident")),
            "unpaired_people": len(unpaired),
            "unpaired_median_score": round(statistics.median(unpaired), 3) if unpaired else None,
        },
        **({"stability": {name: _agreement([r["stability"][name] for r in rows]) for name in rows[0]["stability"]}}
           if "stability" in rows[0] else {}),
        "machine": _machine(threads), "loadavg_before": load_before, "loadavg_after": _loadavg(),
        "rows": rows,
    }


def blob_mask(h: int, w: int, fraction: float, seed: int = 0) -> torch.Tensor:
    """Random person-shaped (5 x 12 cell) blobs until `fraction` of the H x W cells are active."""
    g = torch.Generator().manual_seed(seed)
    m = torch.zeros(h, w)
    while float(m.mean()) < fraction:
        y = int(torch.randint(0, max(h - 12, 1), (1,), generator=g))
        x = int(torch.randint(0, max(w - 5, 1), (1,), generator=g))
        m[y:y + 12, x:x + 5] = 1
    return m


def run_break_even_sweep(net, size: tuple[int, int] = (512, 320),
                         fractions=(0.05, 0.1, 0.2, 0.3, 0.4, 0.5, 0.7), runs: int = 3) -> list[dict]:
    """Sparse vs masked-dense (both BN-folded) over blob masks: where does sparse stop paying?"""
    x = torch.rand(1, 3, size[1], size[0]) * 255
    h, w = size[1] // STRIDE, size[0] // STRIDE
    out = []
    with torch.inference_mode():
        for f in fractions:
            m = blob_mask(h, w, f)
            times = {"sparse": [], "masked_dense": []}
            for r in range(runs + 1):
                for mode, above in (("sparse", 2.0), ("masked_dense", -1.0)):
                    net.set_sparse(True, m, above)
                    _, ms, _ = _timed(lambda: net(x))
                    if r:
                        times[mode].append(ms)
            net.set_sparse(True, m, 2.0)
            net(x)
            st = net.sparse_stats
            sp, md = statistics.median(times["sparse"]), statistics.median(times["masked_dense"])
            out.append({"active": round(st.active, 4), "cost_fraction": round(st.cost_fraction, 4),
                        "sparse_ms": round(sp, 1), "masked_dense_ms": round(md, 1),
                        "ratio": round(sp / md, 3)})
            _logger.info("sweep: active %.2f cost %.2f sparse %.0f ms masked-dense %.0f ms",
                         st.active, st.cost_fraction, sp, md)
    net.set_sparse(False, None, mask_unit=False)
    return out


def format_report(rep: dict[str, Any]) -> str:
    s1, pf, ag = rep["stage1"], rep["per_frame"], rep["agreement"]
    lines = [
        f"DynConv on {Path(rep['video']).name}: {rep['frames']} frames at "
        f"{rep['input_size'][0]}x{rep['input_size'][1]}, model {rep['model']}",
        f"mask: {rep['mask']}; cells off the mask hold: {rep.get('fill')}; "
        f"masked from block {rep.get('first_masked_block')}",
        f"active fraction {rep['active_fraction']:.3f}, executed share of the masked MACs "
        f"{rep['cost_fraction']:.3f}, dense fallback on {rep['dense_fallback_frames']} frames",
        f"{'':12}{'dense fps':>10}{'sparse fps':>12}{'speed-up':>10}",
        f"{'Stage I':12}{s1['dense']['fps']:>10.2f}{s1['sparse']['fps']:>12.2f}{s1['speedup']:>9.2f}x",
        f"{'per frame':12}{pf['dense']['fps']:>10.2f}{pf['sparse']['fps']:>12.2f}{pf['speedup']:>9.2f}x",
        f"CPU time per frame: dense {rep['cpu_ms_per_frame']['dense']:.0f} ms, "
        f"sparse {rep['cpu_ms_per_frame']['sparse']:.0f} ms",
        f"agreement: OKS per frame {ag['oks_mean_per_frame']:.3f}, matched people "
        f"{ag['oks_mean_matched'] if ag['oks_mean_matched'] is not None else 'n/a'}; people dense "
        f"{ag['people_dense']} / sparse {ag['people_sparse']}; found by one pass only: "
        f"{ag['unpaired_people']} (median score {ag['unpaired_median_score']})",
        f"agreement among people scoring {CONFIDENT_SCORE} or more: OKS per frame "
        f"{ag[f'confident_people_score_{CONFIDENT_SCORE}']['oks_mean_per_frame']:.3f}, matched people "
        f"{ag[f'confident_people_score_{CONFIDENT_SCORE}']['oks_mean_matched']}",
        *[f"dense vs dense on the frame {name.replace('_confident', '').replace('_', ' ')}"
          f"{f' (people scoring {CONFIDENT_SCORE} or more)' if name.endswith('_confident') else ''}: "
          f"OKS per frame {v['oks_mean_per_frame']:.3f}, matched people {v['oks_mean_matched']}"
          for name, v in rep.get("stability", {}).items()],
        "relative map error (median; active cells / motion core): " + ", ".join(
            f"{n} {rep['map_rel_error'][n + '_active']:.3f}/{rep['map_rel_error'][n + '_core']:.3f}"
            for n in ("heatmaps", "pafs", "enc3d")),
        f"machine: {rep['machine']['cpus']} CPUs, torch {rep['machine']['torch']}, "
        f"{rep['machine']['torch_threads']} threads, load average {rep['loadavg_before']} -> "
        f"{rep['loadavg_after']}",
    ]
    for row in rep.get("sweep", []):
        lines.append(f"sweep: active {row['active']:.2f} cost {row['cost_fraction']:.2f}: sparse "
                     f"{row['sparse_ms']:.0f} ms vs masked-dense {row['masked_dense_ms']:.0f} ms "
                     f"({row['ratio']:.2f})")
    return "\n".join(lines)


def format_margin_table(reports: list[dict[str, Any]]) -> str:
    """One line per margin: cost against agreement with the dense pass."""
    lines = ["margin  active  executed  Stage I  per frame  OKS frame  OKS matched  "
             f"OKS frame (score >= {CONFIDENT_SCORE})  heatmap error (core)"]
    for r in reports:
        ag = r["agreement"]
        matched = ag["oks_mean_matched"]
        confident = ag[f"confident_people_score_{CONFIDENT_SCORE}"]["oks_mean_per_frame"]
        lines.append(f"{r['margin']:>6}  {r['active_fraction']:>6.3f}  {r['cost_fraction']:>8.3f}  "
                     f"{r['stage1']['speedup']:>6.2f}x  {r['per_frame']['speedup']:>8.2f}x  "
                     f"{ag['oks_mean_per_frame']:>9.3f}  {matched if matched is not None else 'n/a':>11}  "
                     f"{confident:>24.3f}  {r['map_rel_error']['heatmaps_core']:>20.4f}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- command line

def margins(text: str) -> list[int]:
    """argparse type: comma-separated margins (`cells`: 0 to 16 each)."""
    return [cells(v) for v in text.split(",")]


def build_parser(parser: argparse.ArgumentParser | None = None) -> argparse.ArgumentParser:
    """Options of the benchmark; pass a subparser to mount it under `xnect-bench dynconv`."""
    p = parser or OneLineParser(prog="xnect-bench dynconv", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    add_video_arg(p)
    p.add_argument("--frames", type=non_negative_int, default=60, help="timed frames (default %(default)s)")
    p.add_argument("--start", type=non_negative_int, default=0, help="first frame of the clip")
    p.add_argument("--budget", type=fraction, default=1.0,
                   help="most cells the oracle mask may activate, a fraction (default: no cap)")
    p.add_argument("--margin", type=margins, default=[DEFAULT_MARGIN], metavar="N[,N...]",
                   help=f"mask dilation in stride-8 cells (default {DEFAULT_MARGIN}; --dynconv-margin of motion masks); "
                        "several, e.g. 2,3,5: one run each and a table of speed against agreement")
    p.add_argument("--dense-above", type=float, default=None, metavar="F",
                   help=f"cost share above which the dense fallback runs (default {dynconv.DENSE_ABOVE})")
    p.add_argument("--fill", choices=("background", "zero"), default="background",
                   help="cells off the oracle mask: what a dense pass computes on the median background "
                        "image, at the input of every masked layer, or zeros at the block outputs as in "
                        "DynConv training (default %(default)s)")
    p.add_argument("--first-block", type=non_negative_int, default=None, metavar="I",
                   help="first masked SelecSLS block with a motion mask (default 0 = everything "
                        "after the stem, as --dynconv-mask motion runs)")
    p.add_argument("--mask", choices=("learned", "oracle", "motion"), default=None,
                   help="the weights' mask unit (learned), the oracle motion mask (whole-clip median) or "
                        "the causal motion mask of --dynconv-mask motion (default: learned if the weights "
                        "have a mask unit, else oracle)")
    p.add_argument("--stability", action="store_true",
                   help="also report dense vs dense on each frame re-encoded as JPEG 95 and shifted by "
                        "1 px (untimed): the model's own agreement under invisible changes")
    p.add_argument("--threads", type=positive_int, default=None, help="torch CPU threads")
    p.add_argument("--sweep", action="store_true", help="also time sparse vs masked-dense over mask sizes")
    p.add_argument("--json", action="store_true", help="print one JSON document instead of the tables")
    p.add_argument("--out", type=Path, metavar="PATH", help="also write the JSON document to PATH")
    add_model_args(p)
    return p


def run(args: argparse.Namespace) -> int:
    """Entry point for a parsed namespace (what `xnect-bench dynconv` would call)."""
    if args.flip or args.flip_scale or args.scales:
        raise UsageError("--flip, --flip-scale and --scales do not apply here: this bench times single dense "
                         "and sparse Stage I passes")
    if args.frames:
        require_video(args.video)  # before loading the model
    if args.threads:
        torch.set_num_threads(args.threads)
    # this bench runs the networks itself, on this thread
    est = build_estimator(model_config(args, torch_thread=False), decode_config(args), TrackConfig(tracking=False))
    report: dict[str, Any] = {}
    reports = []
    for i, margin in enumerate(args.margin if args.frames else []):
        reports.append(run_dynconv_bench(args.video, args.frames, args.budget, None, est, args.start,
                                         args.threads, margin, args.dense_above, args.fill,
                                         args.first_block, args.mask, args.stability and i == 0))
        reports[-1]["margin"] = margin
    if reports:
        report = reports[0] if len(reports) == 1 else {"margins": reports}
    if args.sweep:
        report["sweep"] = run_break_even_sweep(est.stage1, est.input_size)
    document = json.dumps(report, indent=1)
    if args.out:
        atomic_write_text(Path(args.out), document + "\n")
    if args.json:
        print(document)
        return 0
    for rep in reports:
        print(format_report({**rep, "sweep": report.get("sweep", []) if len(reports) == 1 else []}))
    if len(reports) > 1:
        print(format_margin_table(reports))
    if not reports:
        print(json.dumps(report.get("sweep"), indent=1))
    return 0


def main(argv: list[str] | None = None) -> int:
    return run_cli("xnect-bench dynconv", build_parser(), run, argv, user_errors=(ValueError, OSError))


if __name__ == "__main__":
    sys.exit(main())
